"""Where fetched blocks live on the node: the gateway's block store (a diskcache ``Cache``:
index in SQLite, small values inline, mid-sized ones appended to segment files, large ones a
file each), bounded in bytes, least-recently-used evicted, shared by every mount daemon of
the node that points at the same folder, and kept across restarts.

Keys carry the object's version (ETag and size) and the block size, so a changed object can
never be served old bytes, and the two block sizes (sequential, random) never mix. Every block
is tagged with its object's id so all blocks of one object can be evicted together.

The 8 KiB blocks of random readers are kept inline in SQLite; a whole small file (a cold
100 KB file is one block) is appended to a segment (``unionstore.cache.segments``: ~0.1 ms
of CPU per 100 KB block, against ~0.4 ms inline and 0.2-1 ms as a file of its own); the
4 MiB blocks of sequential readers are files.

All methods block; call them off the event loop (``contains`` is a single indexed SELECT
and may run on it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from unionstore.cache.store import BlockStore


class DiskBlocks(BlockStore):
    """The gateway's block store, with a few calls the bridge needs on top: batches, a
    count."""

    def __init__(self, directory: Path, size_limit: int) -> None:
        super().__init__(directory, size_limit)
        # block files a crash left without an index row: never served, and not counted
        # against the size limit either, so they would pile up
        self.sweep_orphans()

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Several small blocks (None for each one not cached)."""
        return [self.read(k) for k in keys]

    def put_many(self, items: Iterable[tuple[str, bytes]], tag: str) -> None:
        """Store blocks of one object (see :meth:`put_tagged`)."""
        self.put_tagged((key, data, tag) for key, data in items)

    def __len__(self) -> int:
        return len(self._cache)
