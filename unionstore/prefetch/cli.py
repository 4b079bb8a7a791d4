"""``unionstore prefetch`` and ``unionstore warm``: :func:`add_parsers` adds both to the main
command line; each sets ``func`` (namespace -> exit code). ``python -m unionstore.prefetch.cli``
runs them on their own. The commands import their modules when run, so ``unionstore serve``
does not pay for them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from unionstore.config import ConfigError, parse_duration

log = logging.getLogger("unionstore.prefetch")
DEFAULT_GATEWAY = "http://127.0.0.1:9900"


def _gateway_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gateway",
        "--endpoint",
        dest="gateways",
        action="append",
        metavar="URL",
        help=f"gateway URL, repeatable (default $UNIONSTORE_ENDPOINT or {DEFAULT_GATEWAY})",
    )
    p.add_argument("--access-key", help="admin access key (default $AWS_ACCESS_KEY_ID)")
    p.add_argument("--secret-key", help="admin secret key (default $AWS_SECRET_ACCESS_KEY)")
    p.add_argument("--state-dir", type=Path, help="where progress is kept")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "prefetch",
        help="follow NameNode audit logs: warm new files, invalidate changed ones",
        description="Follow NameNode audit logs; warm files as soon as they are complete and "
        "drop the gateways' cached metadata/blocks of files that change.",
    )
    p.add_argument(
        "--audit-log",
        dest="audit_logs",
        type=Path,
        action="append",
        required=True,
        metavar="PATH",
        help="NameNode audit log to follow (repeatable)",
    )
    p.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="HDFS_PATH=BUCKET[/PREFIX]",
        help="warm and refresh files under HDFS_PATH, shown as BUCKET[/PREFIX] (repeatable)",
    )
    p.add_argument("--rules", type=Path, metavar="FILE", help="rules file (TOML)")
    p.add_argument("--hdfs", metavar="URL", help="NameNode URL, to stat files (settle, sizes)")
    _gateway_flags(p)
    p.add_argument(
        "--settle",
        default="30s",
        help="a created file is complete once its size "
        "and mtime stood still this long (default 30s; needs --hdfs)",
    )
    p.add_argument("--max-settle-wait", default="1h", help="give up on a file after (1h)")
    p.add_argument("--max-pending", type=int, default=10_000, help="events in flight (10000)")
    p.add_argument("--max-warms", type=int, default=4, help="warm calls in flight (4)")
    p.add_argument("--poll-interval", default="100ms", help="log polling interval (100ms)")
    p.add_argument(
        "--from-start",
        action="store_true",
        help="with no saved position, read the logs from their start, not their end",
    )
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve /metrics here")
    p.set_defaults(func=prefetch_command)

    w = sub.add_parser(
        "warm",
        help="fill the gateway cache with every object under s3://BUCKET/PREFIX",
        description="Warm (or with --evict, drop) every object under a prefix; a rerun after "
        "an interruption skips what was finished.",
    )
    w.add_argument("target", metavar="s3://BUCKET[/PREFIX]")
    _gateway_flags(w)
    w.add_argument("-j", "--concurrency", type=int, default=4, help="objects at once (4)")
    w.add_argument("--dry-run", action="store_true", help="list what would be done")
    w.add_argument("--evict", action="store_true", help="drop the prefix from the cache")
    w.add_argument("--force", action="store_true", help="ignore progress of an earlier run")
    w.add_argument(
        "--progress",
        choices=("auto", "bar", "lines"),
        default="auto",
        help="a bar (terminal) or one line per object (auto: bar on a terminal)",
    )
    w.set_defaults(func=warm_command)


def _credentials(args: argparse.Namespace) -> tuple[list[str], str, str]:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per admin call
    gateways = args.gateways or [os.environ.get("UNIONSTORE_ENDPOINT", DEFAULT_GATEWAY)]
    access = args.access_key or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = args.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        raise ConfigError("admin credentials: --access-key/--secret-key or AWS_ACCESS_KEY_ID/...")
    return gateways, access, secret


def prefetch_command(args: argparse.Namespace) -> int:
    from unionstore.admin_client import AdminClient
    from unionstore.prefetch import rules as rules_mod
    from unionstore.prefetch.daemon import Daemon, DaemonConfig
    from unionstore.prefetch.hdfsstat import HdfsStat
    from unionstore.prefetch.warm import default_state_dir

    gateways, access, secret = _credentials(args)
    ruleset = rules_mod.build(args.watch, args.rules, args.hdfs)
    if ruleset.needs_stat and not ruleset.hdfs:
        raise ConfigError("rules with min_size/max_size need --hdfs (or hdfs = ... in the rules)")
    if not ruleset.hdfs:
        log.warning("no --hdfs: created files are warmed only when renamed into place")
    cfg = DaemonConfig(
        audit_logs=list(args.audit_logs),
        rules=ruleset,
        state_dir=args.state_dir or default_state_dir() / "prefetch",
        settle=parse_duration(args.settle),
        max_settle_wait=parse_duration(args.max_settle_wait),
        max_pending=args.max_pending,
        max_warms=args.max_warms,
        poll_interval=parse_duration(args.poll_interval),
        from_start=args.from_start,
        metrics_listen=args.metrics_listen,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        clients = [AdminClient(g, access, secret) for g in gateways]
        daemon = Daemon(cfg, clients, HdfsStat(ruleset.hdfs) if ruleset.hdfs else None)
        try:
            await daemon.run(stop)
        finally:
            await daemon.delivery.close()

    try:
        asyncio.run(run())
    except RuntimeError as exc:  # the state folder is locked by another daemon
        print(f"unionstore prefetch: {exc}", file=sys.stderr)
        return 1
    return 0


def warm_command(args: argparse.Namespace) -> int:
    from unionstore.prefetch.warm import WarmJob, default_state_dir, run_warm

    gateways, access, secret = _credentials(args)
    target: str = args.target
    if not target.startswith("s3://") or len(target) <= 5:
        raise ConfigError(f"expected s3://BUCKET[/PREFIX], not {target!r}")
    bucket, _, prefix = target[5:].partition("/")
    job = WarmJob(
        gateways=gateways,
        access_key=access,
        secret_key=secret,
        bucket=bucket,
        prefix=prefix,
        state_dir=args.state_dir or default_state_dir() / "warm",
        concurrency=args.concurrency,
        dry_run=args.dry_run,
        evict=args.evict,
        force=args.force,
        tty=None if args.progress == "auto" else args.progress == "bar",
    )
    try:
        return asyncio.run(run_warm(job))
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to go on", flush=True)
        return 130
