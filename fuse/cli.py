"""``unionstore mount ENDPOINT BUCKET[/PREFIX] MOUNTPOINT [flags]``.

Hooked into the main command line (``unionstore.cli``) by ``add_parsers``. Secrets never
come from flags: they come from
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or from an AWS
shared-credentials file (``--credentials-file``, ``--profile``); with neither, requests are
anonymous.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unionstore.config import ConfigError

#: flag dest -> help; every one may also be set in the TOML file (same name, "_" for "-")
OPTION_FLAGS: dict[str, str] = {
    "region": "region used to sign requests (default us-east-1)",
    "cache_dir": "folder of the on-disk block cache, shared by the node's mounts",
    "cache_size": "on-disk block cache capacity, e.g. 50GiB (default 10GiB)",
    "memory_cache_size": "recent blocks kept in RAM (default 64MiB)",
    "block_size": "block size for sequential reads (default 4MiB)",
    "small_block_size": "block size for random reads, a multiple of 4KiB (default 8KiB)",
    "readahead_blocks": "most blocks a sequential reader gets ahead (default 8)",
    "fetch_concurrency": "parallel range GETs of read-ahead (default 8)",
    "metadata_ttl": "how long listings and attributes are trusted, e.g. 60s (default)",
    "negative_ttl": "how long 'no such file' is trusted (default 5s)",
    "entry_timeout": "kernel name cache timeout (default 60s)",
    "attr_timeout": "kernel attribute cache timeout (default 60s)",
    "kernel_readahead_kb": "kernel read-ahead of the mount in KiB (default 1024; 0 = leave)",
    "uid": "owner of every file (default: the daemon's user)",
    "gid": "group of every file (default: the daemon's group)",
    "umask": "umask applied to 0666 files and 0777 directories, octal (default 022)",
    "part_size": "multipart upload part size for writes (default 8MiB)",
    "upload_concurrency": "parts in flight per file being written (default 4)",
    "nice": "scheduling priority of the daemon, -20..19 (default -10; 0 = leave)",
}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "mount",
        help="mount a bucket (or a prefix of it) as a local directory (FUSE)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("endpoint", help="S3 endpoint URL, e.g. http://127.0.0.1:9900")
    p.add_argument("bucket", metavar="BUCKET[/PREFIX]", help="bucket, optionally a key prefix")
    p.add_argument("mountpoint", type=Path, help="directory to mount on (created if missing)")
    p.add_argument("--config", type=Path, help="TOML file with options (flags win)")
    p.add_argument("--credentials-file", type=Path, help="AWS shared-credentials file")
    p.add_argument("--profile", default="default", help="profile in the credentials file")
    for dest, text in OPTION_FLAGS.items():
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None, help=text)
    p.add_argument(
        "--read-ahead",
        choices=["auto", "off"],
        default=None,
        help="read-ahead of blocks, of files of a directory read in order, and the kernel's"
        " for the mount (default auto; off: none)",
    )
    p.add_argument(
        "--allow-other",
        action="store_const",
        const=True,
        default=None,
        help="let other users use the mount (default: only the daemon's user)",
    )
    p.add_argument(
        "--read-only", action="store_const", const=True, default=None, help="mount read-only"
    )
    p.set_defaults(func=mount_command)


def mount_command(args: argparse.Namespace) -> int:
    from unionstore.fuse import config
    from unionstore.fuse.mount import MountError, run

    flags = {dest: getattr(args, dest) for dest in OPTION_FLAGS}
    flags["read_ahead"] = args.read_ahead
    flags["allow_other"] = args.allow_other
    flags["read_only"] = args.read_only
    try:
        opts = config.load(
            args.endpoint,
            args.bucket,
            args.mountpoint,
            toml_path=args.config,
            flags=flags,
            credentials_file=args.credentials_file,
            profile=args.profile,
        )
        return run(opts)
    except ConfigError as exc:
        print(f"unionstore mount: {exc.message}", file=sys.stderr)
        return 2
    except MountError as exc:
        print(f"unionstore mount: {exc}", file=sys.stderr)
        return 1
