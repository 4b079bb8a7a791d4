"""The pyfuse3 boundary: every request handler runs inside :func:`boundary`, which turns any
exception into an errno, so nothing a request does can stop the daemon:

    FsError, S3Error  -> their errno        (refusals and mapped S3/transport errors)
    OSError           -> its errno, or EIO
    UnicodeError      -> EINVAL             (a name that is not UTF-8 cannot be an S3 key)
    anything else     -> EIO, logged with its traceback

Handlers that answer no request (forget, init) log and swallow instead. The translation
between :class:`~unionstore.fuse.inodes.Node` and ``pyfuse3.EntryAttributes`` is here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import stat as stat_mod
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import pyfuse3

from unionstore.fuse.files import OpenFiles
from unionstore.fuse.fs import FileSystem, FsError
from unionstore.fuse.inodes import Node
from unionstore.fuse.s3errors import S3Error

log = logging.getLogger("unionstore.fuse.ops")

P = ParamSpec("P")
R = TypeVar("R")
BLKSIZE = 1 << 20


def to_errno(exc: BaseException) -> int:
    if isinstance(exc, FsError | S3Error):
        return exc.errno
    if isinstance(exc, OSError):
        return exc.errno or errno.EIO
    if isinstance(exc, UnicodeError):
        return errno.EINVAL
    return errno.EIO


Handler = Callable[Concatenate["Operations", P], Coroutine[Any, Any, R]]


def boundary(fn: Handler[P, R]) -> Handler[P, R]:
    name = fn.__name__

    async def handler(self: Operations, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self.fs.requests[name] += 1
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except asyncio.CancelledError:
            raise
        except (FsError, S3Error, OSError, UnicodeError) as exc:
            code = to_errno(exc)
            level = logging.DEBUG if code in (errno.ENOENT, errno.EEXIST) else logging.INFO
            log.log(level, "%s%r: %s", fn.__name__, args[:2], exc)
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("%s%r failed", fn.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None

    functools.update_wrapper(handler, fn)
    return handler


def _name(raw: bytes) -> str:
    name = raw.decode("utf-8", errors="strict")
    if len(raw) > 255 or "/" in name or "\x00" in name:
        raise FsError(errno.ENAMETOOLONG if len(raw) > 255 else errno.EINVAL)
    return name


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False  # no NFS export: no lookups of "." and ".."

    def __init__(self, fs: FileSystem) -> None:
        super().__init__()
        self.fs = fs
        self.files = OpenFiles(fs)
        fs.notify_kernel = self._notify_kernel

    # -- attributes -------------------------------------------------------------------------
    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        opts = self.fs.opts
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.inode
        control = self.fs.control.get(node.inode) is not None
        a.entry_timeout = 0 if control else opts.entry_timeout
        a.attr_timeout = 0 if control else opts.attr_timeout
        mode = node.mode or (opts.dir_mode if node.is_dir else opts.file_mode)
        a.st_mode = (stat_mod.S_IFDIR if node.is_dir else stat_mod.S_IFREG) | mode
        a.st_nlink = 2 if node.is_dir else 1
        a.st_uid, a.st_gid = opts.uid, opts.gid
        a.st_size = node.stat.size
        a.st_blksize = BLKSIZE
        a.st_blocks = (node.stat.size + 511) // 512
        mtime = node.stat.mtime_ns or self.fs.started_ns
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = mtime
        return a

    async def _notify_kernel(self, entries: list[tuple[int, str, int]]) -> None:
        """Make the kernel forget names and attributes it caches (control-file drops)."""
        for parent, name, _ in entries:
            pyfuse3.invalidate_entry_async(parent, name.encode(), ignore_enoent=True)

        def inodes() -> None:
            for _, _, inode in entries:
                # OSError: the kernel does not know this inode (any more)
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_inode(inode, attr_only=False)

        await asyncio.to_thread(inodes)

    # -- handlers without a request ----------------------------------------------------------
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self.fs.forget(list(inode_list))
        except Exception:
            log.exception("forget failed")

    # -- names ------------------------------------------------------------------------------
    @boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.attrs(await self.fs.lookup(parent_inode, _name(name)))

    @boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attrs(await self.fs.getattr(inode))

    @boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.setattr(
            inode,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            fh=fh,
        )
        return self.attrs(node)

    @boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return (await self.fs.opendir(inode)).fh

    @boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = await self.fs.readdir(fh)
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            if not pyfuse3.readdir_reply(token, name.encode(), self.attrs(node), i + 1):
                return
            self.fs.ref(node)

    @boundary
    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    @boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.attrs(await self.fs.mkdir(parent_inode, _name(name)))

    @boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rmdir(parent_inode, _name(name))

    @boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.unlink(parent_inode, _name(name))

    @boundary
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await self.fs.rename(
            parent_inode_old, _name(name_old), parent_inode_new, _name(name_new), flags
        )

    @boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise FsError(errno.EPERM, "hard links are not supported on S3")

    @boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise FsError(errno.EPERM, "symbolic links are not supported on S3")

    @boundary
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise FsError(errno.EPERM, "only regular files and directories")

    @boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        for key, value in self.fs.statfs().items():
            setattr(data, key, value)
        return data

    # -- files ------------------------------------------------------------------------------
    @boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        h = await self.files.open(inode, flags)
        control = h.control is not None
        return pyfuse3.FileInfo(fh=h.fh, keep_cache=h.keep_cache, direct_io=control)

    @boundary
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        h = await self.files.create(parent_inode, _name(name))
        return pyfuse3.FileInfo(fh=h.fh), self.attrs(h.node)

    @boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        # a view of a cached block, not a copy: pyfuse3 replies from any buffer
        return cast(bytes, await self.files.read(fh, off, size))

    @boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.files.write(fh, off, buf)

    @boundary
    async def flush(self, fh: int) -> None:
        if self.fs.opts.read_only:
            # nothing is ever written: ENOSYS makes the kernel stop sending flush for good
            # (fc->no_flush), one request less on every close()
            raise pyfuse3.FUSEError(errno.ENOSYS)
        await self.files.flush(fh)

    @boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.files.flush(fh)

    @boundary
    async def release(self, fh: int) -> None:
        await self.files.release(fh)
