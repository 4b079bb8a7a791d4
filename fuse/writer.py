"""Writes: a file written sequentially becomes one S3 object, streamed as a multipart upload and
published (made visible) on close or fsync.

What is possible, and how:

- New files and O_TRUNC rewrites: bytes are appended to an in-memory tail; whenever the tail
  holds a full part (``part_size``, doubling every 1,000 parts to stay under S3's 10,000) plus
  a small reorder window, the part is uploaded in the background (at most ``concurrency``
  parts in flight per file, so memory stays bounded). A file that never fills one part is
  published with a single PutObject.
- Writes into the tail that is still in memory (a rewrite of the last few KiB, writes that
  arrive slightly out of order, ``ftruncate`` within the tail) and holes (a write past the end:
  the gap reads as zeros) are fine.
- Appending to an existing object (open without O_TRUNC, or writing on after an fsync): the
  new object starts with the old one, copied server-side (UploadPartCopy) when it is at least
  5 MiB, read back into the tail when smaller.
- A write into bytes already uploaded or published (a random write into an existing object)
  fails with EOPNOTSUPP; the object is never left half-changed, since nothing is published
  until close/fsync, and a failed upload is aborted.

Publishing is idempotent: a close with nothing new written does nothing.
"""

from __future__ import annotations

import asyncio
import errno
import logging

from unionstore.fuse.s3client import S3Client
from unionstore.fuse.s3errors import S3Error

log = logging.getLogger("unionstore.fuse.writer")

MIN_PART = 5 << 20
REORDER_WINDOW = 1 << 20  # kept in memory past a full part, for rewrites and reordering


class UnsupportedWrite(S3Error):
    def __init__(self, message: str) -> None:
        super().__init__(errno.EOPNOTSUPP, message)


