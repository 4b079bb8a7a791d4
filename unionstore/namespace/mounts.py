"""The union namespace: which UFS and which path hold a bucket's key.

A mount maps a bucket, or a key prefix inside a bucket, to a UFS root. Longest prefix wins, so
``models/`` -> hdfs and ``""`` -> a local folder put every key under ``models/`` on HDFS and the
rest on disk. Buckets also come from a *bucket root*: every sub-folder of one UFS folder is a
bucket (this is how ``unionstore serve`` with no arguments serves ``./data``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from unionstore.config import BUCKET_NAME
from unionstore.errors import InvalidBucketName, InvalidKey, KeyTooLong, NoSuchBucket, NotFound
from unionstore.ufs.base import UnderFileSystem
from unionstore.ufs.prefixed import PrefixedUfs

MAX_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class MountSource:
    """How to open this mount's UFS again, e.g. as another HDFS user."""

    uri: str
    options: Mapping[str, str]
    subdir: str = ""  # a bucket under a bucket root


@dataclass(frozen=True, slots=True)
class Mount:
    bucket: str
    prefix: str  # "" or ends with "/"
    ufs: UnderFileSystem
    source: MountSource | None = None

    def shadows(self, others: Iterable[Mount]) -> tuple[str, ...]:
        """Prefixes of longer mounts in the same bucket that hide part of this one."""
        return tuple(
            m.prefix for m in others if m.prefix != self.prefix and m.prefix.startswith(self.prefix)
        )


@dataclass(frozen=True, slots=True)
class Target:
    """Where one key lives: the mount and the path relative to its UFS root."""

    mount: Mount
    path: str
    is_dir_key: bool  # the key ends with "/"


def check_bucket_name(bucket: str) -> str:
    if not BUCKET_NAME.match(bucket):
        raise InvalidBucketName(resource=bucket)
    return bucket


def check_key(key: str) -> str:
    """Refuse keys that cannot map to a path inside a mount: NUL, ``.``/``..`` or empty
    components, and keys over S3's 1024-byte limit."""
    if not key:
        raise InvalidKey("the object key is empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise KeyTooLong()
    if "\x00" in key:
        raise InvalidKey("object keys cannot contain NUL")
    parts = key.split("/")
    if parts[-1] == "":
        parts.pop()
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidKey(f"object key {key!r} has an empty, '.' or '..' component")
        if part.startswith(".unionstore-"):
            raise InvalidKey("names starting with '.unionstore-' are reserved by the gateway")
    return key


class MountTable:
    def __init__(
        self,
        mounts: Iterable[Mount],
        bucket_root: UnderFileSystem | None = None,
        wrap: Callable[[UnderFileSystem], UnderFileSystem] = lambda ufs: ufs,
        root_source: MountSource | None = None,
    ) -> None:
        """``wrap`` is applied to the UFS of each bucket found under ``bucket_root`` (the
        gateway wraps it in a metadata cache, as it does the static mounts)."""
        self.wrap = wrap
        self.root_source = root_source
        self._static: dict[str, list[Mount]] = {}
        for mount in mounts:
            self._static.setdefault(mount.bucket, []).append(mount)
        for group in self._static.values():
            group.sort(key=lambda m: len(m.prefix), reverse=True)
        self.bucket_root = bucket_root
        #: the bucket root as seen for bucket lookups (cached by ``wrap``)
        self.root_view = wrap(bucket_root) if bucket_root is not None else None
        self._rooted: dict[str, Mount] = {}

    def static_buckets(self) -> list[str]:
        return sorted(self._static)

    def all_mounts(self) -> list[Mount]:
        """Static mounts and the bucket-root buckets seen so far."""
        return [m for group in self._static.values() for m in group] + list(self._rooted.values())

    async def list_buckets(self) -> list[tuple[str, int]]:
        """(name, creation time in ns) of every bucket, sorted by name."""
        found: dict[str, int] = {}
        if self.root_view is not None:
            try:
                async for st in self.root_view.list_dir(""):
                    if st.is_dir and BUCKET_NAME.match(st.name):
                        found[st.name] = st.mtime_ns
            except NotFound:
                pass
        for name in self._static:
            found.setdefault(name, 0)
        return sorted(found.items())

    async def mounts_for(self, bucket: str) -> list[Mount]:
        """The mounts of ``bucket``, longest prefix first; NoSuchBucket if it has none."""
        check_bucket_name(bucket)
        static = self._static.get(bucket, [])
        rooted = await self._rooted_mount(bucket)
        if rooted is None:
            if not static:
                raise NoSuchBucket(resource=bucket)
            return static
        if any(m.prefix == "" for m in static):
            return static
        return [*static, rooted]

    async def _rooted_mount(self, bucket: str) -> Mount | None:
        if self.bucket_root is None or self.root_view is None:
            return None
        try:
            st = await self.root_view.stat(bucket)
        except NotFound:
            self._rooted.pop(bucket, None)
            return None
        if not st.is_dir:
            return None
        mount = self._rooted.get(bucket)
        if mount is None:
            source = None
            if self.root_source is not None:
                source = MountSource(self.root_source.uri, self.root_source.options, bucket)
            mount = Mount(bucket, "", self.wrap(PrefixedUfs(self.bucket_root, bucket)), source)
            self._rooted[bucket] = mount
        return mount

    async def resolve(self, bucket: str, key: str) -> Target:
        check_key(key)
        for mount in await self.mounts_for(bucket):
            if key.startswith(mount.prefix):
                rel = key[len(mount.prefix) :]
                return Target(mount, rel.rstrip("/"), key.endswith("/"))
        raise NotFound(resource=f"/{bucket}/{key}")

    def forget_bucket(self, bucket: str) -> None:
        """A bucket-root bucket was created or deleted: look it up again next time."""
        self._rooted.pop(bucket, None)
        view = self.root_view
        invalidate = getattr(view, "invalidate", None)
        if invalidate is not None:
            invalidate(bucket, recursive=False)

    async def close(self) -> None:
        ufs = {id(m.ufs): m.ufs for group in self._static.values() for m in group}
        if self.bucket_root is not None:
            ufs[id(self.bucket_root)] = self.bucket_root
        await asyncio.gather(*(u.close() for u in ufs.values()), return_exceptions=True)
