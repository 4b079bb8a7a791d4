"""The inode table: which inode number stands for which path of the mount, and how many
references the kernel holds to it.

A path keeps its inode while the kernel knows it (lookup count > 0) or a file handle is open;
after the last ``forget`` and ``release`` the inode is dropped, and a later lookup of the same
path gets a new number. A path that changes kind (a file replaced by a directory) gets a new
inode too. Unlinked or renamed-over nodes are *detached*: they keep working for open handles
but no path leads to them.

Reserved numbers: 1 is the root, 2..15 are the control files (see ``control.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from unionstore.fuse.metadata import Stat

ROOT_INODE = 1
FIRST_FREE_INODE = 16


@dataclass(slots=True, eq=False)
class Node:
    inode: int
    path: str  # relative to the mount root, "" for the root, no leading/trailing "/"
    stat: Stat
    lookups: int = 0
    opens: int = 0
    detached: bool = False
    #: object version whose bytes the kernel may still hold in its page cache
    page_cache_version: str | None = None
    mode: int = 0  # permission bits; 0: from the mount's umask

    @property
    def is_dir(self) -> bool:
        return self.stat.is_dir

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def parent_path(self) -> str:
        return self.path.rpartition("/")[0]


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def is_under(path: str, subtree: str) -> bool:
    """True if ``path`` is ``subtree`` or below it ("" is the whole mount)."""
    return not subtree or path == subtree or path.startswith(subtree + "/")


class InodeTable:
    def __init__(self, root_stat: Stat) -> None:
        self._next = FIRST_FREE_INODE
        self.root = Node(ROOT_INODE, "", root_stat, lookups=1)
        self._by_inode: dict[int, Node] = {ROOT_INODE: self.root}
        self._by_path: dict[str, Node] = {"": self.root}

    def __len__(self) -> int:
        return len(self._by_inode)

    def get(self, inode: int) -> Node:
        """The node of ``inode``; KeyError if the kernel names one we never gave out."""
        return self._by_inode[inode]

    def by_path(self, path: str) -> Node | None:
        return self._by_path.get(path)

    def remember(self, path: str, stat: Stat) -> Node:
        """The node for ``path`` (created if needed), with ``stat`` as its latest attributes."""
        node = self._by_path.get(path)
        if node is not None and node.stat.is_dir == stat.is_dir:
            node.stat = stat
            return node
        if node is not None:
            self._detach(node)
        node = Node(self._next, path, stat)
        self._next += 1
        self._by_inode[node.inode] = node
        self._by_path[path] = node
        return node

    def forget(self, inode: int, count: int) -> None:
        node = self._by_inode.get(inode)
        if node is None or node is self.root:
            return
        node.lookups = max(0, node.lookups - count)
        self._maybe_drop(node)

    def opened(self, node: Node) -> None:
        node.opens += 1

    def closed(self, node: Node) -> None:
        node.opens = max(0, node.opens - 1)
        self._maybe_drop(node)

    def detach(self, path: str) -> Node | None:
        """The path is gone (unlink, rmdir, renamed over): its node lives on only for open
        handles and kernel references."""
        node = self._by_path.get(path)
        if node is not None and node is not self.root:
            self._detach(node)
            self._maybe_drop(node)
        return node

    def rename(self, old: str, new: str) -> Node | None:
        """Move a file's node to a new path (whatever was at ``new`` is detached first)."""
        self.detach(new)
        node = self._by_path.pop(old, None)
        if node is None:
            return None
        node.path = new
        self._by_path[new] = node
        return node

    def under(self, subtree: str) -> Iterator[Node]:
        """Every attached node at or below ``subtree``."""
        for path, node in list(self._by_path.items()):
            if is_under(path, subtree):
                yield node

    def _detach(self, node: Node) -> None:
        if self._by_path.get(node.path) is node:
            del self._by_path[node.path]
        node.detached = True

    def _maybe_drop(self, node: Node) -> None:
        if node.lookups > 0 or node.opens > 0 or node is self.root:
            return
        self._by_inode.pop(node.inode, None)
        if self._by_path.get(node.path) is node:
            del self._by_path[node.path]
