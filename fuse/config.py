"""Mount options: one typed record, loaded in one place (TOML file, then flags; secrets from the
environment or a credentials file, never from flags).

Units are explicit: sizes parse ``4MiB``/``10GB``/``512``, durations ``60s``/``500ms``/``0``
(the parsers are the gateway's, so both speak the same units).
"""

from __future__ import annotations

import configparser
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from unionstore.config import ConfigError, parse_duration, parse_size

ReadAhead = Literal["auto", "off"]

SIZE_FIELDS = frozenset(
    {"cache_size", "block_size", "small_block_size", "part_size", "memory_cache_size"}
)
DURATION_FIELDS = frozenset({"metadata_ttl", "negative_ttl", "entry_timeout", "attr_timeout"})
INT_FIELDS = frozenset(
    {
        "readahead_blocks",
        "fetch_concurrency",
        "uid",
        "gid",
        "umask",
        "kernel_readahead_kb",
        "upload_concurrency",
        "nice",
    }
)
BOOL_FIELDS = frozenset({"allow_other", "read_only"})


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None


@dataclass(frozen=True, slots=True)
class MountOptions:
    endpoint: str
    bucket: str
    prefix: str  # "" or ends with "/"
    mountpoint: Path
    region: str = "us-east-1"
    credentials: Credentials | None = None  # None: anonymous requests
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    cache_size: int = 10 << 30
    memory_cache_size: int = 64 << 20  # recent blocks kept in RAM (sequential readers)
    block_size: int = 4 << 20  # sequential readers fetch and cache blocks of this size
    small_block_size: int = 8 << 10  # random readers: at most one of these per 4 KiB read
    read_ahead: ReadAhead = "auto"
    readahead_blocks: int = 8  # the most a sequential reader gets ahead (window doubles to it)
    fetch_concurrency: int = 8  # parallel range GETs of the whole mount
    metadata_ttl: float = 60.0
    negative_ttl: float = 5.0
    entry_timeout: float = 60.0  # kernel dentry cache
    attr_timeout: float = 60.0  # kernel attribute cache
    kernel_readahead_kb: int = 1024  # /sys/class/bdi/<dev>/read_ahead_kb; 0 leaves it alone
    allow_other: bool = False
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    read_only: bool = False
    part_size: int = 8 << 20
    upload_concurrency: int = 4  # parts in flight per file being written
    nice: int = -10  # the daemon's scheduling priority (best effort; 0 leaves it alone)

    @property
    def file_mode(self) -> int:
        return 0o666 & ~self.umask

    @property
    def dir_mode(self) -> int:
        return 0o777 & ~self.umask


def default_cache_dir() -> Path:
    if os.getuid() == 0:
        return Path("/var/cache/unionstore-fuse")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "unionstore-fuse"


def split_bucket(spec: str) -> tuple[str, str]:
    """``bucket/some/prefix`` -> ("bucket", "some/prefix/")."""
    bucket, _, prefix = spec.strip("/").partition("/")
    if not bucket:
        raise ConfigError(f"expected BUCKET[/PREFIX], not {spec!r}")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


def _convert(name: str, value: Any) -> Any:
    if name in SIZE_FIELDS:
        return parse_size(value)
    if name in DURATION_FIELDS:
        return parse_duration(value)
    if name == "umask":
        return int(value, 8) if isinstance(value, str) else int(value)
    if name in INT_FIELDS:
        number = int(value)
        if name == "nice" and not -20 <= number <= 19:
            raise ConfigError(f"nice must be between -20 and 19, not {value!r}")
        return number
    if name in BOOL_FIELDS:
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        return bool(value)
    if name == "cache_dir":
        return Path(value)
    if name == "read_ahead":
        if value not in ("auto", "off"):
            raise ConfigError(f"read_ahead must be auto or off, not {value!r}")
        return value
    if name == "region":
        return str(value)
    raise ConfigError(f"unknown mount option {name!r}")


def read_credentials_file(path: Path, profile: str = "default") -> Credentials:
    """An AWS shared-credentials file (``[profile]`` with ``aws_access_key_id`` ...)."""
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text())
    except (OSError, configparser.Error) as e:
        raise ConfigError(f"cannot read credentials file {path}: {e}") from None
    if not parser.has_section(profile):
        raise ConfigError(f"credentials file {path} has no [{profile}] section")
    sec = parser[profile]
    try:
        return Credentials(
            sec["aws_access_key_id"], sec["aws_secret_access_key"], sec.get("aws_session_token")
        )
    except KeyError as e:
        raise ConfigError(f"credentials file {path}: [{profile}] lacks {e.args[0]}") from None


def credentials_from(
    env: Mapping[str, str], file: Path | None, profile: str = "default"
) -> Credentials | None:
    """Environment first (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), then the file."""
    access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if access and secret:
        return Credentials(access, secret, env.get("AWS_SESSION_TOKEN") or None)
    if file is None and env.get("AWS_SHARED_CREDENTIALS_FILE"):
        file = Path(env["AWS_SHARED_CREDENTIALS_FILE"])
    if file is not None:
        return read_credentials_file(file, profile)
    return None


def load(
    endpoint: str,
    bucket_spec: str,
    mountpoint: Path,
    *,
    toml_path: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    credentials_file: Path | None = None,
    profile: str = "default",
) -> MountOptions:
    """Defaults <- TOML file <- flags (None means "not given"); credentials from env/file."""
    env = os.environ if env is None else env
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"endpoint must be an http(s) URL, not {endpoint!r}")
    bucket, prefix = split_bucket(bucket_spec)
    raw: dict[str, Any] = {}
    if toml_path is not None:
        try:
            data = tomllib.loads(toml_path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read {toml_path}: {e}") from None
        raw.update(data.get("mount", data))
        if "credentials_file" in raw and credentials_file is None:
            credentials_file = Path(raw.pop("credentials_file"))
        raw.pop("credentials_file", None)
    raw.update({k: v for k, v in (flags or {}).items() if v is not None})
    known = {f.name for f in fields(MountOptions)}
    values = {}
    for name, value in raw.items():
        name = name.replace("-", "_")
        if name not in known or name in ("endpoint", "bucket", "prefix", "mountpoint"):
            raise ConfigError(f"unknown mount option {name!r}")
        values[name] = _convert(name, value)
    opts = MountOptions(
        endpoint=endpoint.rstrip("/"),
        bucket=bucket,
        prefix=prefix,
        mountpoint=mountpoint.absolute(),
        credentials=credentials_from(env, credentials_file, profile),
    )
    opts = replace(opts, **values)
    validate(opts)
    return opts


def validate(opts: MountOptions) -> None:
    if opts.small_block_size < 4096 or opts.small_block_size % 4096:
        raise ConfigError("small_block_size must be a multiple of 4KiB")
    if opts.block_size < opts.small_block_size or opts.block_size % opts.small_block_size:
        raise ConfigError("block_size must be a multiple of small_block_size")
    if opts.part_size < 5 << 20:
        raise ConfigError("part_size must be at least 5MiB (the S3 minimum)")
    if not 0 <= opts.umask <= 0o777:
        raise ConfigError("umask must be between 000 and 777")
    if opts.fetch_concurrency < 1 or opts.upload_concurrency < 1:
        raise ConfigError("concurrency settings must be at least 1")