class Upload:
    def __init__(
        self,
        client: S3Client,
        key: str,
        *,
        existing_size: int | None = None,
        part_size: int = 8 << 20,
        concurrency: int = 4,
    ) -> None:
        """``existing_size`` None: a new (or truncated) empty file; else the object at ``key``
        of that size, to be appended to."""
        self.client = client
        self.key = key
        self.part_size = part_size
        self.concurrency = concurrency
        self.size = existing_size or 0
        self.base = self.size  # file offset of buf[0]; bytes before it are uploaded/published
        self.buf = bytearray()
        self.dirty = existing_size is None
        self.needs_prefix = bool(existing_size)  # the old bytes must lead the next version
        self.upload_id: str | None = None
        self.parts: dict[int, asyncio.Task[str]] = {}
        self.next_part = 1
        self.unlinked = False
        self.error: BaseException | None = None
        self.lock = asyncio.Lock()

    # -- writing ----------------------------------------------------------------------------
    async def write(self, offset: int, data: bytes) -> int:
        async with self.lock:
            self._check()
            if offset < self.base or (self.needs_prefix and offset < self.size):
                raise UnsupportedWrite(
                    f"write at {offset} into {self.key!r}: only bytes after {self.size} "
                    "(or still in memory) can be written; random writes are not supported"
                )
            await self._adopt_prefix()
            rel = offset - self.base
            if rel > len(self.buf):
                self.buf.extend(bytes(rel - len(self.buf)))  # a hole reads as zeros
            self.buf[rel : rel + len(data)] = data
            self.size = self.base + len(self.buf)
            self.dirty = True
            await self._drain(final=False)
            return len(data)

    async def truncate(self, length: int) -> None:
        async with self.lock:
            self._check()
            if length == self.size:
                return
            if length == 0:
                await self._abort_upload()
                self.buf, self.base, self.size = bytearray(), 0, 0
                self.needs_prefix, self.dirty = False, True
                return
            if length > self.size:
                await self._adopt_prefix()
                self.buf.extend(bytes(length - self.size))
            elif length >= self.base and not self.needs_prefix:
                del self.buf[length - self.base :]
            else:
                raise UnsupportedWrite(f"cannot shorten {self.key!r} to {length} bytes")
            self.size = self.base + len(self.buf)
            self.dirty = True

    def read(self, offset: int, size: int) -> bytes | None:
        """Bytes still in memory (for a reader of the same handle), or None."""
        if offset < self.base or self.needs_prefix:
            return None
        rel = offset - self.base
        return bytes(self.buf[rel : rel + size])

    # -- publishing -------------------------------------------------------------------------
    async def publish(self) -> str | None:
        """Make the written bytes the object at ``key``; returns its ETag (None: nothing new)."""
        async with self.lock:
            self._check()
            if self.unlinked:
                await self._abort_upload()
                return None
            if not self.dirty:
                return None
            try:
                if self.upload_id is None and self.base == 0 and not self.needs_prefix:
                    etag = await self.client.put(self.key, bytes(self.buf))
                    self.dirty = False
                    return etag  # the whole file stays in memory: appends just PUT again
                await self._drain(final=True)
                parts = [(n, await task) for n, task in sorted(self.parts.items())]
                assert self.upload_id is not None
                etag = await self.client.complete_multipart(self.key, self.upload_id, parts)
            except BaseException as exc:
                self.error = exc
                await self._abort_upload()
                raise
            self.upload_id, self.parts, self.next_part = None, {}, 1
            self.base, self.buf = self.size, bytearray()
            self.needs_prefix = self.size > 0
            self.dirty = False
            return etag

    async def abort(self) -> None:
        async with self.lock:
            await self._abort_upload()

    # -- internals --------------------------------------------------------------------------
    def _check(self) -> None:
        if self.error is not None:
            raise S3Error(errno.EIO, f"an earlier upload of {self.key!r} failed: {self.error}")

    def _current_part_size(self) -> int:
        return max(MIN_PART, self.part_size) << ((self.next_part - 1) // 1000)

    async def _adopt_prefix(self) -> None:
        """Make the existing object's bytes lead the upload (copy or read back)."""
        if not self.needs_prefix:
            return
        if self.size >= MIN_PART:
            await self._ensure_upload()
            n = self.next_part
            self.next_part += 1
            etag = await self.client.upload_part_copy(
                self.key, self._upload_id(), n, self.key, 0, self.size - 1
            )
            self.parts[n] = asyncio.ensure_future(_done(etag))
        else:
            self.buf = bytearray(await self.client.get_range(self.key, 0, self.size))
            self.base = 0
        self.needs_prefix = False

    async def _ensure_upload(self) -> None:
        if self.upload_id is None:
            self.upload_id = await self.client.create_multipart(self.key)

    def _upload_id(self) -> str:
        assert self.upload_id is not None
        return self.upload_id

    async def _drain(self, *, final: bool) -> None:
        """Upload full parts from the front of the tail (all of it when ``final``)."""
        while True:
            ps = self._current_part_size()
            if not (len(self.buf) >= ps + REORDER_WINDOW or (final and self.buf)):
                return
            await self._ensure_upload()
            await self._wait_for_slot()
            chunk = bytes(self.buf[:ps])
            del self.buf[:ps]
            self.base += len(chunk)
            n = self.next_part
            self.next_part += 1
            self.parts[n] = asyncio.ensure_future(
                self.client.upload_part(self.key, self._upload_id(), n, chunk)
            )

    async def _wait_for_slot(self) -> None:
        while True:
            running = [t for t in self.parts.values() if not t.done()]
            for t in self.parts.values():
                if t.done() and t.exception() is not None:
                    self.error = t.exception()
                    await self._abort_upload()
                    self._check()
            if len(running) < self.concurrency:
                return
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)

    async def _abort_upload(self) -> None:
        for task in self.parts.values():
            task.cancel()
        if self.parts:
            await asyncio.gather(*self.parts.values(), return_exceptions=True)
        self.parts, self.next_part = {}, 1
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            try:
                await self.client.abort_multipart(self.key, upload_id)
            except S3Error as exc:
                log.warning("cannot abort upload %s of %r: %s", upload_id, self.key, exc)


async def _done(value: str) -> str:
    return value
