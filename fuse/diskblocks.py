"""Where fetched blocks live on the node: a diskcache ``Cache`` (index in SQLite, large values as
files), bounded in bytes, least-recently-used evicted, shared by every mount daemon of the node
that points at the same folder, and kept across restarts.

Keys carry the object's version (ETag and size) and the block size, so a changed object can
never be served old bytes, and the two block sizes (sequential, random) never mix. Every block
is tagged with its object's id so all blocks of one object can be evicted together.

Values of ``SMALL_VALUE`` bytes and more are files. :class:`BlockDisk` writes each with one
``write`` (diskcache's own ``Disk`` iterates a ``BytesIO``, which splits random bytes into
~256-byte "lines": ~400 writes for a 100 KB block, 16,000 for a 4 MiB one) into one of 256
folders (diskcache's two levels make a new folder for almost every file of a young cache,
and ``mkdir`` cost more than the write). The index is the same, so folders written either
way are read alike.

All methods block; call them off the event loop (``contains`` is a single indexed SELECT
and may run on it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import diskcache

from unionstore.cache.store import open_cache, read_value

SMALL_VALUE = 1 << 15  # diskcache keeps values below this inside SQLite, larger ones as files


class BlockDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's ``Disk`` with bytes values written in one call, into 256 folders."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if type(value) is bytes and len(value) >= self.min_file_size:
            filename, full_path = self.filename(key, value)
            self._write(full_path, iter((value,)), "xb")
            return len(value), diskcache.core.MODE_BINARY, filename, None
        return super().store(value, read, key)

    def filename(self, key: Any = None, value: Any = None) -> tuple[str, str]:
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def _write(
        self, full_path: str, iterator: Iterator[Any], mode: str, encoding: str | None = None
    ) -> int:
        try:
            writer = open(full_path, mode, encoding=encoding)  # noqa: SIM115
        except FileNotFoundError:  # its folder is not made yet: diskcache's way
            return int(super()._write(full_path, iterator, mode, encoding))
        with writer:
            size = 0
            for chunk in iterator:
                size += len(chunk)
                writer.write(chunk)
            return size


class DiskBlocks:
    def __init__(self, directory: Path, size_limit: int) -> None:
        self.directory = directory
        self._cache = open_cache(
            directory, size_limit, disk=BlockDisk, disk_min_file_size=SMALL_VALUE
        )

    def get(self, key: str) -> bytes | None:
        return read_value(self._cache, key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Several small blocks, the hits in one transaction."""
        present = [k for k in keys if k in self._cache]
        if not present:
            return [None] * len(keys)
        with self._cache.transact(retry=True):
            found = {k: self._cache.get(k, default=None, retry=True) for k in present}
        return [v if isinstance(v := found.get(k), bytes) else None for k in keys]

    def get_range(self, key: str, lo: int, hi: int) -> bytes | None:
        """Bytes ``[lo, hi)`` of one block, reading only those from disk."""
        return read_value(self._cache, key, lo, hi)

    def contains(self, key: str) -> bool:
        return key in self._cache

    def put_many(self, items: Iterable[tuple[str, bytes]], tag: str) -> None:
        """Store blocks: large ones one by one (diskcache writes the file before its short
        index transaction), small ones (kept inline in SQLite) in one transaction."""
        small = []
        for key, data in items:
            if len(data) >= SMALL_VALUE:
                self._cache.set(key, data, tag=tag, retry=True)
            else:
                small.append((key, data))
        if small:
            with self._cache.transact(retry=True):
                for key, data in small:
                    self._cache.set(key, data, tag=tag, retry=True)

    def evict_file(self, file_id: str) -> int:
        return int(self._cache.evict(file_id, retry=True))

    def volume(self) -> int:
        return int(self._cache.volume())

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()
