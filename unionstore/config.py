"""Typed configuration, loaded in one place: TOML file, then ``UNIONSTORE_*`` environment
variables, then command-line flags (each later source overrides the earlier one).

Example (see docs/configuration.md for every key)::

    listen = "127.0.0.1:9900"
    region = "us-east-1"
    cache_dir = "/var/cache/unionstore"
    bucket_root = "file:///srv/data"       # every sub-folder is a bucket

    [[mounts]]
    bucket = "models"
    prefix = ""                            # a key prefix inside the bucket, "" = whole bucket
    uri = "hdfs://namenode:9000/models"

    [[mounts]]
    bucket = "datasets"
    uri = "s3://origin-bucket/datasets"
    options = { endpoint = "http://10.0.0.5:9000", access_key = "...", secret_key = "..." }

    [[keys]]
    access_key = "AKIAEXAMPLE"
    secret_key = "..."
    user = "alice"                         # the UFS identity (HDFS user)
    grants = { "*" = "read", "models/checkpoints/" = "write" }
    admin = false

    [buckets.public-data]
    anonymous = "read"
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from unionstore.errors import InvalidArgument
from unionstore.ratelimit import parse_rate as _parse_rate
from unionstore.ratelimit import parse_size as _parse_size

Level = Literal["read", "write"]

BUCKET_NAME = re.compile(r"^(?!\d+\.\d+\.\d+\.\d+$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ConfigError(InvalidArgument):
    """A configuration file, variable or flag that cannot be used."""


def parse_size(value: str | int | float) -> int:
    """Bytes from ``4MiB``, ``10GB`` (10**9), ``512`` ... (MB is 10**6 bytes, MiB 2**20)."""
    try:
        return _parse_size(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_rate(value: str | int | float | None) -> float | None:
    """Bytes (or requests) per second from ``50MB/s``, ``100/s``; None for ``unlimited``."""
    try:
        return _parse_rate(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


_DURATION_UNITS = {"": 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``60s``, ``500ms``, ``1h``, ``0`` ..."""
    if isinstance(value, int | float):
        return float(value)
    m = _NUMBER_UNIT.match(value)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _DURATION_UNITS:
        raise ConfigError(f"not a duration: {value!r} (try 60s, 500ms, 1h)")
    return float(m.group(1)) * _DURATION_UNITS[unit]


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = True
    metadata_ttl: float = 60.0
    metadata_max_entries: int = 100_000
    stale_if_error: float = 3600.0
    block_size: int = 4 << 20
    capacity: int = 10 << 30
    fill_concurrency: int = 8
    fill_per_file: int = 4
    fill_queue: int = 4096
    readahead_blocks: int = 4
    memory: int = 64 << 20  # a memory tier for small blocks, above the disk


