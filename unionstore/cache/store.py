"""Where cached blocks live: a diskcache ``Cache`` on local disk (index in SQLite; a block under
32 KiB inline, up to ``PACK_LIMIT`` appended to a segment file, larger a file of its own),
bounded in bytes, least-recently-used evicted, shared by every worker process of a node and
kept across restarts.

A block is published atomically: its bytes are written completely before diskcache commits
the index row that makes it visible, so a process killed mid-fill leaves at most an orphan
file or segment range that is never served (``sweep_orphans`` removes them at start).

Keys carry the file version, so a changed file can never be served old blocks; every block is
tagged with its file's id, so all versions of one file can be evicted at once.

A hit is one indexed lookup and a file read, with no lock. diskcache's own ``get`` writes the
entry's access time in a transaction on every hit, which under many readers made threads
queue for SQLite's write lock (1,000 cached 100 KB objects: 1,100 GETs/s, most of the
time in that lock); here hits are remembered and their access times written once a second,
all in one transaction, by a thread of the store's own. Least-recently-used order is kept to
within that second.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import diskcache

from unionstore.cache import segments
from unionstore.cache.segments import Segments

LEASE_PREFIX = "lease\x00"
#: seconds between two writes of the access times of the blocks read since
TOUCH_INTERVAL = 1.0
#: values from diskcache's ``min_file_size`` up to this are appended to segment files; larger
#: ones get a file each (a 4 MiB block's file costs little next to its bytes, and it is
#: removed whole)
PACK_LIMIT = 1 << 20
_LOOKUP = (
    "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
    " AND (expire_time IS NULL OR expire_time > ?)"
)


_INSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size,"
    " mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, ?, ?, ?, ?, ?)"
)
_IN_LIMIT = 500  # keys per ``IN (...)``: well under SQLite's limit on bound variables


def block_key(file_id: str, version: str, block_size: int, index: int) -> str:
    return f"{file_id}\x00{version}\x00{block_size}\x00{index}"


class BlockDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's ``Disk`` for blocks: a bytes value from ``min_file_size`` up to
    ``PACK_LIMIT`` is appended to a segment file (``unionstore.cache.segments``), a larger
    one written to a file of its own in one call, into one of 256 folders.

    diskcache's own ``Disk`` iterates a ``BytesIO`` of the value, which splits random bytes
    into ~256-byte "lines": 16,000 Python-level writes for a 4 MiB block, under the GIL
    (measured: 6.7 vs 1.6 ms per 4 MiB block on tmpfs; a cold GET went 0.39 -> 0.91 GB/s),
    ~400 for a 100 KB one. Its two folder levels make a new folder for almost every file of
    a young cache, and the ``mkdir`` cost more than the write. The index is diskcache's, so
    folders written either way read alike.

    A segment's hole may only be punched once the row's deletion is committed: diskcache
    removes the files of a nested transaction when the inner one ends, so removals made
    while this thread has a transaction open wait for :meth:`release_removed`, called by the
    same thread after the outer one."""

    def __init__(self, directory: str, **settings: Any) -> None:
        super().__init__(directory, **settings)
        self.segments = Segments(directory)
        self.in_transaction: Callable[[], bool] = lambda: False  # set by open_cache
        self._removed = threading.local()  # .ranges: this thread's, held for the commit

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if type(value) is bytes and len(value) >= self.min_file_size:
            if len(value) < PACK_LIMIT and self.segments.usable():
                filename = self.segments.append(value)
            else:
                filename, full_path = self.filename(key, value)
                self._write(full_path, iter((value,)), "xb")
            return len(value), diskcache.core.MODE_BINARY, filename, None
        return super().store(value, read, key)

    def fetch(self, mode: int, filename: str, value: Any, read: bool) -> Any:
        """For diskcache's own ``get`` (leases; tests). Blocks are read by
        :meth:`BlockStore.read`, which also re-checks the row after reading a segment; this
        does not, and diskcache's ``read`` and ``check`` do not know segments at all."""
        where = segments.parse(filename) if mode == diskcache.core.MODE_BINARY else None
        if where is None:
            return super().fetch(mode, filename, value, read)
        if read:
            raise NotImplementedError("a block in a segment is read with BlockStore.read")
        segment, offset, length = where
        return _read_file(os.path.join(self._directory, segment), offset, offset + length)

    def filename(self, key: Any = None, value: Any = None) -> tuple[str, str]:
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def remove(self, file_path: str) -> None:
        where = segments.parse(file_path)
        if where is None:
            super().remove(file_path)
        elif self.in_transaction():
            self._removed.__dict__.setdefault("ranges", []).append(where)
        else:
            self.segments.punch(where[0], [where[1:]])

    def release_removed(self, committed: bool = True) -> None:
        """Free the segment ranges this thread removed inside a transaction that has since
        committed; forget them if it rolled back (the rows still point at them)."""
        removed = self._removed.__dict__.pop("ranges", [])
        for segment, offset, length in removed if committed else ():
            self.segments.punch(segment, [(offset, length)])

    def _write(
        self, full_path: str, iterator: Iterator[Any], mode: str, encoding: str | None = None
    ) -> int:
        try:
            writer = open(full_path, mode, encoding=encoding)  # noqa: SIM115
        except FileNotFoundError:  # its folder is not made yet: diskcache's way
            return int(super()._write(full_path, iterator, mode, encoding))
        try:
            with writer:
                size = 0
                for chunk in iterator:
                    size += len(chunk)
                    writer.write(chunk)
                return size
        except BaseException:  # e.g. ENOSPC: no partial file left behind
            with contextlib.suppress(OSError):
                os.unlink(full_path)
            raise


