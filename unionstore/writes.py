"""The write path of the core: PutObject, CopyObject, DeleteObject, buckets under the root.

Every object is written to a hidden temporary file next to its target and published by rename
only after the whole body arrived and verified (the body iterator raises at its end if a
digest or signature does not match), so an interrupted or bad upload leaves nothing visible.
Two uploads of one key race only at the publish: one complete object wins, and its record
(headers, ETag, checksums) goes with it, because the rename, the stat of what was published
and the record are one step under a per-key lock that holds across the node's worker
processes (:mod:`unionstore.keylocks`), and a client that goes away cannot interrupt it.

Writes act on the UFS as the access key's user (its own driver instance), so files belong to
that user and the backend's permission checks apply. Afterwards the gateway's caches are told
at once: metadata of the key and its parents, listing pages of the bucket, blocks of the file.
S3 headers and the ETag (the body's MD5, or the multipart ETag) are kept in the object
metadata store, keyed by file version.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from unionstore.cache.metadata import MetadataCachingUfs
from unionstore.errors import (
    AccessDenied,
    BucketAlreadyOwnedByYou,
    BucketNotEmpty,
    InvalidArgument,
    NotFound,
    NotImplementedOp,
    PreconditionFailed,
    UnionstoreError,
)
from unionstore.keylocks import KeyLocks
from unionstore.namespace.mounts import Mount, Target, check_bucket_name
from unionstore.namespace.objmeta import ObjectMetaStore
from unionstore.ufs import open_ufs
from unionstore.ufs.base import FileStatus, UnderFileSystem
from unionstore.ufs.prefixed import PrefixedUfs

if TYPE_CHECKING:
    from unionstore.gateway import Gateway, ObjectInfo, Principal

EMPTY_ETAG = '"d41d8cd98f00b204e9800998ecf8427e"'


@dataclass(frozen=True, slots=True)
class Written:
    etag: str
    size: int
    mtime_ns: int


def file_id(mount: Mount, path: str) -> str:
    return f"{mount.ufs.uri.rstrip('/')}/{path}"


def version_of(status: FileStatus) -> str:
    return f"{status.size}:{status.mtime_ns}:{status.checksum or ''}"


class ObjectWrites:
    def __init__(self, gw: Gateway, meta: ObjectMetaStore, lock_dir: Path) -> None:
        self.gw = gw
        self.meta = meta
        self._user_ufs: dict[tuple[str, str, str], UnderFileSystem] = {}
        self._publishing = KeyLocks(lock_dir)

    # -- identity ---------------------------------------------------------------------------
    def ufs_for(self, mount: Mount, who: Principal) -> UnderFileSystem:
        """The mount's UFS acting as ``who``'s configured user (the shared one if none)."""
        if who.user is None or mount.source is None:
            return mount.ufs
        src = mount.source
        slot = (src.uri, src.subdir, who.user)
        ufs = self._user_ufs.get(slot)
        if ufs is None:
            ufs = open_ufs(src.uri, {**src.options, "user": who.user})
            if src.subdir:
                ufs = PrefixedUfs(ufs, src.subdir)
            self._user_ufs[slot] = ufs
        return ufs

    async def close(self) -> None:
        await asyncio.gather(*(u.close() for u in self._user_ufs.values()), return_exceptions=True)

    # -- caches -----------------------------------------------------------------------------
    def touched(self, bucket: str, mount: Mount, path: str, *, tree: bool = False) -> None:
        """Tell the caches that ``path`` (and with ``tree`` everything below it) changed."""
        self.gw.lister.forget(bucket)
        if isinstance(mount.ufs, MetadataCachingUfs):
            mount.ufs.invalidate(path, recursive=tree)
            parent = path
            while parent:
                parent = parent.rpartition("/")[0]
                mount.ufs.invalidate(parent, recursive=False)
        if self.gw.blocks is not None:
            self.gw.blocks.forget(file_id(mount, path))

    # -- objects ----------------------------------------------------------------------------
    async def put(
        self,
        bucket: str,
        key: str,
        who: Principal,
        body: AsyncIterator[bytes],
        *,
        etag: Callable[[], str],
        headers: Mapping[str, str],
        late_headers: Callable[[], Mapping[str, str]] = dict,
        create_only: bool = False,
    ) -> Written:
        """Stream ``body`` into ``key``. Once the body has ended (and verified), ``etag()`` and
        ``late_headers()`` (checksums known only then) are asked for what to store."""
        target = await self.gw.mounts.resolve(bucket, key)
        ufs = self.ufs_for(target.mount, who)
        if target.is_dir_key:
            return await self._put_dir(bucket, target, ufs, body)
        if create_only and await self._exists(ufs, target.path):
            raise PreconditionFailed(
                "At least one of the pre-conditions you specified did not hold"
            )
        await self._mkparents(ufs, target.path)
        writer = await ufs.open_writer(target.path)
        fid = file_id(target.mount, target.path)
        try:
            async for chunk in body:
                await writer.write(chunk)
            tag = etag()
            stored = {**headers, **late_headers()}
        except BaseException:
            await asyncio.shield(writer.abort())
            raise

        async def publish() -> Written:
            async with self._publishing.hold(fid):
                try:
                    if create_only and await self._exists(ufs, target.path):
                        raise PreconditionFailed("The object was created meanwhile")
                    await writer.close()
                except BaseException:
                    await writer.abort()
                    raise
                return await self._published(bucket, target, ufs, tag, stored)

        # shielded: a client that goes away now cannot part the object from its record
        return await asyncio.shield(publish())

    async def _put_dir(
        self, bucket: str, target: Target, ufs: UnderFileSystem, body: AsyncIterator[bytes]
    ) -> Written:
        """``PUT dir/`` with an empty body: a directory (what s3fs-fuse's mkdir sends)."""
        async for chunk in body:
            if chunk:
                raise InvalidArgument("An object key ending in '/' names a folder: no content")
        if target.path:
            await ufs.mkdir(target.path)
        self.touched(bucket, target.mount, target.path)
        return Written(EMPTY_ETAG, 0, 0)

    async def _published(
        self,
        bucket: str,
        target: Target,
        ufs: UnderFileSystem,
        tag: str,
        headers: Mapping[str, str],
    ) -> Written:
        status = await ufs.stat(target.path)
        fid = file_id(target.mount, target.path)
        await asyncio.to_thread(self.meta.put, fid, version_of(status), tag, dict(headers))
        self.touched(bucket, target.mount, target.path)
        return Written(tag, status.size, status.mtime_ns)

    async def _exists(self, ufs: UnderFileSystem, path: str) -> bool:
        try:
            await ufs.stat(path)
        except NotFound:
            return False
        return True

    async def _mkparents(self, ufs: UnderFileSystem, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent and not await self._exists(ufs, parent):
            await ufs.mkdir(parent)

    async def copy(
        self,
        src: ObjectInfo,
        bucket: str,
        key: str,
        who: Principal,
        *,
        headers: Mapping[str, str] | None,
    ) -> Written:
        """CopyObject (within or across buckets and UFS kinds); ``headers`` None keeps the
        source's headers (metadata directive COPY). The edge checks the copy-source
        conditions before calling this."""
        if src.bucket == bucket and src.key == key and headers is None:
            raise InvalidArgument(
                "This copy request is illegal because it is trying to copy an object to itself "
                "without changing the object's metadata."
            )
        md5 = hashlib.md5(usedforsecurity=False)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in self.gw.read_object(src, 0, src.size):
                md5.update(chunk)
                yield chunk

        kept = headers if headers is not None else (src.stored.headers if src.stored else {})
        return await self.put(
            bucket, key, who, body(), etag=lambda: f'"{md5.hexdigest()}"', headers=kept
        )

    async def delete(self, bucket: str, key: str, who: Principal) -> None:
        """DeleteObject: a missing key is fine (S3 answers 204 either way)."""
        target = await self.gw.mounts.resolve(bucket, key)
        ufs = self.ufs_for(target.mount, who)
        fid = file_id(target.mount, target.path)
        async with self._publishing.hold(fid):
            if not await self._delete(bucket, target, ufs):
                return
            await asyncio.to_thread(self.meta.delete, fid)
        await self._prune(ufs, target.path.rpartition("/")[0])

    async def _delete(self, bucket: str, target: Target, ufs: UnderFileSystem) -> bool:
        try:
            status = await ufs.stat(target.path) if target.path else None
            if status is None:
                return False
            if status.is_dir:
                if target.is_dir_key:
                    await ufs.delete(target.path)  # only when empty, as s3fs's rmdir expects
            elif not target.is_dir_key:
                await ufs.delete(target.path)
        except NotFound:
            return False
        except InvalidArgument:
            return False  # a non-empty folder named "dir/": S3 has no such object to delete
        finally:
            self.touched(bucket, target.mount, target.path)
        return True

    async def _prune(self, ufs: UnderFileSystem, path: str) -> None:
        """Remove folders left empty by a delete, up to the mount root: in S3 a prefix with
        no keys under it does not exist."""
        while path:
            try:
                first = await anext(aiter(ufs.list_dir(path)), None)
                if first is not None:
                    return
                await ufs.delete(path)
            except UnionstoreError:
                return
            path = path.rpartition("/")[0]

    # -- buckets ----------------------------------------------------------------------------
    async def create_bucket(self, bucket: str) -> None:
        check_bucket_name(bucket)
        root = self.gw.mounts.bucket_root
        if root is None:
            raise NotImplementedOp("this gateway has no bucket root: buckets come from mounts")
        try:
            await self.gw.mounts.mounts_for(bucket)
        except NotFound:
            await root.mkdir(bucket)
            self.gw.mounts.forget_bucket(bucket)
            return
        raise BucketAlreadyOwnedByYou(resource=bucket)

    async def delete_bucket(self, bucket: str) -> None:
        mounts = await self.gw.mounts.mounts_for(bucket)
        root = self.gw.mounts.bucket_root
        if root is None or bucket in self.gw.mounts.static_buckets():
            raise AccessDenied("Buckets of the mount table cannot be deleted through S3")
        page = await self.gw.lister.page(bucket, mounts, max_keys=1, cached=False)
        if page.entries:
            raise BucketNotEmpty(resource=bucket)
        await root.delete(bucket, recursive=True)
        self.gw.mounts.forget_bucket(bucket)
        self.gw.lister.forget(bucket)
