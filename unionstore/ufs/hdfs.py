"""The HDFS UFS: ``hdfs://namenode:port/root`` through hdfs-native (HDFS RPC, no JVM).

Identity. hdfs-native has no per-client user: a client takes ``HADOOP_USER_NAME`` from the
environment whenever it (re)connects. So there is one client per (NameNode, user), kept for the
life of the process (dropping one can deadlock, see ``_conns``), and it connects lazily while
holding one process-wide lock, with the variable set to the ``user`` option and restored right
after. hdfs-native also reconnects by itself after a connection breaks (NameNode restart), as
whoever the environment names *then*. Two guards: after an error that may mean a broken
connection, the next call reconnects under the lock; and a writer checks the owner of its
temp file, replacing the client if the connection turned out to act as someone else. Reads
after a silent reconnect can still run as the process's own user until the next error.

Failing fast. With a port in the URI (one NameNode), ``dfs.client.failover.max.attempts``
defaults to 0: otherwise a call to a NameNode that is down retries for ~3 minutes (listings) or
panics (other calls). Any ``dfs.*``/``ipc.*``/``hadoop.*``/``fs.*`` option is passed through.

Order. The NameNode keeps a directory's children sorted by their UTF-8 bytes compared as
*signed* Java bytes, so names with a non-ASCII byte sort before ASCII ones at the first byte
where they differ. S3 wants unsigned byte order (code point order). :func:`unsigned_order` turns
the one into the other while streaming: it holds back only names that a later name could still
precede. A directory of ASCII names streams with no buffering at all.

Writers create ``<dir>/.unionstore-tmp-<uuid>``, write, close it, then rename it over the target
(``rename`` with overwrite); ``abort`` closes and deletes the temp file.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import posixpath
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

from hdfs_native import AsyncClient, WriteOptions

from unionstore.errors import (
    AccessDenied,
    InvalidArgument,
    InvalidKey,
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
from unionstore.ufs.hdfs_errors import hdfs_errors

T = TypeVar("T")

#: options passed through to hdfs-native's client configuration
_CONFIG_PREFIXES = ("dfs.", "ipc.", "hadoop.", "fs.")


# ---- clients: one per (url, user, config), for the life of the process -----------------------
# Never drop an hdfs-native client. Its last reference takes its tokio runtime down, and that
# waits for the runtime's threads while holding the GIL; a thread that is just then waking a
# Python coroutine needs the GIL: the process deadlocks. (Seen here with hdfs-native 0.14.7:
# creating, using and dropping a client in a loop hangs within ~50 rounds; one shared client
# does not.) So clients live in this registry, and a replaced one is kept in ``_retired``.
_KeyT = tuple[str, str | None, tuple[tuple[str, str], ...]]
_conns: dict[_KeyT, _Conn] = {}
_retired: list[AsyncClient] = []
_connect_lock: asyncio.Lock | None = None


def _lock() -> asyncio.Lock:
    global _connect_lock
    if _connect_lock is None:
        _connect_lock = asyncio.Lock()
    return _connect_lock


class _Conn:
    """A client and whether its NameNode connection was made as ``user``.

    hdfs-native reconnects by itself after a connection breaks, reading ``HADOOP_USER_NAME``
    again at that moment. After an error that may mean a broken connection we therefore mark the
    client unconnected, and the next call reconnects it under the lock as the right user.
    """

    def __init__(self, url: str, user: str | None, config: dict[str, str]) -> None:
        self.url, self.user, self.config = url, user, config
        self.client = AsyncClient(url, config or None)
        self.connected = False

    async def get(self) -> AsyncClient:
        if self.connected:
            return self.client
        async with _lock():
            if not self.connected:
                old = os.environ.get("HADOOP_USER_NAME")
                if self.user:
                    os.environ["HADOOP_USER_NAME"] = self.user
                try:
                    with hdfs_errors(""):
                        await self.client.get_file_info("/")  # the first RPC fixes the user
                finally:
                    if old is None:
                        os.environ.pop("HADOOP_USER_NAME", None)
                    else:
                        os.environ["HADOOP_USER_NAME"] = old
                self.connected = True
        return self.client

    def replace(self) -> None:
        """Start over with a new client (the connection acts as someone else)."""
        _retired.append(self.client)
        self.client = AsyncClient(self.url, self.config or None)
        self.connected = False


def _conn(url: str, user: str | None, config: dict[str, str]) -> _Conn:
    key = (url, user, tuple(sorted(config.items())))
    conn = _conns.get(key)
    if conn is None:
        conn = _conns[key] = _Conn(url, user, config)
    return conn


# ---- signed (HDFS) order -> unsigned (S3) order, streaming ----------------------------------
def _first_high(key: bytes) -> int:
    for i, b in enumerate(key):
        if b >= 0x80:
            return i
    return -1


async def unsigned_order(items: AsyncIterator[tuple[bytes, T]]) -> AsyncIterator[T]:
    """Re-order ``(key, item)`` pairs that arrive sorted by *signed* bytes into unsigned order.

    A later key ``y`` can precede an earlier ``x`` in unsigned order only if they share a
    prefix ``p`` and then ``x`` has a byte >= 0x80 where ``y`` has an ASCII byte. Names sharing
    ``p`` arrive together, so once the newest key no longer starts with ``x``'s prefix up to its
    first non-ASCII byte, nothing can precede ``x`` any more and it is released. All-ASCII keys
    are released at once; memory grows only with runs of names that share such a prefix (in the
    worst case, a directory whose names all start with a non-ASCII character is held until its
    first ASCII-named child or its end).
    """
    heap: list[tuple[bytes, int, T]] = []
    seq = 0
    async for key, item in items:
        heapq.heappush(heap, (key, seq, item))
        seq += 1
        while heap:
            low = heap[0][0]
            cut = _first_high(low)
            if cut >= 0 and key.startswith(low[:cut]):
                break
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


def _status(name: str, st: Any) -> FileStatus:
    return FileStatus(
        name=name,
        is_dir=bool(st.isdir),
        size=0 if st.isdir else int(st.length),
        mtime_ns=int(st.modification_time) * 1_000_000,
        owner=str(st.owner),
        group=str(st.group),
        permission=int(st.permission),
    )


class HdfsWriter(UfsWriter):
    def __init__(self, ufs: HdfsUfs, writer: Any, tmp: str, target: str, key: str) -> None:
        self._ufs = ufs
        self._w: Any = writer
        self._tmp = tmp
        self._target = target
        self._key = key

    async def write(self, data: bytes) -> None:
        if self._w is None:
            raise InvalidArgument("write after close/abort")
        with self._ufs._errors(self._key):
            await self._w.write(data)

    async def close(self) -> None:
        if self._w is None:
            return
        w, self._w = self._w, None
        try:
            with self._ufs._errors(self._key):
                await w.close()
                client = await self._ufs._client()
                await client.rename(self._tmp, self._target, True)
        except BaseException:
            await self._ufs._delete_quietly(self._tmp)
            raise

    async def abort(self) -> None:
        if self._w is None:
            return
        w, self._w = self._w, None
        try:
            with self._ufs._errors(self._key):
                await w.close()
        except UnionstoreError:
            pass
        await self._ufs._delete_quietly(self._tmp)


class HdfsUfs(UnderFileSystem):
    scheme = "hdfs"

    def __init__(self, uri: str, options: Mapping[str, str] | None = None) -> None:
        super().__init__(uri)
        parts = urlsplit(uri)
        if parts.scheme != "hdfs" or not parts.netloc:
            raise InvalidArgument(f"not an HDFS URI: {uri!r}")
        self.url = f"hdfs://{parts.netloc}"
        self.root = "/" + posixpath.normpath(parts.path or "/").strip("/")
        opts = dict(options or {})
        self.user: str | None = opts.pop("user", None) or None
        config = {k: v for k, v in opts.items() if k.startswith(_CONFIG_PREFIXES)}
        unknown = sorted(set(opts) - set(config))
        if unknown:
            raise InvalidArgument(f"unknown options for hdfs:// UFS: {unknown}")
        if parts.port is not None:
            # One NameNode: fail fast when it is down (the default retries for ~3 minutes,
            # and its retry path panics in some calls), the client retries on our 503.
            config.setdefault("dfs.client.failover.max.attempts", "0")
        self._config = config
        self._conn_: _Conn | None = None

    # -- connection and errors -------------------------------------------------------------

    @property
    def _conn(self) -> _Conn:
        if self._conn_ is None:
            self._conn_ = _conn(self.url, self.user, self._config)
        return self._conn_

    async def _client(self) -> AsyncClient:
        """The shared client for our user, connected as that user (lazily, under the lock)."""
        with self._errors(""):
            return await self._conn.get()

    @contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        """Map errors (see ``_RULES``); after one that may mean a broken connection, make the
        next call reconnect under the lock (else hdfs-native reconnects as whoever
        ``HADOOP_USER_NAME`` names at that moment)."""
        try:
            with hdfs_errors(path):
                yield
        except ServiceUnavailable:
            if self._conn_ is not None:
                self._conn_.connected = False
            raise

    def _full(self, path: str) -> str:
        return posixpath.join(self.root, path) if path else self.root

    async def _delete_quietly(self, full: str) -> None:
        try:
            client = await self._client()
            with self._errors(full):
                await client.delete(full, False)
        except UnionstoreError:
            pass

    # -- reads -----------------------------------------------------------------------------

    async def stat(self, path: str) -> FileStatus:
        check_key(path)
        client = await self._client()
        with self._errors(path):
            st = await client.get_file_info(self._full(path))
        return _status(path.rpartition("/")[2], st)

    def list_dir(self, path: str) -> AsyncIterator[FileStatus]:
        check_key(path)
        return unsigned_order(self._list_signed(path))

    async def _list_signed(self, path: str) -> AsyncIterator[tuple[bytes, FileStatus]]:
        """Children as HDFS returns them (signed byte order), page by page."""
        client = await self._client()
        full = self._full(path)
        with self._errors(path):
            it = client.list_status(full, False).__aiter__()
        while True:
            with self._errors(path):
                try:
                    st = await it.__anext__()
                except StopAsyncIteration:
                    return
            parent, _, name = str(st.path).rstrip("/").rpartition("/")
            if (parent or "/") != full:  # getListing of a file returns the file itself
                raise NotFound(f"{path!r} is not a directory", resource=path)
            if name.startswith(TMP_PREFIX):
                continue
            yield name.encode("utf-8", "surrogatepass"), _status(name, st)

    def read_range(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        check_key(path)
        check_range(offset, length)
        return self._read_range(path, offset, length)

    async def _read_range(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        client = await self._client()
        with self._errors(path):
            reader = await client.read(self._full(path))
        # hdfs-native panics on a range past the end of the file: clamp it first.
        length = min(length, len(reader) - offset)
        if length <= 0:
            return
        with self._errors(path):
            it = reader.read_range_stream(offset, length).__aiter__()
        step = self.chunk_size
        while True:
            with self._errors(path):
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    return
            if len(chunk) <= step:
                yield bytes(chunk)
            else:
                view = memoryview(chunk)
                for start in range(0, len(view), step):
                    yield bytes(view[start : start + step])

    async def read_block(self, path: str, offset: int, length: int) -> bytes:
        check_key(path)
        check_range(offset, length)
        client = await self._client()
        with self._errors(path):
            reader = await client.read(self._full(path))
            length = min(length, len(reader) - offset)  # past the end panics
            return bytes(await reader.read_range(offset, length)) if length > 0 else b""

    # -- writes ----------------------------------------------------------------------------

    async def open_writer(self, path: str) -> UfsWriter:
        check_key(path)
        if not path:
            raise InvalidKey("the root cannot be written", resource=path)
        target = self._full(path)
        tmp = posixpath.join(posixpath.dirname(target), f"{TMP_PREFIX}{uuid.uuid4().hex}")
        options = WriteOptions(overwrite=False, create_parent=True)
        for attempt in (1, 2):
            client = await self._client()
            with self._errors(path):
                writer = await client.create(tmp, options)
            if not self.user:
                break
            # A connection that hdfs-native re-made on its own acts as whoever the environment
            # named then: check the owner, and start over with a new client if it is wrong.
            with self._errors(path):
                owner = (await client.get_file_info(tmp)).owner
            if owner == self.user:
                break
            with contextlib.suppress(UnionstoreError), self._errors(path):
                await writer.close()
                await client.delete(tmp, False)
            if attempt == 2:
                raise AccessDenied(f"HDFS connection does not act as {self.user!r}")
            self._conn.replace()
        return HdfsWriter(self, writer, tmp, target, path)

    async def mkdir(self, path: str) -> None:
        check_key(path)
        client = await self._client()
        with self._errors(path):
            await client.mkdirs(self._full(path), 0o755, True)

    async def rename(self, src: str, dst: str) -> None:
        check_key(src)
        check_key(dst)
        if not src or not dst:
            raise InvalidKey("the root cannot be renamed", resource=src or dst)
        client = await self._client()
        full_dst = self._full(dst)
        with self._errors(src):
            await client.get_file_info(self._full(src))  # NotFound before creating dst parents
        with self._errors(dst):
            await client.mkdirs(posixpath.dirname(full_dst), 0o755, True)
            await client.rename(self._full(src), full_dst, True)

    async def delete(self, path: str, recursive: bool = False) -> None:
        check_key(path)
        if not path:
            raise InvalidKey("the root cannot be deleted", resource=path)
        client = await self._client()
        with self._errors(path):
            deleted = await client.delete(self._full(path), recursive)
        if not deleted:
            raise NotFound(f"{path!r} does not exist", resource=path)

    async def close(self) -> None:
        """Nothing to release: the client is shared and lives as long as the process."""