_CACHE_PARSERS: dict[str, Any] = {
    "enabled": bool,
    "metadata_ttl": parse_duration,
    "metadata_max_entries": int,
    "stale_if_error": parse_duration,
    "block_size": parse_size,
    "capacity": parse_size,
    "fill_concurrency": int,
    "fill_per_file": int,
    "fill_queue": int,
    "readahead_blocks": int,
    "memory": parse_size,
}


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Rates in bytes/s (requests/s for ``requests_per_key``); None = unlimited."""

    global_egress: float | None = None  # all response bytes of this process (the NIC)
    per_connection: float | None = None  # response bytes of one client connection
    per_key: float | None = None  # response bytes of one access key
    requests_per_key: float | None = None  # requests/s of one access key, beyond: 503 SlowDown
    max_in_flight: int | None = None  # requests at once in this process, beyond: 503 SlowDown
    origin: float | None = None  # bytes/s read from each UFS origin (fills and pass-through)


_LIMIT_PARSERS: dict[str, Any] = {
    "global": parse_rate,
    "per_connection": parse_rate,
    "per_key": parse_rate,
    "requests_per_key": parse_rate,
    "max_in_flight": lambda v: int(v) or None,
    "origin": parse_rate,
}


def limits_from(raw: Mapping[str, Any], base: LimitsConfig) -> LimitsConfig:
    """A ``[limits]`` table (or the admin API's query) over ``base``."""
    unknown = set(raw) - set(_LIMIT_PARSERS)
    if unknown:
        raise ConfigError(f"unknown [limits] keys: {', '.join(sorted(unknown))}")
    try:
        changes = {
            ("global_egress" if k == "global" else k): _LIMIT_PARSERS[k](v) for k, v in raw.items()
        }
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad [limits] value: {exc}") from None
    return replace(base, **changes)


@dataclass(frozen=True, slots=True)
class MountConfig:
    bucket: str
    uri: str
    prefix: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    metadata_ttl: float | None = None  # None: the [cache] default
    origin_limit: float | None = None  # None: the [limits] origin default


@dataclass(frozen=True, slots=True)
class KeyConfig:
    access_key: str
    secret_key: str
    user: str | None = None
    #: bucket, "bucket/key-prefix" or "*" -> "read" | "write"
    grants: Mapping[str, Level] = field(default_factory=lambda: {"*": "write"})
    admin: bool = False


@dataclass(frozen=True, slots=True)
class BucketPolicy:
    anonymous: Literal["none", "read"] = "none"


@dataclass(frozen=True, slots=True)
class Config:
    listen: str = "127.0.0.1:9900"
    region: str = "us-east-1"
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    bucket_root: str | None = None
    bucket_root_options: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[MountConfig, ...] = ()
    keys: tuple[KeyConfig, ...] = ()
    buckets: Mapping[str, BucketPolicy] = field(default_factory=dict)
    workers: int = 1
    cache: CacheConfig = field(default_factory=CacheConfig)
    #: multipart uploads not completed or aborted within this many seconds are aborted
    multipart_expiry: float = 7 * 86400.0
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"listen must be HOST:PORT, not {self.listen!r}")
        return host.strip("[]"), int(port)


def to_json(cfg: Config) -> str:
    """The resolved configuration, for worker processes (they re-load nothing)."""
    raw = asdict(cfg)
    raw["cache_dir"] = str(cfg.cache_dir)
    return json.dumps(raw)


def from_json(text: str) -> Config:
    raw = json.loads(text)
    return Config(
        listen=raw["listen"],
        region=raw["region"],
        cache_dir=Path(raw["cache_dir"]),
        bucket_root=raw["bucket_root"],
        bucket_root_options=raw["bucket_root_options"],
        mounts=tuple(MountConfig(**m) for m in raw["mounts"]),
        keys=tuple(KeyConfig(**k) for k in raw["keys"]),
        buckets={name: BucketPolicy(**p) for name, p in raw["buckets"].items()},
        workers=raw["workers"],
        cache=CacheConfig(**raw["cache"]),
        multipart_expiry=raw["multipart_expiry"],
        limits=LimitsConfig(**raw["limits"]),
    )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unionstore" / "gateway"


def parse_mount(spec: str) -> MountConfig:
    """``BUCKET[/PREFIX]=URI`` as given to ``--mount``."""
    target, sep, uri = spec.partition("=")
    if not sep or not target or not uri:
        raise ConfigError(f"--mount takes BUCKET[/PREFIX]=URI, not {spec!r}")
    bucket, _, prefix = target.partition("/")
    return MountConfig(bucket=bucket, uri=uri, prefix=_norm_prefix(prefix))


def _norm_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


def _mount_from(raw: Mapping[str, Any]) -> MountConfig:
    try:
        return MountConfig(
            bucket=str(raw["bucket"]),
            uri=str(raw["uri"]),
            prefix=_norm_prefix(str(raw.get("prefix", ""))),
            options={str(k): str(v) for k, v in dict(raw.get("options", {})).items()},
            metadata_ttl=(parse_duration(raw["metadata_ttl"]) if "metadata_ttl" in raw else None),
        )
    except KeyError as exc:
        raise ConfigError(f"a [[mounts]] entry lacks {exc.args[0]!r}") from None


