"""Where fetched blocks live on the node: a diskcache ``Cache`` (index in SQLite, large values as
files), bounded in bytes, least-recently-used evicted, shared by every mount daemon of the node
that points at the same folder, and kept across restarts.

Keys carry the object's version (ETag and size) and the block size, so a changed object can
never be served old bytes, and the two block sizes (sequential, random) never mix. Every block
is tagged with its object's id so all blocks of one object can be evicted together.

Values below ``SMALL_VALUE`` (a whole small file, the 8 KiB blocks of random readers) are
kept inline in SQLite; larger ones are files, each written with one ``write`` into one of
256 folders (``unionstore.cache.store.BlockDisk``, the gateway's recipe too). The limit is
where a file stops being cheaper: on ext4 creating a file costs 0.15-0.25 ms of CPU, more
than SQLite takes for a 100 KB value (measured per 100 KB block: 0.41 ms as a file, 0.21
ms inline; at 250 KB both 0.47 ms, and inline reads back slower).

All methods block; call them off the event loop (``contains`` is a single indexed SELECT
and may run on it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from unionstore.cache.store import BlockStore

SMALL_VALUE = 1 << 17  # diskcache keeps values below this inside SQLite, larger ones as files


class DiskBlocks(BlockStore):
    """The gateway's block store, with small values kept inline below ``SMALL_VALUE`` and a
    few calls the bridge needs on top: batches, sub-ranges, a count."""

    def __init__(self, directory: Path, size_limit: int) -> None:
        super().__init__(directory, size_limit, disk_min_file_size=SMALL_VALUE)
        # block files a crash left without an index row: never served, and not counted
        # against the size limit either, so they would pile up
        self.sweep_orphans()

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Several small blocks (None for each one not cached)."""
        return [self.read(k) for k in keys]

    def put_many(self, items: Iterable[tuple[str, bytes]], tag: str) -> None:
        """Store blocks of one object (see :meth:`put_tagged`)."""
        self.put_tagged((key, data, tag) for key, data in items)

    def put_tagged(self, items: Iterable[tuple[str, bytes, str]]) -> None:
        """Store ``(key, block, tag)`` items: large ones one by one (diskcache writes the file
        before its short index transaction), small ones (kept inline in SQLite) in one
        transaction."""
        small = []
        for key, data, tag in items:
            if len(data) >= SMALL_VALUE:
                self.put(key, data, tag)
            else:
                small.append((key, data, tag))
        if small:
            with self._cache.transact(retry=True):
                for key, data, tag in small:
                    self.put(key, data, tag)

    def __len__(self) -> int:
        return len(self._cache)
