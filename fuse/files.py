"""Open files: open/create, read, write, flush/fsync (publish), release.

A reader's handle is pinned to the object version it opened (reads send If-Match, so a
changed object fails with ESTALE instead of mixing versions). The kernel may keep a file's
pages between opens (``keep_cache``) only while its version has not changed.

All handles writing one path share one :class:`~unionstore.fuse.writer.Upload`; it is
published when any of them is flushed (close) or fsynced, and forgotten with the last one.
"""

from __future__ import annotations

import errno
import logging
import os
import time

from unionstore.fuse.blockcache import Data, ObjectVersion
from unionstore.fuse.fs import FileSystem, FsError, Handle
from unionstore.fuse.inodes import Node, join
from unionstore.fuse.metadata import Stat
from unionstore.fuse.writer import Upload

log = logging.getLogger("unionstore.fuse.files")


class OpenFiles:
    def __init__(self, fs: FileSystem) -> None:
        self.fs = fs

    def _upload_for(self, node: Node, existing_size: int | None) -> Upload:
        fs = self.fs
        active = fs.uploads.get(node.path)
        if active is not None:
            fs.uploads[node.path] = (active[0], active[1] + 1)
            return active[0]
        upload = Upload(
            fs.client,
            fs.meta.key(node.path),
            existing_size=existing_size,
            part_size=fs.opts.part_size,
            concurrency=fs.opts.upload_concurrency,
        )
        fs.uploads[node.path] = (upload, 1)
        return upload

    async def open(self, inode: int, flags: int) -> Handle:
        fs = self.fs
        node = fs.node(inode)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY
        if fs.control.get(inode) is not None:
            if node.is_dir:
                raise FsError(errno.EISDIR)
            content = await fs.control.open(node, writing)
            fs.inodes.opened(node)
            return fs._new_fh(lambda fh: Handle(fh, node, control=content))
        if node.is_dir:
            raise FsError(errno.EISDIR)
        if writing:
            fs._writable()
        stat = node.stat if node.detached else await fs.stat(node.path)
        if stat is None:
            raise FsError(errno.ENOENT)
        node.stat = stat
        key = fs.meta.key(node.path)
        h = Handle(0, node, key=key)
        if writing:
            truncate = bool(flags & os.O_TRUNC)
            h.upload = self._upload_for(node, None if truncate else stat.size)
            if truncate:
                await h.upload.truncate(0)
                node.stat = Stat(False, 0, time.time_ns())
            node.page_cache_version = None
        else:
            h.keep_cache = node.page_cache_version == stat.version
            node.page_cache_version = stat.version
        if not writing and node.path in fs.uploads:  # readers see the last published version
            published = await fs.meta.stat(node.path)
            stat = published if published is not None else Stat(False)
        if stat.etag or stat.size:
            h.obj = fs.object_version(key, stat)
            if not writing and not node.detached:
                self._scan_ahead(node)
        fs.inodes.opened(node)
        return fs._new_fh(lambda fh: _with_fh(h, fh))

    def _scan_ahead(self, node: Node) -> None:
        """A file opened after its neighbours in name order: fetch the next ones (scan.py)."""
        fs = self.fs
        parent, _, name = node.path.rpartition("/")

        def prefetch(ahead: str, stat: Stat) -> bool:
            path = join(parent, ahead)
            known = fs.inodes.by_path(path)
            if known is not None and known.page_cache_version == stat.version:
                return True  # the kernel holds its pages
            key = fs.meta.key(path)
            return fs.blocks.prefetch(fs.object_version(key, stat), fs.fetcher(key, stat.version))

        fs.scans.opened(
            parent,
            name,
            fs.meta.cache.listing(parent),
            fs.blocks.readahead_blocks,
            fs.blocks.large,
            prefetch,
        )

    async def create(self, parent_inode: int, name: str) -> Handle:
        fs = self.fs
        fs._writable()
        parent = fs._dir(parent_inode)
        path = join(parent.path, name)
        existing = await fs.stat(path)
        if existing is not None and existing.is_dir:
            raise FsError(errno.EISDIR)
        node = fs.inodes.remember(path, Stat(False, 0, time.time_ns()))
        node.lookups += 1
        node.page_cache_version = None
        upload = self._upload_for(node, None)
        await upload.truncate(0)  # an Upload shared with an open writer starts over too
        fs.inodes.opened(node)
        return fs._new_fh(lambda fh: Handle(fh, node, key=fs.meta.key(path), upload=upload))

    async def read(self, fh: int, offset: int, size: int) -> Data:
        fs = self.fs
        h = fs.handle(fh)
        if h.control is not None:
            return h.control[offset : offset + size]
        if h.upload is not None and (h.upload.dirty or h.obj is None):
            data = h.upload.read(offset, size)
            if data is None:
                raise FsError(errno.EOPNOTSUPP, "reading back uploaded parts before close")
            return data
        if h.obj is None or offset >= h.obj.size:
            return b""
        fs.blocks.counts["read_requests"] += 1
        return await fs.blocks.read(h.obj, fs.reader(h), offset, size, h.pattern)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        fs = self.fs
        h = fs.handle(fh)
        if h.control is not None:
            return await fs.control.write(h.node, data)
        if h.upload is None:
            raise FsError(errno.EBADF)
        written = await h.upload.write(offset, data)
        h.node.stat = Stat(False, h.upload.size, time.time_ns())
        return written

    async def flush(self, fh: int) -> None:
        """close() and fsync(): publish what was written."""
        h = self.fs.handle(fh)
        if h.upload is None:
            return
        etag = await h.upload.publish()
        if etag is not None:
            self.fs.published(h.node, h.upload.size, etag)
            h.obj = ObjectVersion(self.fs.file_id(h.upload.key), h.node.stat.version, h.upload.size)

    async def release(self, fh: int) -> None:
        fs = self.fs
        h = fs.handles.pop(fh, None)
        if h is None:
            return
        try:
            if h.upload is not None:
                fs.handles[fh] = h  # flush looks it up
                try:
                    await self.flush(fh)
                finally:
                    del fs.handles[fh]
        finally:
            if h.upload is not None:
                self._drop_upload(h)
            fs.inodes.closed(h.node)

    def _drop_upload(self, h: Handle) -> None:
        fs = self.fs
        for path, (upload, count) in list(fs.uploads.items()):
            if upload is h.upload:
                if count <= 1:
                    del fs.uploads[path]
                else:
                    fs.uploads[path] = (upload, count - 1)

    async def close_all(self) -> None:
        """At unmount: abort uploads nobody closed (nothing half-written becomes visible)."""
        for upload, _ in list(self.fs.uploads.values()):
            try:
                await upload.abort()
            except Exception as exc:
                log.warning("abort of %r at unmount failed: %s", upload.key, exc)
        self.fs.uploads.clear()


def _with_fh(h: Handle, fh: int) -> Handle:
    h.fh = fh
    return h
