"""The ``unionstore`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from unionstore import __version__
from unionstore.config import Config, ConfigError, load, with_embedded_default
from unionstore.errors import UnionstoreError


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
    p.add_argument("--cache-size", help="block cache capacity, e.g. 50GiB (default 10GiB)")
    p.add_argument("--block-size", help="block size, e.g. 4MiB (default) or 128KiB")
    p.add_argument("--metadata-ttl", help="metadata cache TTL, e.g. 60s (default); 0 = off")
    p.add_argument("--no-cache", action="store_true", help="serve straight from the UFS")
    p.add_argument("--workers", type=int, help="worker processes sharing the port (default 1)")
    p.add_argument("--limit-global", help="egress limit of the process, e.g. 500MB/s")
    p.add_argument("--limit-per-connection", help="egress limit of one connection, e.g. 50MB/s")


def _cache_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint", default=None, help="gateway URL (UNIONSTORE_ENDPOINT)")
    common.add_argument("--access-key", help="admin access key (AWS_ACCESS_KEY_ID)")
    common.add_argument("--secret-key", help="admin secret key (AWS_SECRET_ACCESS_KEY)")
    p = sub.add_parser("cache", help="control a running gateway's caches (admin API)")
    actions = p.add_subparsers(dest="action", required=True)
    inv = actions.add_parser(
        "invalidate", parents=[common], help="drop cached metadata under s3://BUCKET/PREFIX"
    )
    inv.add_argument("target", metavar="s3://BUCKET[/PREFIX]")
    inv.add_argument("--data", action="store_true", help="drop cached blocks too")
    warm = actions.add_parser("warm", parents=[common], help="fill the block cache with one object")
    warm.add_argument("target", metavar="s3://BUCKET/KEY")
    actions.add_parser("stats", parents=[common], help="print cache statistics")


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, "some/prefix")."""
    if not url.startswith("s3://") or len(url) <= 5:
        raise ConfigError(f"expected s3://BUCKET[/KEY], not {url!r}")
    bucket, _, key = url[5:].partition("/")
    return bucket, key


def cache_command(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import os

    from unionstore.admin_client import AdminClient

    endpoint = args.endpoint or os.environ.get("UNIONSTORE_ENDPOINT", "http://127.0.0.1:9900")
    access = args.access_key or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = args.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        raise ConfigError("admin credentials: --access-key/--secret-key or AWS_ACCESS_KEY_ID/...")

    async def run() -> dict[str, object]:
        async with AdminClient(endpoint, access, secret) as client:
            if args.action == "stats":
                return await client.stats()
            bucket, key = split_s3_url(args.target)
            if args.action == "invalidate":
                return await client.invalidate(bucket, key, data=args.data)
            return await client.warm(bucket, key)

    print(json.dumps(asyncio.run(run()), indent=1))
    return 0


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
        "cache_capacity": args.cache_size,
        "cache_block_size": args.block_size,
        "cache_metadata_ttl": args.metadata_ttl,
        "cache_enabled": False if args.no_cache else None,
        "workers": args.workers,
        "limit_global": args.limit_global,
        "limit_per_connection": args.limit_per_connection,
    }
    cfg = load(args.config, flags=flags)
    cfg, generated = with_embedded_default(cfg, Path.cwd())
    _print_banner(cfg, generated)
    from unionstore import server

    def reload() -> Config:
        return with_embedded_default(load(args.config, flags=flags), Path.cwd())[0]

    server.main(cfg, reload)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unionstore", description=__doc__)
    parser.add_argument("--version", action="version", version=f"unionstore {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")
    _serve_parser(sub)
    _cache_parser(sub)
    from unionstore.prefetch.cli import add_parsers as add_prefetch

    add_prefetch(sub)
    from unionstore.fuse.cli import add_parsers as add_mount

    add_mount(sub)
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
        if args.command == "cache":
            return cache_command(args)
        func = getattr(args, "func", None)
        if func is not None:
            return int(func(args))
    except ConfigError as exc:
        print(f"unionstore: {exc.message}", file=sys.stderr)
        return 2
    except UnionstoreError as exc:
        print(f"unionstore: {exc.message}", file=sys.stderr)
        return 1
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
