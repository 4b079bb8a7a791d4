"""The ``unionstore`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from unionstore import __version__
from unionstore.config import Config, ConfigError, load, with_embedded_default


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the S3 gateway")
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:9900)")
    p.add_argument(
        "--mount",
        dest="mounts",
        action="append",
        metavar="BUCKET[/PREFIX]=URI",
        help="map a bucket (or a key prefix in it) to hdfs://, s3:// or file:// (repeatable)",
    )
    p.add_argument("--bucket-root", help="a UFS folder whose sub-folders are buckets")
    p.add_argument("--access-key", help="access key of the admin credential")
    p.add_argument("--secret-key", help="secret key of the admin credential")
    p.add_argument("--cache-dir", type=Path, help="folder for caches and gateway state")
    p.add_argument("--region", help="region reported to clients (default us-east-1)")


def _print_banner(cfg: Config, generated: bool) -> None:
    host, port = cfg.host_port
    endpoint = f"http://{host}:{port}"
    print(f"unionstore {__version__} serving S3 on {endpoint}", flush=True)
    if cfg.bucket_root:
        print(f"  buckets: every sub-folder of {cfg.bucket_root}", flush=True)
    for m in cfg.mounts:
        print(f"  mount: s3://{m.bucket}/{m.prefix} -> {m.uri}", flush=True)
    key = cfg.keys[0]
    note = " (generated, kept in the cache folder)" if generated else ""
    print(f"  access key: {key.access_key}{note}", flush=True)
    if generated:
        print(f"  secret key: {key.secret_key}", flush=True)
    print(
        f"  try: AWS_ACCESS_KEY_ID={key.access_key} AWS_SECRET_ACCESS_KEY=... "
        f"aws --endpoint-url {endpoint} s3 ls",
        flush=True,
    )


def serve(args: argparse.Namespace) -> int:
    flags = {
        "listen": args.listen,
        "mounts": args.mounts,
        "bucket_root": args.bucket_root,
        "access_key": args.access_key,
        "secret_key": args.secret_key,
        "cache_dir": str(args.cache_dir) if args.cache_dir else None,
        "region": args.region,
    }
    cfg = load(args.config, flags=flags)
    cfg, generated = with_embedded_default(cfg, Path.cwd())
    _print_banner(cfg, generated)
    from unionstore import server

    server.main(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unionstore", description=__doc__)
    parser.add_argument("--version", action="version", version=f"unionstore {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")
    _serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        args = parser.parse_args(["serve", *(argv or sys.argv[1:])])
    try:
        if args.command == "serve":
            return serve(args)
    except ConfigError as exc:
        print(f"unionstore: {exc.message}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
