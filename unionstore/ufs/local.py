"""The local-disk UFS: ``file:///abs/path``.

Every blocking call runs on a worker thread. Paths are resolved with ``realpath`` and must stay
under the (resolved) root, so a symlink that points outside the root is reported as missing.

- ``list_dir``: a local directory comes back from the kernel unordered, so the names are read
  (not stat'ed) in one go, sorted in code-point order, then stat'ed lazily in small batches.
  Names that are not valid UTF-8 cannot be S3 keys and are skipped, as are hidden writer temp
  files, sockets/devices/fifos and symlinks that leave the root.
- ``read_range`` holds one descriptor for the whole read (so it sees one version of the file
  even if the file is replaced meanwhile) and ``pread``s ``chunk_size`` bytes at a time.
- option ``user`` is accepted (every driver takes it) but files are owned by the process.
- writers write ``<dir>/.unionstore-tmp-<uuid>``, ``fsync`` it and ``os.replace`` it over the
  target on ``close``; ``abort`` unlinks it.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import os
import pwd
import shutil
import stat as stat_mod
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from unionstore.errors import (
    AccessDenied,
    InvalidArgument,
    InvalidKey,
    KeyTooLong,
    NotFound,
    ServiceUnavailable,
    UnionstoreError,
)
from unionstore.ufs.base import (
    TMP_PREFIX,
    FileStatus,
    UfsWriter,
    UnderFileSystem,
    check_key,
    check_range,
)

T = TypeVar("T")

#: writers' temp files start with this; list_dir hides them and keys may not use it
#: how many children list_dir stats per worker-thread call
_STAT_BATCH = 256

# errno -> (error when reading/listing, error when writing/creating). One table for the driver.
_ERRNO_TABLE: dict[int, tuple[type[UnionstoreError], type[UnionstoreError]]] = {
    errno.ENOENT: (NotFound, NotFound),
    errno.ENOTDIR: (NotFound, InvalidKey),  # a path component is a file
    errno.EISDIR: (NotFound, InvalidKey),  # the target is a directory
    errno.EEXIST: (InvalidKey, InvalidKey),  # mkdir over a file
    errno.ELOOP: (NotFound, InvalidKey),
    errno.ENOTEMPTY: (InvalidArgument, InvalidArgument),  # non-recursive delete, dir rename
    errno.ENAMETOOLONG: (KeyTooLong, KeyTooLong),
    errno.EACCES: (AccessDenied, AccessDenied),
    errno.EPERM: (AccessDenied, AccessDenied),
    errno.EROFS: (AccessDenied, AccessDenied),
    errno.EIO: (ServiceUnavailable, ServiceUnavailable),
    errno.ENOSPC: (ServiceUnavailable, ServiceUnavailable),
    errno.EDQUOT: (ServiceUnavailable, ServiceUnavailable),
}


def map_os_error(exc: OSError, path: str, *, writing: bool = False) -> UnionstoreError:
    """Translate an ``OSError`` from the local file system into the unionstore tree."""
    pair = _ERRNO_TABLE.get(exc.errno or 0)
    cls: type[UnionstoreError] = UnionstoreError if pair is None else pair[1 if writing else 0]
    return cls(f"{exc.strerror or exc}: {path!r}", resource=path)


@contextmanager
def _errors(path: str, *, writing: bool = False) -> Iterator[None]:
    try:
        yield
    except UnionstoreError:
        raise
    except OSError as exc:
        raise map_os_error(exc, path, writing=writing) from exc


@lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@lru_cache(maxsize=256)
def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _status(name: str, st: os.stat_result) -> FileStatus:
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    return FileStatus(
        name=name,
        is_dir=is_dir,
        size=0 if is_dir else st.st_size,
        mtime_ns=st.st_mtime_ns,
        owner=_user_name(st.st_uid),
        group=_group_name(st.st_gid),
        permission=stat_mod.S_IMODE(st.st_mode),
    )


async def _settled(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` on a thread; if the caller is cancelled, still wait for the thread to finish.

    Used where the call holds a descriptor the caller closes afterwards: closing it while a
    thread still reads from it could hit a reused descriptor number.
    """
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        raise


