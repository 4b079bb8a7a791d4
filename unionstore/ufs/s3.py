"""The object-store UFS: ``s3://bucket/prefix`` through ``pyarrow.fs.S3FileSystem``.

pyarrow's calls block (they release the GIL), so each runs on a worker thread.

- A "directory" is any key under ``dir/`` or an empty ``dir/`` marker object; ``mkdir`` writes
  such markers, and pyarrow writes one for a parent that a delete or move would leave empty.
- ``list_dir`` returns children sorted by name. pyarrow fetches every page of the listing before
  it returns (it exposes no paging), so it is *not* lazy. S3 allows a key ``a`` and keys under
  ``a/`` at once; both are listed (the file first, as in S3 key order).
- ``read_range`` opens the object once (one HEAD for its size) and issues ranged GETs of up to
  ``request_size`` bytes, yielding ``chunk_size`` pieces.
- Writers. pyarrow's output stream cannot be aborted from Python (it has no ``abort``; dropping
  it *completes* the upload). So a writer first buffers up to ``buffer_size`` bytes in memory:
  a small object is sent with one PUT straight to its key on ``close`` and ``abort`` just drops
  the buffer. A larger one streams (multipart) to ``<dir>/.unionstore-tmp-<uuid>``, which
  ``close`` copies onto the key and deletes, and ``abort`` deletes. The copy is one CopyObject,
  which AWS limits to 5 GiB per object.
- ``rename`` is copy + delete (files only).
"""

from __future__ import annotations

import asyncio
import posixpath
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from unionstore.errors import (
    AccessDenied,
    InvalidArgument,
    InvalidKey,
    NotFound,
    NotImplementedOp,
    ServiceUnavailable,
    SlowDown,
    UnionstoreError,
)
from unionstore.ufs.base import (
    TMP_PREFIX,
    FileStatus,
    UfsWriter,
    UnderFileSystem,
    check_key,
    check_range,
    check_relpath,
)

#: ``user`` is accepted (every driver takes it); an object store acts as its credentials
_OPTIONS = {"endpoint", "access_key", "secret_key", "region", "user"}

# ---- one error table ------------------------------------------------------------------------
# pyarrow raises FileNotFoundError for missing keys/dirs (also for opening a "directory"),
# ArrowNotImplementedError for unsupported operations, and plain OSError carrying the AWS error
# name ("AWS Error ACCESS_DENIED during HeadObject operation: ...") for everything else.
# (exception type name or None, message part or None) -> ours; the first match wins.
_RULES: list[tuple[str | None, str | None, type[UnionstoreError]]] = [
    ("FileNotFoundError", None, NotFound),
    ("NotADirectoryError", None, NotFound),
    ("IsADirectoryError", None, InvalidKey),
    ("PermissionError", None, AccessDenied),
    ("ArrowNotImplementedError", None, NotImplementedOp),
    (None, "NO_SUCH_BUCKET", NotFound),
    (None, "NO_SUCH_KEY", NotFound),
    (None, "RESOURCE_NOT_FOUND", NotFound),
    (None, "ACCESS_DENIED", AccessDenied),
    (None, "INVALID_ACCESS_KEY_ID", AccessDenied),
    (None, "SIGNATURE_DOES_NOT_MATCH", AccessDenied),
    (None, "INVALID_SIGNATURE", AccessDenied),
    (None, "EXPIRED_TOKEN", AccessDenied),
    (None, "SLOW_DOWN", SlowDown),
    (None, "THROTTLING", SlowDown),
    (None, "NETWORK_CONNECTION", ServiceUnavailable),
    (None, "SERVICE_UNAVAILABLE", ServiceUnavailable),
    (None, "REQUEST_TIMEOUT", ServiceUnavailable),
    (None, "INTERNAL_FAILURE", ServiceUnavailable),
    (None, "HTTP status 403", AccessDenied),
    (None, "HTTP status 404", NotFound),
    (None, "HTTP status 5", ServiceUnavailable),
]


def map_s3_error(exc: BaseException, path: str) -> UnionstoreError:
    """Translate what pyarrow raised into the unionstore tree (see ``_RULES``)."""
    text = str(exc)
    names = {cls.__name__ for cls in type(exc).__mro__}
    ours = next(
        (
            cls
            for type_name, needle, cls in _RULES
            if (type_name is None or type_name in names) and (needle is None or needle in text)
        ),
        UnionstoreError,
    )
    return ours(f"S3: {text[:300]} ({path!r})", resource=path)


