"""Control files under ``MOUNTPOINT/.unionstore/`` (not listed in the root, but always there):

``stats``
    read: the mount's statistics as JSON (S3 requests, cache hits, read amplification ...).
``invalidate``
    read: drop the metadata cache of the whole mount (the kernel's entries and attributes
    too) and get a JSON report;
    write: one path per line, relative to the mount root (``""`` or ``/`` = everything), drops
    the metadata of that sub-tree: ``echo datasets/v2 > MOUNT/.unionstore/invalidate``.
    Works on read-only mounts by reading.

Cached *data* never needs dropping: block keys carry the object's ETag, so a changed object is
fetched again as soon as its new metadata is seen.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from unionstore.fuse.inodes import Node
from unionstore.fuse.metadata import DIR, Stat

CONTROL_DIR = ".unionstore"
DIR_INODE = 2
FILES = {"stats": (3, 0o444), "invalidate": (4, 0o666)}

StatsFn = Callable[[], dict[str, Any]]
InvalidateFn = Callable[[str], Awaitable[int]]


class ControlFiles:
    def __init__(self, stats: StatsFn, invalidate: InvalidateFn) -> None:
        self._stats = stats
        self._invalidate = invalidate
        self.dir = Node(DIR_INODE, CONTROL_DIR, DIR, lookups=1, mode=0o555)
        self.files = {
            name: Node(ino, f"{CONTROL_DIR}/{name}", Stat(False), lookups=1, mode=mode)
            for name, (ino, mode) in FILES.items()
        }
        self._by_inode = {n.inode: n for n in [self.dir, *self.files.values()]}

    def get(self, inode: int) -> Node | None:
        return self._by_inode.get(inode)

    def lookup(self, name: str) -> Node | None:
        return self.files.get(name)

    def entries(self) -> list[tuple[str, Node]]:
        return sorted(self.files.items())

    async def open(self, node: Node, for_write: bool) -> bytes:
        """The bytes a reader of this open file sees (taken at open, like /proc)."""
        if node.name == "stats":
            return _json(self._stats())
        if node.name == "invalidate" and not for_write:
            dropped = await self._invalidate("")
            return _json({"invalidated": "/", "records_dropped": dropped})
        return b""

    async def write(self, node: Node, data: bytes) -> int:
        if node.name != "invalidate":
            raise PermissionError(node.name)
        text = data.decode("utf-8", errors="strict")
        for line in text.splitlines() or [""]:
            await self._invalidate(line.strip().strip("/"))
        return len(data)


def _json(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True, default=str) + "\n").encode()