def _key_from(raw: Mapping[str, Any]) -> KeyConfig:
    try:
        grants = {str(k): v for k, v in dict(raw.get("grants", {"*": "write"})).items()}
        for target, level in grants.items():
            if level not in ("read", "write"):
                raise ConfigError(f"grant {target!r} must be 'read' or 'write', not {level!r}")
        return KeyConfig(
            access_key=str(raw["access_key"]),
            secret_key=str(raw["secret_key"]),
            user=str(raw["user"]) if raw.get("user") else None,
            grants=grants,
            admin=bool(raw.get("admin", False)),
        )
    except KeyError as exc:
        raise ConfigError(f"a [[keys]] entry lacks {exc.args[0]!r}") from None


def _cache_from(raw: Mapping[str, Any], base: CacheConfig) -> CacheConfig:
    unknown = set(raw) - set(_CACHE_PARSERS)
    if unknown:
        raise ConfigError(f"unknown [cache] keys: {', '.join(sorted(unknown))}")
    try:
        changes = {k: _CACHE_PARSERS[k](v) for k, v in raw.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad [cache] value: {exc}") from None
    cache = replace(base, **changes)
    if cache.block_size < 4096 or cache.fill_concurrency < 1 or cache.fill_per_file < 1:
        raise ConfigError("cache block_size must be >= 4KiB and fill limits >= 1")
    return cache


def from_mapping(raw: Mapping[str, Any], base: Config | None = None) -> Config:
    """Apply a TOML-shaped mapping on top of ``base``."""
    cfg = base or Config()
    known = {
        "listen",
        "region",
        "cache_dir",
        "bucket_root",
        "bucket_root_options",
        "mounts",
        "keys",
        "buckets",
        "workers",
        "cache",
        "multipart_expiry",
        "limits",
    }
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    for name in ("listen", "region", "bucket_root"):
        if name in raw:
            changes[name] = str(raw[name])
    if "cache_dir" in raw:
        changes["cache_dir"] = Path(str(raw["cache_dir"])).expanduser()
    if "workers" in raw:
        changes["workers"] = int(raw["workers"])
    if "multipart_expiry" in raw:
        changes["multipart_expiry"] = parse_duration(raw["multipart_expiry"])
    if "bucket_root_options" in raw:
        changes["bucket_root_options"] = {
            str(k): str(v) for k, v in dict(raw["bucket_root_options"]).items()
        }
    if "cache" in raw:
        changes["cache"] = _cache_from(dict(raw["cache"]), cfg.cache)
    if "limits" in raw:
        changes["limits"] = limits_from(dict(raw["limits"]), cfg.limits)
    if "mounts" in raw:
        changes["mounts"] = tuple(_mount_from(m) for m in raw["mounts"])
    if "keys" in raw:
        changes["keys"] = tuple(_key_from(k) for k in raw["keys"])
    if "buckets" in raw:
        buckets = {}
        for name, policy in dict(raw["buckets"]).items():
            anonymous = policy.get("anonymous", "none")
            if anonymous not in ("none", "read"):
                raise ConfigError(f"buckets.{name}.anonymous must be 'none' or 'read'")
            buckets[str(name)] = BucketPolicy(anonymous=anonymous)
        changes["buckets"] = buckets
    return replace(cfg, **changes)


def from_env(env: Mapping[str, str], base: Config) -> Config:
    """``UNIONSTORE_LISTEN``, ``_REGION``, ``_CACHE_DIR``, ``_BUCKET_ROOT``, ``_WORKERS``,
    ``_MOUNTS`` (``b=uri,b2/p=uri``), ``_ACCESS_KEY`` + ``_SECRET_KEY``."""
    raw: dict[str, Any] = {}
    for name in ("listen", "region", "cache_dir", "bucket_root", "workers"):
        value = env.get("UNIONSTORE_" + name.upper())
        if value:
            raw[name] = value
    cfg = from_mapping(raw, base)
    if env.get("UNIONSTORE_MOUNTS"):
        mounts = tuple(parse_mount(s) for s in env["UNIONSTORE_MOUNTS"].split(",") if s)
        cfg = replace(cfg, mounts=mounts)
    access, secret = env.get("UNIONSTORE_ACCESS_KEY"), env.get("UNIONSTORE_SECRET_KEY")
    if access and secret:
        cfg = replace(cfg, keys=(KeyConfig(access_key=access, secret_key=secret, admin=True),))
    return cfg


def load(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """TOML file, then environment, then flags (``None`` values in ``flags`` are ignored)."""
    env = os.environ if env is None else env
    cfg = Config()
    path = path or (Path(env["UNIONSTORE_CONFIG"]) if env.get("UNIONSTORE_CONFIG") else None)
    if path is not None:
        try:
            with open(path, "rb") as fh:
                cfg = from_mapping(tomllib.load(fh), cfg)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
    cfg = from_env(env, cfg)
    flags = {k: v for k, v in (flags or {}).items() if v not in (None, [], ())}
    cache_flags = {
        k[6:]: flags.pop(k) for k in list(flags) if k.startswith("cache_") and k != "cache_dir"
    }
    if cache_flags:
        flags["cache"] = cache_flags
    limit_flags = {k[6:]: flags.pop(k) for k in list(flags) if k.startswith("limit_")}
    if limit_flags:
        flags["limits"] = limit_flags
    mounts = flags.pop("mounts", None)
    access, secret = flags.pop("access_key", None), flags.pop("secret_key", None)
    cfg = from_mapping(flags, cfg)
    if mounts:
        cfg = replace(cfg, mounts=tuple(parse_mount(m) for m in mounts))
    if access or secret:
        if not (access and secret):
            raise ConfigError("--access-key and --secret-key go together")
        cfg = replace(cfg, keys=(KeyConfig(access_key=access, secret_key=secret, admin=True),))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    cfg.host_port  # noqa: B018 - raises on a bad listen address
    for mount in cfg.mounts:
        if not BUCKET_NAME.match(mount.bucket):
            raise ConfigError(f"mount bucket {mount.bucket!r} is not a valid S3 bucket name")
    seen = set()
    for mount in cfg.mounts:
        if (mount.bucket, mount.prefix) in seen:
            raise ConfigError(f"two mounts for {mount.bucket}/{mount.prefix}")
        seen.add((mount.bucket, mount.prefix))
    if cfg.workers < 1:
        raise ConfigError("workers must be at least 1")


def with_embedded_default(cfg: Config, cwd: Path) -> tuple[Config, bool]:
    """With no mounts and no bucket root, serve ``./data`` (each sub-folder a bucket), and with
    no keys, a generated key pair kept in the cache folder. Returns (config, generated_key)."""
    generated = False
    if not cfg.mounts and not cfg.bucket_root:
        data = cwd / "data"
        data.mkdir(exist_ok=True)
        cfg = replace(cfg, bucket_root=data.resolve().as_uri())
    if not cfg.keys:
        cfg = replace(cfg, keys=(_stored_default_key(cfg.cache_dir),))
        generated = True
    return cfg, generated


def _stored_default_key(cache_dir: Path) -> KeyConfig:
    path = cache_dir / "default-credentials.toml"
    try:
        with open(path, "rb") as fh:
            return _key_from({**tomllib.load(fh), "admin": True})
    except (OSError, tomllib.TOMLDecodeError, ConfigError):
        pass
    access = "US" + secrets.token_hex(9).upper()
    secret = secrets.token_urlsafe(30)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f'access_key = "{access}"\nsecret_key = "{secret}"\n')
    tmp.chmod(0o600)
    tmp.replace(path)
    return KeyConfig(access_key=access, secret_key=secret, admin=True)