@contextmanager
def _errors(path: str) -> Iterator[None]:
    try:
        yield
    except UnionstoreError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise map_s3_error(exc, path) from exc


def _mtime_ns(info: pafs.FileInfo) -> int:
    mtime = info.mtime_ns
    return int(mtime) if mtime is not None else 0


def _status(name: str, info: pafs.FileInfo) -> FileStatus:
    is_dir = info.type == pafs.FileType.Directory
    return FileStatus(
        name=name,
        is_dir=is_dir,
        size=0 if is_dir else int(info.size or 0),
        mtime_ns=_mtime_ns(info),
    )


async def _closed(stream: Any) -> None:
    """Close a pyarrow stream on a thread (closing an output stream uploads)."""
    await asyncio.to_thread(stream.close)


class S3Writer(UfsWriter):
    def __init__(self, ufs: S3Ufs, target: str, key: str) -> None:
        self._ufs = ufs
        self._target = target
        self._key = key
        self._buffer: bytearray | None = bytearray()
        self._stream: Any = None
        self._tmp: str | None = None
        self._done = False

    async def write(self, data: bytes) -> None:
        if self._done:
            raise InvalidArgument("write after close/abort")
        fs = self._ufs.fs
        if self._buffer is not None:
            self._buffer += data
            if len(self._buffer) <= self._ufs.buffer_size:
                return
            tmp = posixpath.join(posixpath.dirname(self._target), TMP_PREFIX + uuid.uuid4().hex)
            with _errors(self._key):
                self._stream = await asyncio.to_thread(fs.open_output_stream, tmp)
            self._tmp = tmp
            data, self._buffer = bytes(self._buffer), None
        with _errors(self._key):
            await asyncio.to_thread(self._stream.write, data)

    async def close(self) -> None:
        if self._done:
            return
        self._done = True
        fs = self._ufs.fs
        if self._buffer is not None:  # small: one PUT straight to the key
            data, self._buffer = bytes(self._buffer), None
            with _errors(self._key):
                await asyncio.to_thread(_put, fs, self._target, data)
            return
        assert self._tmp is not None
        try:
            with _errors(self._key):
                await _closed(self._stream)
                await asyncio.to_thread(fs.move, self._tmp, self._target)
        except BaseException:
            await self._ufs._delete_quietly(self._tmp)
            raise

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = None
        if self._tmp is not None:
            try:
                with _errors(self._key):
                    await _closed(self._stream)
            except UnionstoreError:
                pass
            await self._ufs._delete_quietly(self._tmp)