def open_cache(directory: Path, size_limit: int, **settings: Any) -> diskcache.Cache:
    """A diskcache store of blocks: bounded in bytes, least recently used evicted, tagged by
    file so all blocks of a file can be evicted at once. The gateway and the FUSE bridge both
    keep their blocks in one of these."""
    directory.mkdir(parents=True, exist_ok=True)
    cache = diskcache.Cache(
        str(directory),
        size_limit=size_limit,
        eviction_policy="least-recently-used",
        tag_index=True,
        statistics=False,
        disk=BlockDisk,
        **{"cull_limit": 16, **settings},
    )
    cache.disk.in_transaction = lambda: cache._txn_id == threading.get_ident()
    return cache


def _read_file(path: str, lo: int, hi: int | None) -> bytes | None:
    """Bytes ``[lo, hi)`` of a block file or segment, None if it is gone (evicted since the
    lookup)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return os.pread(fd, max(0, (os.fstat(fd).st_size if hi is None else hi) - lo), lo)
    finally:
        os.close(fd)


def sweep_orphans(cache: diskcache.Cache, directory: Path, min_age: float = 600.0) -> int:
    """Remove block files that no index row points at (left by a crash mid-write) and that
    are older than ``min_age`` seconds (younger ones may be another worker's fill); the same
    for segments (see ``segments.sweep``)."""
    now = time.time()
    known = {row[0] for row in cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
    removed = segments.sweep(cache.disk.segments, known, min_age)
    for dirpath, _, files in os.walk(directory):
        for name in files:
            if not name.endswith(".val"):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, directory)
            if rel in known:
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - os.stat(full).st_mtime > min_age:
                    os.unlink(full)
                    removed += 1
    return removed


class BlockStore:
    """Blocking calls (run them off the event loop)."""

    def __init__(self, directory: Path, size_limit: int, **settings: Any) -> None:
        self.directory = directory
        self._cache = open_cache(directory, size_limit, sqlite_mmap_size=1 << 26, **settings)
        self._disk: BlockDisk = self._cache.disk
        self._touched: dict[str, float] = {}  # key -> when it was last read, not yet written
        self._closing = threading.Event()
        self._toucher: threading.Thread | None = None  # started by the first hit
        self._toucher_pid = 0
        self._toucher_lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        return self.read(key)

    def read(self, key: str, lo: int = 0, hi: int | None = None) -> bytes | None:
        """Bytes ``[lo, hi)`` of the block at ``key`` (all of it by default), or None."""
        row = self._cache._sql(_LOOKUP, (key, time.time())).fetchone()
        if row is None:
            return None
        mode, filename, value = row
        if mode == diskcache.core.MODE_BINARY:
            data = self._read_binary(key, filename, lo, hi)
        elif mode == diskcache.core.MODE_RAW:
            data = bytes(value)[lo:hi]
        else:
            return None  # not a block (a lease)
        if data is not None:
            self._touched[key] = time.time()
            if self._toucher_pid != os.getpid():  # none yet, or this is a forked child
                self._start_toucher()
        return data

    def _read_binary(self, key: str, filename: str, lo: int, hi: int | None) -> bytes | None:
        where = segments.parse(filename)
        if where is None:
            return _read_file(os.path.join(self.directory, filename), lo, hi)
        segment, offset, length = where
        hi = length if hi is None else min(hi, length)
        data = _read_file(os.path.join(self.directory, segment), offset + lo, offset + hi)
        # the row may have been deleted and its range punched since the lookup: then the
        # bytes read may be a hole's zeros
        again = self._cache._sql("SELECT filename FROM Cache WHERE key = ? AND raw = 1", (key,))
        return data if again.fetchone() == (filename,) else None

    def _start_toucher(self) -> None:
        with self._toucher_lock:
            if self._toucher_pid == os.getpid() or self._closing.is_set():
                return
            self._toucher = threading.Thread(
                target=self._write_touches, name="block-lru", daemon=True
            )
            self._toucher.start()
            self._toucher_pid = os.getpid()

    def _write_touches(self) -> None:
        """The access times of the blocks read since the last write, in one transaction."""
        while not self._closing.wait(TOUCH_INTERVAL):
            self.write_touches()

    def write_touches(self) -> None:
        if not self._touched:
            return
        touched, self._touched = self._touched, {}
        rows = [(when, key) for key, when in touched.items()]
        # a failure costs entries their place in the LRU order, nothing more
        with contextlib.suppress(Exception), self._cache.transact(retry=True):
            self._cache._con.executemany(
                "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1", rows
            )

    def contains(self, key: str) -> bool:
        return key in self._cache

    def put(self, key: str, data: bytes, tag: str) -> None:
        self._cache.set(key, data, tag=tag, retry=True)

    def put_tagged(self, items: Iterable[tuple[str, bytes, str]]) -> None:
        """Store ``(key, block, tag)`` items: those below ``PACK_LIMIT`` (inline or appended to
        a segment) with one index transaction for all of them, larger ones one by one
        (diskcache writes each file before its short index transaction, so the write lock is
        not held meanwhile). A key given twice keeps its last block, as with :meth:`put`."""
        small: dict[str, tuple[bytes, str]] = {}
        for key, data, tag in items:
            if len(data) >= PACK_LIMIT:
                self.put(key, data, tag)
            else:
                small[key] = (data, tag)
        if small:
            try:
                self._put_small(small)
            except BaseException:
                self._disk.release_removed(committed=False)
                raise
            self._disk.release_removed()

    def _put_small(self, items: dict[str, tuple[bytes, str]]) -> None:
        """diskcache's ``set`` per block costs a transaction's worth of statements each (look
        up, insert, look for expired rows, size the cache): ~70 us of the disk writer's CPU
        per 100 KB block, under the GIL the mount's event loop needs. Here the bytes are
        stored first (segment appends), then one transaction replaces the batch's rows in
        three statements and culls while the cache is over its limit."""
        cache, now = self._cache, time.time()
        rows = []
        for key, (data, tag) in items.items():
            size, mode, filename, value = self._disk.store(data, False, key=key)
            rows.append((key, now, now, tag, size, mode, filename, value))
        keys = list(items)
        with cache._transact(retry=True) as (sql, cleanup):
            for lo in range(0, len(keys), _IN_LIMIT):
                part = keys[lo : lo + _IN_LIMIT]
                where = f"raw = 1 AND key IN ({','.join('?' * len(part))})"
                for (old,) in sql(f"SELECT filename FROM Cache WHERE {where}", part).fetchall():
                    cleanup(old)
                sql(f"DELETE FROM Cache WHERE {where}", part)
            cache._con.executemany(_INSERT, rows)
            # as many culls as the per-block sets would have made, while they would (each
            # drops expired rows, then up to ``cull_limit`` rows if the cache is full)
            for _ in range(len(rows) if cache.cull_limit else 0):
                cache._cull(now, sql, cleanup)
                if cache.volume() < cache.size_limit:
                    break

    def evict_file(self, file_id: str) -> int:
        """Drop every cached block of every version of one file."""
        return int(self._cache.evict(file_id, retry=True))

    def evict_where(self, predicate_prefix: str) -> int:
        """Drop blocks of every file whose id starts with ``predicate_prefix`` (a sub-tree)."""
        n = 0
        for key in list(self._cache.iterkeys()):
            if isinstance(key, str) and key.startswith(predicate_prefix):
                n += bool(self._cache.delete(key, retry=True))
        return n

    def try_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Atomically claim the right to fill ``key`` for ``ttl`` seconds (any process)."""
        return bool(self._cache.add(LEASE_PREFIX + key, owner, expire=ttl, retry=True))

    def release_lease(self, key: str) -> None:
        self._cache.delete(LEASE_PREFIX + key, retry=True)

    def lease_held(self, key: str) -> bool:
        return self._cache.get(LEASE_PREFIX + key, default=None, retry=True) is not None

    def volume(self) -> int:
        return int(self._cache.volume())

    def sweep_orphans(self, min_age: float = 600.0) -> int:
        return sweep_orphans(self._cache, self.directory, min_age)

    def close(self) -> None:
        self._closing.set()
        if self._toucher is not None and self._toucher_pid == os.getpid():
            self._toucher.join()
        self.write_touches()
        self._cache.close()
