"""The facade of the core: the one object the S3 edge (and later the FUSE bridge and the
prefetch daemon) talk to. It owns the mount table, the lister and the grants; it knows
nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from unionstore.config import Config, KeyConfig, Level
from unionstore.errors import AccessDenied, InvalidAccessKeyId, NoSuchKey, NotFound
from unionstore.namespace.etag import etag_of
from unionstore.namespace.listing import Lister, Page
from unionstore.namespace.mounts import Mount, MountTable, Target, check_bucket_name
from unionstore.ufs import open_ufs
from unionstore.ufs.base import FileStatus


@dataclass(frozen=True, slots=True)
class Principal:
    access_key: str | None  # None = anonymous
    user: str | None = None
    grants: Mapping[str, Level] = field(default_factory=dict)
    admin: bool = False

    @classmethod
    def of(cls, key: KeyConfig) -> Principal:
        return cls(key.access_key, key.user, dict(key.grants), key.admin)


ANONYMOUS = Principal(None)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    bucket: str
    key: str
    status: FileStatus
    target: Target

    @property
    def size(self) -> int:
        return self.status.size

    @property
    def etag(self) -> str:
        return etag_of(self.status)


class Gateway:
    def __init__(self, config: Config, mounts: MountTable) -> None:
        self.config = config
        self.mounts = mounts
        self.lister = Lister()
        self._keys = {k.access_key: k for k in config.keys}

    @classmethod
    def from_config(cls, config: Config) -> Gateway:
        mounts = [
            Mount(m.bucket, m.prefix, open_ufs(m.uri, m.options)) for m in config.mounts
        ]
        root = None
        if config.bucket_root:
            root = open_ufs(config.bucket_root, config.bucket_root_options)
        return cls(config, MountTable(mounts, root))

    async def close(self) -> None:
        await self.mounts.close()

    # -- identity and grants -------------------------------------------------------------
    def secret_for(self, access_key: str) -> str | None:
        key = self._keys.get(access_key)
        return key.secret_key if key else None

    def principal(self, access_key: str | None) -> Principal:
        if access_key is None:
            return ANONYMOUS
        key = self._keys.get(access_key)
        if key is None:
            raise InvalidAccessKeyId()
        return Principal.of(key)

    def authorize(self, who: Principal, bucket: str, key: str, level: Level) -> None:
        """Allow ``who`` to read or write ``key`` (or the listing prefix) in ``bucket``.

        The most specific grant wins: ``bucket/prefix`` over ``bucket`` over ``*``."""
        if who.admin:
            return
        if who.access_key is None:
            policy = self.config.buckets.get(bucket)
            if level == "read" and policy is not None and policy.anonymous == "read":
                return
            raise AccessDenied(resource=f"/{bucket}/{key}")
        best: tuple[int, Level] | None = None
        for target, granted in who.grants.items():
            if target == "*":
                rank = 0
            elif target == bucket:
                rank = 1
            elif target.startswith(bucket + "/") and key.startswith(target[len(bucket) + 1 :]):
                rank = 1 + len(target)
            else:
                continue
            if best is None or rank > best[0]:
                best = (rank, granted)
        if best is None or (level == "write" and best[1] != "write"):
            raise AccessDenied(resource=f"/{bucket}/{key}")

    def may_see_bucket(self, who: Principal, bucket: str) -> bool:
        if who.admin:
            return True
        return any(t == "*" or t == bucket or t.startswith(bucket + "/") for t in who.grants)

    # -- buckets -----------------------------------------------------------------------
    async def list_buckets(self, who: Principal) -> list[tuple[str, int]]:
        return [b for b in await self.mounts.list_buckets() if self.may_see_bucket(who, b[0])]

    async def head_bucket(self, bucket: str) -> None:
        await self.mounts.mounts_for(bucket)

    # -- objects -----------------------------------------------------------------------
    async def list_objects(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str = "",
        start_after: str = "",
        token: str | None = None,
        max_keys: int = 1000,
    ) -> Page:
        check_bucket_name(bucket)
        mounts = await self.mounts.mounts_for(bucket)
        return await self.lister.page(
            bucket,
            mounts,
            prefix=prefix,
            delimiter=delimiter,
            start_after=start_after,
            token=token,
            max_keys=max_keys,
        )

    async def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        target = await self.mounts.resolve(bucket, key)
        try:
            status = await target.mount.ufs.stat(target.path)
        except NotFound:
            raise NoSuchKey(resource=f"/{bucket}/{key}") from None
        if status.is_dir or target.is_dir_key:
            raise NoSuchKey(resource=f"/{bucket}/{key}")
        return ObjectInfo(bucket, key, status, target)

    def read_object(self, obj: ObjectInfo, offset: int, length: int) -> AsyncIterator[bytes]:
        return obj.target.mount.ufs.read_range(obj.target.path, offset, length)