def _put(fs: pafs.S3FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(data)


class S3Ufs(UnderFileSystem):
    scheme = "s3"
    #: bytes per ranged GET
    request_size = 8 << 20
    #: objects up to this size are buffered and PUT at once (see the module docstring)
    buffer_size = 8 << 20

    def __init__(self, uri: str, options: Mapping[str, str] | None = None) -> None:
        super().__init__(uri)
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise InvalidArgument(f"not an S3 URI: {uri!r}")
        opts = dict(options or {})
        unknown = sorted(set(opts) - _OPTIONS)
        if unknown:
            raise InvalidArgument(f"unknown options for s3:// UFS: {unknown}")
        prefix = parts.path.strip("/")
        if prefix:
            check_relpath(prefix)
        self.bucket = parts.netloc
        self.base = f"{self.bucket}/{prefix}" if prefix else self.bucket
        kwargs: dict[str, Any] = {"region": opts.get("region") or "us-east-1"}
        if opts.get("access_key"):
            kwargs["access_key"] = opts["access_key"]
            kwargs["secret_key"] = opts.get("secret_key", "")
        endpoint = opts.get("endpoint")
        if endpoint:
            ep = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs["endpoint_override"] = ep.netloc
            kwargs["scheme"] = ep.scheme or "https"
        self.fs = pafs.S3FileSystem(**kwargs)

    def _full(self, path: str) -> str:
        return f"{self.base}/{path}" if path else self.base

    async def _delete_quietly(self, full: str) -> None:
        try:
            with _errors(full):
                await asyncio.to_thread(self.fs.delete_file, full)
        except UnionstoreError:
            pass

    async def _info(self, path: str) -> pafs.FileInfo:
        with _errors(path):
            info = await asyncio.to_thread(self.fs.get_file_info, self._full(path))
        if info.type == pafs.FileType.NotFound and not path:
            # an empty prefix is still a root, as long as the bucket exists
            with _errors(path):
                info = await asyncio.to_thread(self.fs.get_file_info, self.bucket)
        if info.type == pafs.FileType.NotFound:
            raise NotFound(f"{path!r} does not exist", resource=path)
        return info

    # -- reads -----------------------------------------------------------------------------

    async def stat(self, path: str) -> FileStatus:
        check_key(path)
        return _status(path.rpartition("/")[2], await self._info(path))

    def list_dir(self, path: str) -> AsyncIterator[FileStatus]:
        check_key(path)
        return self._list_dir(path)

    async def _list_dir(self, path: str) -> AsyncIterator[FileStatus]:
        if not path:
            await self._info(path)  # NotFound for a missing bucket
        selector = pafs.FileSelector(self._full(path), allow_not_found=not path, recursive=False)
        with _errors(path):
            infos = await asyncio.to_thread(self.fs.get_file_info, selector)
        children = [
            _status(info.base_name, info)
            for info in infos
            if not info.base_name.startswith(TMP_PREFIX)
        ]
        children.sort(key=lambda st: (st.name, st.is_dir))
        for child in children:
            yield child

    def read_range(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        check_key(path)
        check_range(offset, length)
        return self._read_range(path, offset, length)

    async def _read_range(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        with _errors(path):
            f = await asyncio.to_thread(self.fs.open_input_file, self._full(path))
        try:
            pos, end = offset, min(offset + length, f.size())
            step = self.chunk_size
            while pos < end:
                want = min(max(self.request_size, step), end - pos)
                with _errors(path):
                    data = await asyncio.to_thread(f.read_at, want, pos)
                if not data:
                    break
                pos += len(data)
                if len(data) <= step:
                    yield data
                else:
                    view = memoryview(data)
                    for start in range(0, len(view), step):
                        yield bytes(view[start : start + step])
        finally:
            f.close()

    def _read_block_sync(self, path: str, offset: int, length: int) -> bytes:
        with self.fs.open_input_file(self._full(path)) as f:
            n = min(length, f.size() - offset)
            return bytes(f.read_at(n, offset)) if n > 0 else b""

    async def read_block(self, path: str, offset: int, length: int) -> bytes:
        check_key(path)
        check_range(offset, length)
        with _errors(path):
            return await asyncio.to_thread(self._read_block_sync, path, offset, length)

    # -- writes ----------------------------------------------------------------------------

    async def open_writer(self, path: str) -> UfsWriter:
        check_key(path)
        if not path:
            raise InvalidKey("the root cannot be written", resource=path)
        return S3Writer(self, self._full(path), path)

    async def mkdir(self, path: str) -> None:
        check_key(path)
        if not path:
            await self._info(path)
            return
        try:
            info = await self._info(path)
        except NotFound:
            with _errors(path):
                await asyncio.to_thread(self.fs.create_dir, self._full(path), recursive=True)
            return
        if info.type != pafs.FileType.Directory:
            raise InvalidKey(f"{path!r} is a file", resource=path)

    async def rename(self, src: str, dst: str) -> None:
        check_key(src)
        check_key(dst)
        if not src or not dst:
            raise InvalidKey("the root cannot be renamed", resource=src or dst)
        info = await self._info(src)
        if info.type == pafs.FileType.Directory:
            raise NotImplementedOp("renaming a directory on an object store", resource=src)
        with _errors(dst):
            await asyncio.to_thread(self.fs.move, self._full(src), self._full(dst))

    async def delete(self, path: str, recursive: bool = False) -> None:
        check_key(path)
        if not path:
            raise InvalidKey("the root cannot be deleted", resource=path)
        info = await self._info(path)
        full = self._full(path)
        if info.type != pafs.FileType.Directory:
            with _errors(path):
                await asyncio.to_thread(self.fs.delete_file, full)
            return
        if not recursive:
            async for _ in self.list_dir(path):
                raise InvalidArgument(f"directory {path!r} is not empty", resource=path)
        with _errors(path):
            await asyncio.to_thread(self.fs.delete_dir, full)
