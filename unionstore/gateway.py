"""The facade of the core: the one object the S3 edge (and later the FUSE bridge and the
prefetch daemon) talk to. It owns the mount table, the lister, the caches and the grants; it
knows nothing of HTTP.

Data flows one way: gateway -> namespace (mounts, lister) -> caches (metadata wrapper around
each mount's UFS, block cache with its fetcher) -> UFS driver.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field, replace

from unionstore.cache.blocks import BlockCache, FileVersion
from unionstore.cache.coordinator import EmbeddedCoordinator
from unionstore.cache.metadata import MetadataCachingUfs, TtlCache
from unionstore.cache.store import BlockStore
from unionstore.config import Config, KeyConfig, Level
from unionstore.errors import AccessDenied, InvalidAccessKeyId, NoSuchKey, NotFound
from unionstore.limits import Limits, OriginLimitedUfs
from unionstore.metrics import Registry, Sample
from unionstore.multipart import MultipartUploads
from unionstore.namespace.etag import etag_of
from unionstore.namespace.listing import Lister, Page
from unionstore.namespace.mounts import Mount, MountSource, MountTable, Target, check_bucket_name
from unionstore.namespace.objmeta import ObjectMetaStore, StoredObject
from unionstore.ufs import open_ufs
from unionstore.ufs.base import FileStatus, UnderFileSystem
from unionstore.writes import ObjectWrites, file_id, version_of


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
DIRECTORY_OBJECT = StoredObject(
    '"d41d8cd98f00b204e9800998ecf8427e"', {"content-type": "application/x-directory"}
)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    bucket: str
    key: str
    status: FileStatus
    target: Target
    stored: StoredObject | None = None  # headers and ETag kept by the gateway, if written here

    @property
    def size(self) -> int:
        return self.status.size

    @property
    def etag(self) -> str:
        return self.stored.etag if self.stored else etag_of(self.status)

    def version(self) -> FileVersion:
        return FileVersion(
            file_id=file_id(self.target.mount, self.target.path),
            version=version_of(self.status),
            size=self.status.size,
            mount=mount_label(self.target.mount),
        )


def mount_label(mount: Mount) -> str:
    return f"{mount.bucket}/{mount.prefix}"


class Gateway:
    def __init__(
        self,
        config: Config,
        mounts: MountTable,
        blocks: BlockCache | None = None,
        metrics: Registry | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.config = config
        self.mounts = mounts
        self.blocks = blocks
        self.limits = limits or Limits(config.limits)
        self.objmeta = ObjectMetaStore(config.cache_dir / "state" / "objects.sqlite")
        self._stored: TtlCache[tuple[str, str], StoredObject | None] = TtlCache(
            ttl=config.cache.metadata_ttl, max_entries=100_000, stale_if_error=0
        )
        self.writes = ObjectWrites(self, self.objmeta, config.cache_dir / "state" / "locks")
        self.multipart = MultipartUploads(self, self.writes, self.objmeta)
        self.lister = Lister(page_ttl=config.cache.metadata_ttl if config.cache.enabled else 0)
        self.metrics = metrics or Registry()
        self.metrics.add_source(self._cache_samples)
        self.metrics.add_source(self.limits.samples)
        self._keys = {k.access_key: k for k in config.keys}

    @classmethod
    def from_config(cls, config: Config) -> Gateway:
        cc = config.cache
        limits = Limits(config.limits)

        def origin(ufs: UnderFileSystem, override: float | None = None) -> UnderFileSystem:
            return OriginLimitedUfs(ufs, limits.origin(ufs.uri, override))

        def meta(ufs: UnderFileSystem, ttl: float | None = None) -> UnderFileSystem:
            if not cc.enabled:
                return ufs
            cache: TtlCache[str, FileStatus | None] = TtlCache(
                ttl=cc.metadata_ttl if ttl is None else ttl,
                max_entries=cc.metadata_max_entries,
                stale_if_error=cc.stale_if_error,
            )
            return MetadataCachingUfs(ufs, cache)

        mounts = [
            Mount(
                m.bucket,
                m.prefix,
                meta(origin(open_ufs(m.uri, m.options), m.origin_limit), m.metadata_ttl),
                MountSource(m.uri, m.options),
            )
            for m in config.mounts
        ]
        root = None
        if config.bucket_root:
            root = origin(open_ufs(config.bucket_root, config.bucket_root_options))
        blocks = None
        if cc.enabled:
            store = BlockStore(config.cache_dir / "blocks", cc.capacity)
            store.sweep_orphans()
            blocks = BlockCache(
                store,
                EmbeddedCoordinator(store),
                block_size=cc.block_size,
                fill_concurrency=cc.fill_concurrency,
                fill_per_file=cc.fill_per_file,
                max_queued=cc.fill_queue,
                readahead_blocks=cc.readahead_blocks,
                memory_capacity=cc.memory,
            )
        root_source = None
        if config.bucket_root:
            root_source = MountSource(config.bucket_root, config.bucket_root_options)
        table = MountTable(mounts, root, wrap=meta, root_source=root_source)
        return cls(config, table, blocks, limits=limits)

    async def close(self) -> None:
        await self.writes.close()
        await self.mounts.close()
        self.objmeta.close()
        if self.blocks is not None:
            self.blocks.store.close()

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
        page = await self.lister.page(
            bucket,
            mounts,
            prefix=prefix,
            delimiter=delimiter,
            start_after=start_after,
            token=token,
            max_keys=max_keys,
        )
        if page.etags is None:  # a page served again from the page cache keeps its ETags
            page.etags = await self._listed(mounts, page)
        return page

    async def stat_object(self, bucket: str, key: str, *, fresh: bool = False) -> ObjectInfo:
        """The object at ``key``; ``fresh`` bypasses the metadata cache for this one stat."""
        target = await self.mounts.resolve(bucket, key)
        ufs = target.mount.ufs
        try:
            if isinstance(ufs, MetadataCachingUfs):
                status = await ufs.stat(target.path, fresh=fresh)
            else:
                status = await ufs.stat(target.path)
        except NotFound:
            raise NoSuchKey(resource=f"/{bucket}/{key}") from None
        if status.is_dir != target.is_dir_key:
            raise NoSuchKey(resource=f"/{bucket}/{key}")
        if status.is_dir:  # "dir/" of an existing folder: an empty folder object, as s3fs expects
            status = replace(status, size=0)
            return ObjectInfo(bucket, key, status, target, DIRECTORY_OBJECT)
        return ObjectInfo(bucket, key, status, target, self._stored_of(target, status))

    def _stored_of(self, target: Target, status: FileStatus) -> StoredObject | None:
        slot = (file_id(target.mount, target.path), version_of(status))
        hit = self._stored.get(slot)
        if hit is not None and hit[1]:
            return hit[0]
        # on the event loop, like the block index lookups: one indexed row of a WAL database,
        # ~20 us, where a thread hop cost ~0.25 ms of CPU (futexes, the GIL changing hands)
        stored = self.objmeta.get(*slot)
        self._stored.put(slot, stored)
        return stored

    async def _listed(self, mounts: list[Mount], page: Page) -> dict[str, str]:
        """The ETags the gateway stored for the objects of a page read from the UFS (those
        written through it). The page's files also go into the metadata caches (statuses
        and stored records), so GETs of listed objects need no stat of the UFS."""
        keys: dict[str, str] = {}  # file id -> key
        wanted: dict[str, str] = {}  # file id -> version
        files: dict[int, list[tuple[str, str, FileStatus]]] = defaultdict(list)  # by mount
        for entry in page.contents:
            assert entry.status is not None
            i = next(i for i, m in enumerate(mounts) if entry.key.startswith(m.prefix))
            path = entry.key[len(mounts[i].prefix) :]
            fid = file_id(mounts[i], path)
            keys[fid], wanted[fid] = entry.key, version_of(entry.status)
            if not entry.status.is_dir:
                files[i].append((fid, path, entry.status))
        if not wanted:
            return {}
        found = await asyncio.to_thread(self.objmeta.get_many, wanted)
        for i, mine in files.items():
            ufs = mounts[i].ufs
            statuses = [(path, status) for _, path, status in mine]
            if isinstance(ufs, MetadataCachingUfs) and ufs.remember(statuses, page.listed_at):
                for fid, _, _ in mine:
                    self._stored.put((fid, wanted[fid]), found.get(fid), page.listed_at)
        return {keys[fid]: stored.etag for fid, stored in found.items()}

    def read_object(self, obj: ObjectInfo, offset: int, length: int) -> AsyncIterator[bytes]:
        """Stream a byte range of ``obj`` through the block cache (or straight from the UFS)."""
        ufs, path = obj.target.mount.ufs, obj.target.path
        if self.blocks is None:
            return ufs.read_range(path, offset, length)

        async def fetch(off: int, n: int) -> bytes:
            return await ufs.read_block(path, off, n)

        whole = offset == 0 and length == obj.size
        return self.blocks.read(obj.version(), fetch, offset, length, whole=whole)

    # -- cache control (admin API, prefetch daemon) -----------------------------------------
    async def invalidate(
        self, bucket: str, prefix: str = "", *, data: bool = False, exact: bool = False
    ) -> int:
        """Drop cached metadata (and with ``data``, cached blocks) of keys under ``prefix``;
        with ``exact``, only of the key ``prefix`` itself and keys below ``prefix/``."""
        dropped = 0
        mounts = await self.mounts.mounts_for(bucket)
        self.lister.forget(bucket)
        for mount in _covering(mounts, prefix):
            rel = prefix[len(mount.prefix) :] if prefix.startswith(mount.prefix) else ""
            if isinstance(mount.ufs, MetadataCachingUfs):
                if not rel:
                    dropped += mount.ufs.invalidate("")
                elif exact:
                    dropped += mount.ufs.invalidate(rel.rstrip("/"), recursive=True)
                else:
                    dropped += mount.ufs.invalidate_prefix(rel)
                parent = rel.rstrip("/").rpartition("/")[0]
                if parent:
                    mount.ufs.invalidate(parent, recursive=False)
            if data and self.blocks is not None:
                base = f"{mount.ufs.uri.rstrip('/')}/{rel}"
                scopes = [base.rstrip("/") + "\x00", base.rstrip("/") + "/"] if exact else [base]
                for scope in scopes:
                    self.blocks.forget(scope.rstrip("\x00"), exact=scope.endswith("\x00"))
                    dropped += self.blocks.store.evict_where(scope)
        if isinstance(self.mounts.root_view, MetadataCachingUfs):
            self.mounts.root_view.invalidate(bucket, recursive=False)
        return dropped

    async def warm(self, bucket: str, key: str) -> tuple[ObjectInfo, int, int]:
        """Fill every block of one object (fresh metadata first): (object, blocks present,
        blocks in all)."""
        obj = await self.stat_object(bucket, key, fresh=True)
        if self.blocks is None:
            return obj, 0, 0
        ufs, path = obj.target.mount.ufs, obj.target.path

        async def fetch(off: int, n: int) -> bytes:
            return await ufs.read_block(path, off, n)

        present = await self.blocks.warm(obj.version(), fetch)
        return obj, present, self.blocks.blocks_of(obj.size)

    def _cache_samples(self) -> Iterable[Sample]:
        for mount in self.mounts.all_mounts():
            label = {"mount": mount_label(mount)}
            if isinstance(mount.ufs, MetadataCachingUfs):
                c = mount.ufs.cache
                yield "counter", "unionstore_metadata_hits", "metadata cache hits", label, c.hits
                yield (
                    "counter",
                    "unionstore_metadata_misses",
                    "metadata cache misses",
                    label,
                    c.misses,
                )
                yield (
                    "counter",
                    "unionstore_metadata_stale_serves",
                    "stale metadata served because the UFS failed",
                    label,
                    c.stale_serves,
                )
                yield (
                    "gauge",
                    "unionstore_metadata_entries",
                    "metadata cache entries",
                    label,
                    len(c),
                )
        if self.blocks is None:
            return
        for mount_name, s in self.blocks.stats.items():
            label = {"mount": mount_name}
            yield "counter", "unionstore_block_hits", "block cache hits", label, s.hits
            yield "counter", "unionstore_block_misses", "block cache misses", label, s.misses
            yield (
                "counter",
                "unionstore_ufs_read_bytes",
                "bytes read from the UFS",
                label,
                s.ufs_bytes,
            )
            yield "counter", "unionstore_served_bytes", "object bytes served", label, s.served_bytes
            yield (
                "gauge",
                "unionstore_read_amplification",
                "bytes read from the UFS / bytes served",
                label,
                s.read_amplification,
            )
            yield (
                "counter",
                "unionstore_block_evictions",
                "cached blocks found evicted",
                label,
                s.evictions,
            )
            yield (
                "counter",
                "unionstore_fill_failures",
                "failed block fills",
                label,
                s.fill_failures,
            )
            yield (
                "counter",
                "unionstore_fill_fallbacks",
                "reads served by a direct range read",
                label,
                s.fallbacks,
            )
            yield (
                "counter",
                "unionstore_fills_shed",
                "read-ahead fills dropped (queue full)",
                label,
                s.shed,
            )
        yield "gauge", "unionstore_fills_in_flight", "block fills running", {}, self.blocks.active
        yield "gauge", "unionstore_fills_queued", "block fills waiting", {}, self.blocks.queued
        yield (
            "gauge",
            "unionstore_block_cache_bytes",
            "bytes on disk in the block cache",
            {},
            self.blocks.store.volume(),
        )


def _covering(mounts: list[Mount], prefix: str) -> list[Mount]:
    """Mounts that hold keys under ``prefix``."""
    return [m for m in mounts if prefix.startswith(m.prefix) or m.prefix.startswith(prefix)]
