"""Multipart uploads in the core.

Parts are staged on the same UFS as their target, under the mount root's hidden folder
``.unionstore-uploads/<upload id>/`` (never listed, never a valid key), each part written and
published like an object. Complete checks the part list as AWS does (InvalidPartOrder,
InvalidPart, EntityTooSmall), streams the parts in order into the target's temporary file and
publishes it by one rename, so the object appears whole or not at all. The ETag is AWS's:
the MD5 of the parts' binary MD5s, ``-N``. Upload and part records live in the object
metadata store; uploads abandoned for longer than the configured expiry are aborted by
:meth:`MultipartUploads.expire`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

from unionstore.errors import (
    EntityTooSmall,
    InvalidArgument,
    InvalidPart,
    InvalidPartOrder,
    NoSuchUpload,
    NotFound,
    UnionstoreError,
)
from unionstore.namespace.mounts import Target
from unionstore.namespace.objmeta import ObjectMetaStore, Part, Upload
from unionstore.writes import ObjectWrites, Written

if TYPE_CHECKING:
    from unionstore.gateway import Gateway, ObjectInfo, Principal

STAGING = ".unionstore-uploads"
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10_000

log = logging.getLogger("unionstore.multipart")


def _staging(upload_id: str, number: int | None = None) -> str:
    base = f"{STAGING}/{upload_id}"
    return base if number is None else f"{base}/{number:05d}"


class MultipartUploads:
    def __init__(self, gw: Gateway, writes: ObjectWrites, meta: ObjectMetaStore) -> None:
        self.gw = gw
        self.writes = writes
        self.meta = meta

    async def create(
        self, bucket: str, key: str, who: Principal, headers: Mapping[str, str]
    ) -> str:
        target = await self.gw.mounts.resolve(bucket, key)
        if target.is_dir_key:
            raise InvalidArgument("An object key ending in '/' names a folder")
        upload_id = secrets.token_urlsafe(24)
        owner = who.user or who.access_key or "anonymous"
        upload = Upload(upload_id, bucket, key, dict(headers), time.time(), owner)
        await asyncio.to_thread(self.meta.create_upload, upload)
        return upload_id

    async def _upload(self, bucket: str, key: str, upload_id: str) -> tuple[Upload, Target]:
        upload = await asyncio.to_thread(self.meta.get_upload, upload_id)
        if upload is None or upload.bucket != bucket or upload.key != key:
            raise NoSuchUpload(resource=f"/{bucket}/{key}")
        return upload, await self.gw.mounts.resolve(bucket, key)

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: AsyncIterator[bytes],
        *,
        etag: Callable[[], str],
    ) -> str:
        if not 1 <= number <= MAX_PARTS:
            raise InvalidArgument("Part number must be an integer between 1 and 10000, inclusive")
        _, target = await self._upload(bucket, key, upload_id)
        ufs = target.mount.ufs
        path = _staging(upload_id, number)
        await ufs.mkdir(_staging(upload_id))
        writer = await ufs.open_writer(path)
        size = 0
        try:
            async for chunk in body:
                size += len(chunk)
                await writer.write(chunk)
            tag = etag()
            await writer.close()
        except BaseException:
            await asyncio.shield(writer.abort())
            raise
        await asyncio.to_thread(self.meta.put_part, upload_id, number, tag, size)
        return tag

    async def upload_part_copy(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        src: ObjectInfo,
        first: int,
        length: int,
    ) -> str:
        md5 = hashlib.md5(usedforsecurity=False)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in self.gw.read_object(src, first, length):
                md5.update(chunk)
                yield chunk

        return await self.upload_part(
            bucket, key, upload_id, number, body(), etag=lambda: f'"{md5.hexdigest()}"'
        )

    async def parts(self, bucket: str, key: str, upload_id: str) -> tuple[Upload, list[Part]]:
        upload, _ = await self._upload(bucket, key, upload_id)
        return upload, await asyncio.to_thread(self.meta.parts, upload_id)

    async def uploads(self, bucket: str, prefix: str = "") -> list[Upload]:
        await self.gw.mounts.mounts_for(bucket)
        return await asyncio.to_thread(self.meta.list_uploads, bucket, prefix)

    async def complete(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        who: Principal,
        wanted: list[tuple[int, str]],
    ) -> Written:
        upload, target = await self._upload(bucket, key, upload_id)
        numbers = [n for n, _ in wanted]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise InvalidPartOrder()
        stored = {p.number: p for p in await asyncio.to_thread(self.meta.parts, upload_id)}
        chosen: list[Part] = []
        for number, tag in wanted:
            part = stored.get(number)
            if part is None or part.etag.strip('"') != tag.strip('"'):
                raise InvalidPart()
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < MIN_PART_SIZE:
                raise EntityTooSmall(
                    f"Part {part.number} is {part.size} bytes; all but the last part must be "
                    f"at least {MIN_PART_SIZE} bytes"
                )
        digest = hashlib.md5(usedforsecurity=False)
        for part in chosen:
            digest.update(bytes.fromhex(part.etag.strip('"')))
        etag = f'"{digest.hexdigest()}-{len(chosen)}"'
        staging_ufs = target.mount.ufs

        async def body() -> AsyncIterator[bytes]:
            for part in chosen:
                async for chunk in staging_ufs.read_range(
                    _staging(upload_id, part.number), 0, part.size
                ):
                    yield chunk

        written = await self.writes.put(
            bucket, key, who, body(), etag=lambda: etag, headers=upload.headers
        )
        await self._drop(upload_id, target)
        return written

    async def abort(self, bucket: str, key: str, upload_id: str) -> None:
        _, target = await self._upload(bucket, key, upload_id)
        await self._drop(upload_id, target)

    async def _drop(self, upload_id: str, target: Target) -> None:
        try:
            await target.mount.ufs.delete(_staging(upload_id), recursive=True)
        except NotFound:
            pass
        except UnionstoreError as exc:  # the records go anyway; expiry retries nothing
            log.warning("could not remove staging of upload %s: %s", upload_id, exc)
        await asyncio.to_thread(self.meta.drop_upload, upload_id)

    async def expire(self, max_age: float) -> int:
        """Abort uploads initiated more than ``max_age`` seconds ago."""
        stale = await asyncio.to_thread(self.meta.expired_uploads, time.time() - max_age)
        for upload in stale:
            try:
                target = await self.gw.mounts.resolve(upload.bucket, upload.key)
                await self._drop(upload.upload_id, target)
            except UnionstoreError:
                await asyncio.to_thread(self.meta.drop_upload, upload.upload_id)
        return len(stale)
