"""Where fetched blocks live on the node: a diskcache ``Cache`` (index in SQLite, large values as
files), bounded in bytes, least-recently-used evicted, shared by every mount daemon of the node
that points at the same folder, and kept across restarts.

Keys carry the object's version (ETag and size) and the block size, so a changed object can
never be served old bytes, and the two block sizes (sequential, random) never mix. Every block
is tagged with its object's id so all blocks of one object can be evicted together.

All methods block; call them off the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import diskcache


def block_key(file_id: str, version: str, block_size: int, index: int) -> str:
    return f"{file_id}\x00{version}\x00{block_size}\x00{index}"


class DiskBlocks:
    def __init__(self, directory: Path, size_limit: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._cache = diskcache.Cache(
            str(directory),
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            tag_index=True,
            cull_limit=16,
            statistics=False,
        )

    def get(self, key: str) -> bytes | None:
        value = self._cache.get(key, default=None, retry=True)
        return value if isinstance(value, bytes) else None

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Several small blocks in one transaction."""
        with self._cache.transact(retry=True):
            return [self.get(k) for k in keys]

    def get_range(self, key: str, lo: int, hi: int) -> bytes | None:
        """Bytes ``[lo, hi)`` of one block, reading only those from disk."""
        value: Any = self._cache.get(key, default=None, read=True, retry=True)
        if value is None:
            return None
        if isinstance(value, bytes):
            return value[lo:hi]
        with value:
            value.seek(lo)
            data: bytes = value.read(hi - lo)
            return data

    def contains(self, key: str) -> bool:
        return key in self._cache

    def contains_many(self, keys: Sequence[str]) -> list[bool]:
        return [k in self._cache for k in keys]

    def put_many(self, items: Iterable[tuple[str, bytes]], tag: str) -> None:
        with self._cache.transact(retry=True):
            for key, data in items:
                self._cache.set(key, data, tag=tag, retry=True)

    def evict_file(self, file_id: str) -> int:
        return int(self._cache.evict(file_id, retry=True))

    def volume(self) -> int:
        return int(self._cache.volume())

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()
