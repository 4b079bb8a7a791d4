"""The file system itself, free of pyfuse3 types: inode numbers and names in, Nodes and bytes
out, :class:`FsError` (an errno) for every refusal. ``ops.py`` adapts it to pyfuse3.

POSIX on S3, decided here:

- directories are key prefixes (see ``metadata.py``); ``mkdir`` writes a zero-byte ``dir/``
  marker object, ``rmdir`` refuses a non-empty directory (ENOTEMPTY) and deletes the marker;
- ``unlink`` is DeleteObject; ``rename`` of a file is CopyObject (UploadPartCopy beyond 5 GiB)
  and DeleteObject, so it is not atomic; renaming a directory fails with EXDEV, which makes
  ``mv`` and ``shutil.move`` fall back to copying file by file;
- hard links, symlinks and device nodes: EPERM; chmod/chown to other values: EPERM (modes
  come from the mount's uid/gid/umask); setting times is accepted and ignored;
- writes: see ``writer.py`` (sequential only; EOPNOTSUPP for a random write into an object).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from unionstore.fuse.blockcache import AccessPattern, BlockCache, Fetch, ObjectVersion
from unionstore.fuse.config import MountOptions
from unionstore.fuse.control import CONTROL_DIR, DIR_INODE, ControlFiles
from unionstore.fuse.inodes import InodeTable, Node, is_under, join
from unionstore.fuse.metadata import DIR, Metadata, MetadataCache, Stat
from unionstore.fuse.s3client import S3Client
from unionstore.fuse.scan import DirectoryScans
from unionstore.fuse.writer import Upload

log = logging.getLogger("unionstore.fuse")

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
KernelNotifier = Callable[[list[tuple[int, str, int]]], Awaitable[None]]


class FsError(Exception):
    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(message or os.strerror(errno_))
        self.errno = errno_


@dataclass(slots=True, eq=False)
class Handle:
    fh: int
    node: Node
    key: str = ""
    obj: ObjectVersion | None = None
    pattern: AccessPattern = field(default_factory=AccessPattern)
    upload: Upload | None = None
    control: bytes | None = None  # contents of an open control file
    entries: list[tuple[str, Node]] | None = None  # an open directory's snapshot
    keep_cache: bool = False


class FileSystem:
    def __init__(self, opts: MountOptions, client: S3Client, blocks: BlockCache) -> None:
        self.opts = opts
        self.client = client
        self.blocks = blocks
        self.meta = Metadata(
            client, opts.prefix, MetadataCache(opts.metadata_ttl, opts.negative_ttl)
        )
        self.started_ns = time.time_ns()
        self.inodes = InodeTable(Stat(True, 0, self.started_ns))
        self.control = ControlFiles(self.statistics, self.invalidate)
        self.handles: dict[int, Handle] = {}
        self.uploads: dict[str, tuple[Upload, int]] = {}  # path -> (upload, open handles)
        self.notify_kernel: KernelNotifier | None = None
        self.requests: Counter[str] = Counter()  # kernel requests answered, per operation
        self.scans = DirectoryScans()
        self._next_fh = 1

    # -- helpers ----------------------------------------------------------------------------
    def node(self, inode: int) -> Node:
        found = self.control.get(inode)
        if found is not None:
            return found
        try:
            return self.inodes.get(inode)
        except KeyError:
            raise FsError(errno.ESTALE, f"unknown inode {inode}") from None

    def _dir(self, inode: int) -> Node:
        node = self.node(inode)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        if node.inode == DIR_INODE:
            raise FsError(errno.EPERM, "the control folder cannot be changed")
        return node

    def _writable(self) -> None:
        if self.opts.read_only:
            raise FsError(errno.EROFS)

    def file_id(self, key: str) -> str:
        return f"{self.client.endpoint}/{self.client.bucket}/{key}"

    async def stat(self, path: str) -> Stat | None:
        """What ``path`` is now: a file being written shows its size so far."""
        active = self.uploads.get(path)
        if active is not None and active[0].dirty:
            node = self.inodes.by_path(path)
            mtime = node.stat.mtime_ns if node else time.time_ns()
            return Stat(False, active[0].size, mtime)
        return await self.meta.stat(path)

    def _new_fh(self, handle_for: Callable[[int], Handle]) -> Handle:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        handle = self.handles[fh] = handle_for(fh)
        return handle

    def handle(self, fh: int) -> Handle:
        try:
            return self.handles[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None

    # -- names ------------------------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: str) -> Node:
        parent = self.node(parent_inode)
        if parent.inode == DIR_INODE:
            found = self.control.lookup(name)
            if found is None:
                raise FsError(errno.ENOENT)
            return found
        if not parent.is_dir:
            raise FsError(errno.ENOTDIR)
        if parent is self.inodes.root and name == CONTROL_DIR:
            return self.control.dir
        path = join(parent.path, name)
        stat = await self.stat(path)
        if stat is None:
            raise FsError(errno.ENOENT)
        node = self.inodes.remember(path, stat)
        node.lookups += 1
        return node

    def ref(self, node: Node) -> None:
        """The kernel took one more reference (a readdirplus entry)."""
        if self.control.get(node.inode) is None:
            node.lookups += 1

    def forget(self, items: list[tuple[int, int]]) -> None:
        for inode, count in items:
            self.inodes.forget(inode, count)

    async def getattr(self, inode: int) -> Node:
        node = self.node(inode)
        if self.control.get(inode) is not None or node.detached:
            return node
        stat = await self.stat(node.path)
        if stat is not None and stat.is_dir == node.is_dir:
            node.stat = stat
        return node

    async def opendir(self, inode: int) -> Handle:
        node = self.node(inode)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        self.inodes.opened(node)
        return self._new_fh(lambda fh: Handle(fh, node))

    async def readdir(self, fh: int) -> list[tuple[str, Node]]:
        h = self.handle(fh)
        if h.entries is None:
            if h.node.inode == DIR_INODE:
                h.entries = self.control.entries()
            else:
                h.entries = await self._list(h.node.path)
        return h.entries

    async def _list(self, path: str) -> list[tuple[str, Node]]:
        listed = dict(await self.meta.list_dir(path))
        for upath in self.uploads:
            if upath.rpartition("/")[0] == path:
                stat = await self.stat(upath)
                if stat is not None:
                    listed[upath.rpartition("/")[2]] = stat
        return [
            (name, self.inodes.remember(join(path, name), st))
            for name, st in sorted(listed.items())
        ]

    def releasedir(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is not None:
            self.inodes.closed(h.node)

    # -- namespace changes -------------------------------------------------------------------
    async def mkdir(self, parent_inode: int, name: str) -> Node:
        self._writable()
        path = join(self._dir(parent_inode).path, name)
        if await self.stat(path) is not None:
            raise FsError(errno.EEXIST)
        await self.client.put(
            self.meta.dir_prefix(path), b"", content_type="application/x-directory"
        )
        self.meta.cache.put(path, DIR)
        self.meta.cache.put_listing(path, {})
        node = self.inodes.remember(path, Stat(True, 0, time.time_ns()))
        node.lookups += 1
        return node

    async def rmdir(self, parent_inode: int, name: str) -> None:
        self._writable()
        path = join(self._dir(parent_inode).path, name)
        stat = await self.stat(path)
        if stat is None:
            raise FsError(errno.ENOENT)
        if not stat.is_dir:
            raise FsError(errno.ENOTDIR)
        if any(is_under(p, path) for p in self.uploads) or await self.meta.has_children(path):
            raise FsError(errno.ENOTEMPTY)
        await self.client.delete(self.meta.dir_prefix(path))
        self.meta.cache.remove(path)
        self.meta.cache.invalidate(path)
        self.inodes.detach(path)

    async def unlink(self, parent_inode: int, name: str) -> None:
        self._writable()
        path = join(self._dir(parent_inode).path, name)
        stat = await self.stat(path)
        if stat is None:
            raise FsError(errno.ENOENT)
        if stat.is_dir:
            raise FsError(errno.EISDIR)
        active = self.uploads.pop(path, None)
        if active is not None:
            active[0].unlinked = True  # open handles write on; nothing is published
        await self.client.delete(self.meta.key(path))
        self.meta.cache.remove(path)
        self.inodes.detach(path)

    async def rename(
        self, old_parent: int, old: str, new_parent: int, new: str, flags: int
    ) -> None:
        self._writable()
        src = join(self._dir(old_parent).path, old)
        dst = join(self._dir(new_parent).path, new)
        if flags & RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        stat = await self.stat(src)
        if stat is None:
            raise FsError(errno.ENOENT)
        if stat.is_dir:
            raise FsError(errno.EXDEV, "directories are key prefixes; move their files instead")
        target = await self.stat(dst)
        if target is not None and target.is_dir:
            raise FsError(errno.EISDIR)
        if target is not None and flags & RENAME_NOREPLACE:
            raise FsError(errno.EEXIST)
        if src == dst:
            return
        active = self.uploads.pop(src, None)
        if active is not None:
            await active[0].publish()
            stat = Stat(False, active[0].size, stat.mtime_ns)
        replaced = self.uploads.pop(dst, None)
        if replaced is not None:
            replaced[0].unlinked = True
        etag = await self.client.copy_large(self.meta.key(src), self.meta.key(dst), stat.size)
        await self.client.delete(self.meta.key(src))
        if active is not None:
            active[0].key = self.meta.key(dst)
            self.uploads[dst] = active
        self.meta.cache.remove(src)
        new_stat = Stat(False, stat.size, time.time_ns(), etag)
        self.meta.cache.put(dst, new_stat)
        node = self.inodes.rename(src, dst)
        if node is not None:
            node.stat = new_stat

    async def setattr(
        self,
        inode: int,
        *,
        size: int | None,
        mode: int | None,
        uid: int | None,
        gid: int | None,
        fh: int | None,
    ) -> Node:
        node = await self.getattr(inode)
        if self.control.get(inode) is not None:
            return node  # "> .unionstore/invalidate" truncates first: nothing to do
        want_mode = node.mode or (self.opts.dir_mode if node.is_dir else self.opts.file_mode)
        if mode is not None and (mode & 0o7777) != want_mode:
            raise FsError(errno.EPERM, "modes come from the mount options")
        if (uid is not None and uid != self.opts.uid) or (gid is not None and gid != self.opts.gid):
            raise FsError(errno.EPERM, "owners come from the mount options")
        if size is not None and (size != node.stat.size or size == 0):
            self._writable()
            await self._truncate(node, size or 0, fh)
        return node

    async def _truncate(self, node: Node, size: int, fh: int | None) -> None:
        if node.is_dir:
            raise FsError(errno.EISDIR)
        handle = self.handles.get(fh) if fh is not None else None
        active = handle.upload if handle is not None else None
        if active is None and node.path in self.uploads:
            active = self.uploads[node.path][0]
        if active is not None:
            await active.truncate(size)
            node.stat = Stat(False, active.size, time.time_ns())
        elif size == 0:
            etag = await self.client.put(self.meta.key(node.path), b"")
            self.published(node, 0, etag)
        elif size != node.stat.size:
            raise FsError(errno.EOPNOTSUPP, "only truncation to 0 of a closed object")

    def published(self, node: Node, size: int, etag: str) -> None:
        stat = Stat(False, size, time.time_ns(), etag)
        node.stat = stat
        if not node.detached:
            self.meta.cache.put(node.path, stat)

    # -- control & statistics ---------------------------------------------------------------
    async def invalidate(self, subtree: str) -> int:
        """Drop metadata at or below ``subtree`` here and in the kernel."""
        dropped = self.meta.cache.invalidate(subtree)
        kernel: list[tuple[int, str, int]] = []
        for node in self.inodes.under(subtree):
            node.page_cache_version = None
            parent = self.inodes.by_path(node.parent_path)
            if node is not self.inodes.root and parent is not None:
                kernel.append((parent.inode, node.name, node.inode))
        if self.notify_kernel is not None:
            await self.notify_kernel(kernel)
        return dropped

    def statistics(self) -> dict[str, Any]:
        return {
            "uptime_s": round((time.time_ns() - self.started_ns) / 1e9, 3),
            "endpoint": self.client.endpoint,
            "bucket": self.client.bucket,
            "prefix": self.opts.prefix,
            "fuse": dict(sorted(self.requests.items())),
            "s3": dict(sorted(self.client.stats.items())),
            "metadata": dict(sorted(self.meta.stats.counts.items())),
            "cache": self.blocks.statistics(),
            "directory_scans": self.scans.detected,
            "inodes": len(self.inodes),
            "open_handles": len(self.handles),
            "open_uploads": len(self.uploads),
        }

    def statfs(self) -> dict[str, int]:
        blocks = 1 << 40  # 4 PiB of 4 KiB blocks: "plenty", so tools do not refuse to write
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": blocks,
            "f_bfree": blocks,
            "f_bavail": blocks,
            "f_files": 1 << 32,
            "f_ffree": 1 << 32,
            "f_favail": 1 << 32,
            "f_namemax": 255,
        }

    def reader(self, h: Handle) -> Fetch:
        return self.fetcher(h.key, h.obj.version if h.obj else "")

    def fetcher(self, key: str, version: str) -> Fetch:
        """Range GETs of one object version (If-Match its ETag, where it has one)."""
        etag = version.partition(":")[0]
        return partial(self.client.get_range, key, if_match=etag or None)

    def object_version(self, key: str, stat: Stat) -> ObjectVersion:
        return ObjectVersion(self.file_id(key), stat.version, stat.size)
