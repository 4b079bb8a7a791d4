"""The under-file-system seam: the small async interface every backend implements.

A UFS instance is rooted at the folder of its URI (``hdfs://nn:9000/data`` is rooted at
``/data``); every path passed to it is *relative* to that root, POSIX style, with no leading
slash, no empty, ``.`` or ``..`` components ("" is the root itself). The namespace validates keys
before they get here; drivers still refuse anything that would escape the root.

Contract (checked by ``tests/test_ufs_contract.py`` against every driver):

- ``stat`` returns a :class:`FileStatus` or raises :class:`unionstore.errors.NotFound`.
- ``list_dir`` yields the children of a directory **sorted by name in code-point order** (the
  same as UTF-8 byte order, which is S3's key order; a driver whose backend orders otherwise,
  like HDFS's signed bytes, re-orders while streaming), lazily: taking the first child of a
  directory of 100,000 entries must not fetch them all when the backend can page.
  Listing a file or a missing path raises ``NotFound``.
- ``read_range`` streams exactly ``length`` bytes from ``offset`` (fewer only at end of file) in
  chunks of bounded size.
- writers publish nothing until ``close``; ``abort`` leaves no file behind.
- backend errors are mapped to ``unionstore.errors`` in one table per driver.
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

from unionstore.errors import InvalidArgument, InvalidKey, NotImplementedOp


@dataclass(frozen=True, slots=True)
class FileStatus:
    """What a UFS knows about one path. ``mtime_ns`` is nanoseconds since the epoch (UTC)."""

    name: str
    is_dir: bool
    size: int
    mtime_ns: int
    owner: str = ""
    group: str = ""
    permission: int = 0o644
    checksum: str | None = None


class UfsWriter(ABC):
    """A file being written. Nothing is visible at the target until :meth:`close` returns."""

    @abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Flush and publish the file."""

    @abstractmethod
    async def abort(self) -> None:
        """Drop what was written; the target is left as it was."""


class UnderFileSystem(ABC):
    """One backend rooted at one folder. See the module docstring for the contract."""

    scheme: ClassVar[str]
    #: preferred size of one chunk yielded by read_range
    chunk_size: ClassVar[int] = 1 << 20

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @abstractmethod
    async def stat(self, path: str) -> FileStatus: ...

    @abstractmethod
    def list_dir(self, path: str) -> AsyncIterator[FileStatus]: ...

    @abstractmethod
    def read_range(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]: ...

    async def read_block(self, path: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` as one buffer (a block-cache fill). Drivers with a
        cheaper one-shot read override this."""
        buf = bytearray()
        async for chunk in self.read_range(path, offset, length):
            buf += chunk
        return bytes(buf)

    async def open_writer(self, path: str) -> UfsWriter:
        raise NotImplementedOp(f"{self.scheme} does not support writes")

    async def mkdir(self, path: str) -> None:
        """Create a directory and its parents; an existing directory is fine."""
        raise NotImplementedOp(f"{self.scheme} does not support mkdir")

    async def rename(self, src: str, dst: str) -> None:
        """Move a file, replacing ``dst`` if it exists."""
        raise NotImplementedOp(f"{self.scheme} does not support rename")

    async def delete(self, path: str, recursive: bool = False) -> None:
        """Remove a file or (with ``recursive``) a directory; a missing path raises NotFound."""
        raise NotImplementedOp(f"{self.scheme} does not support delete")

    async def close(self) -> None:  # noqa: B027 - optional, most drivers hold nothing
        """Release connections. The instance is not used afterwards."""


def check_relpath(path: str) -> str:
    """Return ``path`` if it is a safe relative path, else raise InvalidKey.

    Drivers call this before touching the backend, as a second line behind the namespace.
    """
    if path == "":
        return path
    if "\x00" in path or path.startswith("/") or path.endswith("/"):
        raise InvalidKey(f"invalid path {path!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKey(f"invalid path {path!r}")
    return path


#: writers' temp files start with this; listings hide them and keys may not use it
TMP_PREFIX = ".unionstore-tmp-"


def check_key(path: str) -> str:
    """``check_relpath`` plus: no component may look like one of the drivers' temp files."""
    check_relpath(path)
    if any(part.startswith(TMP_PREFIX) for part in path.split("/")):
        raise InvalidKey(f"invalid path {path!r}: reserved name", resource=path)
    return path


def check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise InvalidArgument(f"bad range offset={offset} length={length}")


def join(root: str, path: str) -> str:
    """Join a driver's absolute root and a checked relative path."""
    check_relpath(path)
    return posixpath.join(root, path) if path else root
