"""Where cached blocks live: a diskcache ``Cache`` on local disk (index in SQLite, each block a
file), bounded in bytes, least-recently-used evicted, shared by every worker process of a node
and kept across restarts.

A block is published atomically: diskcache writes the block's file completely before it
commits the index row that makes it visible, so a process killed mid-fill leaves at most an
orphan file that is never served (``sweep_orphans`` removes them at start).

Keys carry the file version, so a changed file can never be served old blocks; every block is
tagged with its file's id, so all versions of one file can be evicted at once.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path
from typing import Any

import diskcache

LEASE_PREFIX = "lease\x00"


def block_key(file_id: str, version: str, block_size: int, index: int) -> str:
    return f"{file_id}\x00{version}\x00{block_size}\x00{index}"


def open_cache(directory: Path, size_limit: int, **settings: Any) -> diskcache.Cache:
    """A diskcache store of blocks: bounded in bytes, least recently used evicted, tagged by
    file so all blocks of a file can be evicted at once. The gateway and the FUSE bridge both
    keep their blocks in one of these."""
    directory.mkdir(parents=True, exist_ok=True)
    return diskcache.Cache(
        str(directory),
        size_limit=size_limit,
        eviction_policy="least-recently-used",
        tag_index=True,
        cull_limit=16,
        statistics=False,
        **settings,
    )


def read_value(
    cache: diskcache.Cache, key: str, lo: int = 0, hi: int | None = None
) -> bytes | None:
    """Bytes ``[lo, hi)`` of the value at ``key`` (all of it by default), or None.

    A miss costs a plain lookup (no write lock). A hit's LRU update takes the lock, but a
    value kept as a file is read after the lock is released, so one reader's disk I/O never
    stalls the others (measured in the FUSE bridge: twice the read rate)."""
    if key not in cache:
        return None
    value: Any = cache.get(key, default=None, read=True, retry=True)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value[lo:hi]
    with value:
        if lo:
            value.seek(lo)
        data: bytes = value.read(-1 if hi is None else hi - lo)
        return data


def write_value(cache: diskcache.Cache, key: str, data: bytes, tag: str) -> None:
    """Store ``data`` at ``key``. A value big enough for a file of its own is handed over as a
    stream: given plain bytes, diskcache writes them line by line (it iterates a BytesIO), one
    Python call per newline, which held the GIL and capped cold reads at 0.4 GB/s (measured:
    6.7 ms vs 1.6 ms per 4 MiB block on tmpfs)."""
    if len(data) >= cache.disk_min_file_size:
        cache.set(key, io.BytesIO(data), read=True, tag=tag, retry=True)
    else:
        cache.set(key, data, tag=tag, retry=True)


class BlockStore:
    """Blocking calls (run them off the event loop)."""

    def __init__(self, directory: Path, size_limit: int) -> None:
        self.directory = directory
        self._cache = open_cache(directory, size_limit, sqlite_mmap_size=1 << 26)

    def get(self, key: str) -> bytes | None:
        return read_value(self._cache, key)

    def contains(self, key: str) -> bool:
        return key in self._cache

    def put(self, key: str, data: bytes, tag: str) -> None:
        write_value(self._cache, key, data, tag)

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
        """Remove block files that no index row points at (left by a crash mid-write) and that
        are older than ``min_age`` seconds (younger ones may be another worker's fill)."""
        now = time.time()
        known = {
            row[0]
            for row in self._cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL")
        }
        removed = 0
        for dirpath, _, files in os.walk(self.directory):
            for name in files:
                if not name.endswith(".val"):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.directory)
                if rel in known:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if now - os.stat(full).st_mtime > min_age:
                        os.unlink(full)
                        removed += 1
        return removed

    def close(self) -> None:
        self._cache.close()