class LocalWriter(UfsWriter):
    def __init__(self, fd: int, tmp: str, target: str, key: str) -> None:
        self._fd: int | None = fd
        self._tmp = tmp
        self._target = target
        self._key = key

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    async def write(self, data: bytes) -> None:
        if self._fd is None:
            raise InvalidArgument("write after close/abort")
        with _errors(self._key, writing=True):
            await _settled(self._write_all, data)

    def _publish(self) -> None:
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(self._tmp, self._target)
        except BaseException:
            _unlink_quietly(self._tmp)
            raise
        dir_fd = os.open(os.path.dirname(self._target), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def close(self) -> None:
        if self._fd is None:
            return
        with _errors(self._key, writing=True):
            await _settled(self._publish)

    def _discard(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
            _unlink_quietly(self._tmp)

    async def abort(self) -> None:
        with _errors(self._key, writing=True):
            await _settled(self._discard)


def _unlink_quietly(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


class LocalUfs(UnderFileSystem):
    scheme = "file"

    def __init__(self, uri: str, options: Mapping[str, str] | None = None) -> None:
        super().__init__(uri)
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise InvalidArgument(f"not a local file URI: {uri!r}")
        root = unquote(parts.path)
        if not root.startswith("/"):
            raise InvalidArgument(f"file URI must have an absolute path: {uri!r}")
        unknown = sorted(set(options or {}) - {"user"})
        if unknown:
            raise InvalidArgument(f"unknown options for file:// UFS: {unknown}")
        self.root = os.path.normpath(root)
        self._real_root = os.path.realpath(self.root)

    # -- path resolution (runs on worker threads: realpath touches the disk) --

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path) if path else self.root

    def _inside(self, real: str) -> bool:
        return real == self._real_root or real.startswith(self._real_root.rstrip("/") + "/")

    def _resolve(self, path: str) -> str:
        """Real path of an existing (or to-be-read) ``path``; NotFound if it leaves the root."""
        real = os.path.realpath(self._full(path))
        if not self._inside(real):
            raise NotFound(f"{path!r} resolves outside the root", resource=path)
        return real

    def _resolve_target(self, path: str) -> str:
        """Where a new file/dir at ``path`` goes: the resolved parent plus the last name."""
        if not path:
            raise InvalidKey("the root cannot be replaced", resource=path)
        parent, _, name = path.rpartition("/")
        real_parent = os.path.realpath(self._full(parent))
        if not self._inside(real_parent):
            raise InvalidKey(f"{path!r} resolves outside the root", resource=path)
        return os.path.join(real_parent, name)

    # -- reads --

    def _stat_sync(self, path: str) -> FileStatus:
        st = os.stat(self._resolve(path))
        if not (stat_mod.S_ISDIR(st.st_mode) or stat_mod.S_ISREG(st.st_mode)):
            raise NotFound(f"{path!r} is not a regular file", resource=path)
        return _status(path.rpartition("/")[2], st)

    async def stat(self, path: str) -> FileStatus:
        check_key(path)
        with _errors(path):
            return await asyncio.to_thread(self._stat_sync, path)

    def _names(self, path: str) -> tuple[str, list[str]]:
        real = self._resolve(path)
        with os.scandir(real) as it:
            names = []
            for entry in it:
                name = entry.name
                if name.startswith(TMP_PREFIX):
                    continue
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:  # undecodable bytes (surrogate escapes)
                    continue
                names.append(name)
        names.sort()
        return real, names

    def _stat_batch(self, real_dir: str, names: list[str]) -> list[FileStatus]:
        out = []
        for name in names:
            full = os.path.join(real_dir, name)
            try:
                st = os.stat(full)
                if os.path.islink(full) and not self._inside(os.path.realpath(full)):
                    continue
            except (FileNotFoundError, NotADirectoryError):  # vanished or dangling link
                continue
            if stat_mod.S_ISDIR(st.st_mode) or stat_mod.S_ISREG(st.st_mode):
                out.append(_status(name, st))
        return out

    def list_dir(self, path: str) -> AsyncIterator[FileStatus]:
        check_key(path)
        return self._list_dir(path)

    async def _list_dir(self, path: str) -> AsyncIterator[FileStatus]:
        with _errors(path):
            real, names = await asyncio.to_thread(self._names, path)
        for start in range(0, len(names), _STAT_BATCH):
            batch = names[start : start + _STAT_BATCH]
            with _errors(path):
                statuses = await asyncio.to_thread(self._stat_batch, real, batch)
            for status in statuses:
                yield status

    def _open_file(self, path: str) -> int:
        fd = os.open(self._resolve(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                raise NotFound(f"{path!r} is not a file", resource=path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read_range(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        check_key(path)
        check_range(offset, length)
        return self._read_range(path, offset, length)

    async def _read_range(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        with _errors(path):
            fd = await _settled(self._open_file, path)
        try:
            pos, end = offset, offset + length
            while pos < end:
                with _errors(path):
                    data = await _settled(os.pread, fd, min(self.chunk_size, end - pos), pos)
                if not data:
                    break
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    def _read_block_sync(self, path: str, offset: int, length: int) -> bytes:
        fd = self._open_file(path)
        try:
            parts, pos, end = [], offset, offset + length
            while pos < end:
                data = os.pread(fd, end - pos, pos)
                if not data:
                    break
                parts.append(data)
                pos += len(data)
            return b"".join(parts)
        finally:
            os.close(fd)

    async def read_block(self, path: str, offset: int, length: int) -> bytes:
        check_key(path)
        check_range(offset, length)
        with _errors(path):
            return await asyncio.to_thread(self._read_block_sync, path, offset, length)

    # -- writes --

    def _open_tmp(self, path: str) -> tuple[int, str, str]:
        target = self._resolve_target(path)
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        if os.path.isdir(target):
            raise InvalidKey(f"{path!r} is a directory", resource=path)
        tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        return fd, tmp, target

    async def open_writer(self, path: str) -> UfsWriter:
        check_key(path)
        with _errors(path, writing=True):
            fd, tmp, target = await _settled(self._open_tmp, path)
        return LocalWriter(fd, tmp, target, path)

    def _mkdir_sync(self, path: str) -> None:
        real = self._resolve_target(path) if path else self._real_root
        os.makedirs(real, exist_ok=True)

    async def mkdir(self, path: str) -> None:
        check_key(path)
        with _errors(path, writing=True):
            await asyncio.to_thread(self._mkdir_sync, path)

    def _rename_sync(self, src: str, dst: str) -> None:
        if not src:
            raise InvalidKey("the root cannot be renamed", resource=src)
        real_src = self._resolve_target(src)
        with _errors(src):
            os.lstat(real_src)  # NotFound for a missing source, before creating dst's parents
            self._resolve(src)  # and for a link that leaves the root
        real_dst = self._resolve_target(dst)
        os.makedirs(os.path.dirname(real_dst), exist_ok=True)
        os.replace(real_src, real_dst)

    async def rename(self, src: str, dst: str) -> None:
        check_key(src)
        check_key(dst)
        with _errors(dst, writing=True):
            await asyncio.to_thread(self._rename_sync, src, dst)

    def _delete_sync(self, path: str, recursive: bool) -> None:
        if not path:
            raise InvalidKey("the root cannot be deleted", resource=path)
        real = self._resolve_target(path)
        self._resolve(path)  # NotFound for a link that leaves the root
        st = os.lstat(real)
        if not stat_mod.S_ISDIR(st.st_mode):
            os.unlink(real)
        elif recursive:
            shutil.rmtree(real)
        else:
            os.rmdir(real)

    async def delete(self, path: str, recursive: bool = False) -> None:
        check_key(path)
        with _errors(path):
            await asyncio.to_thread(self._delete_sync, path, recursive)
