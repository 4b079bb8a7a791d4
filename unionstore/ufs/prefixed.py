"""A UFS seen through one of its sub-folders (like juicefs ``prefix.go``): a wrapper, not a flag.

The bucket root uses it: bucket ``b`` under ``bucket_root = hdfs://nn/buckets`` is the
sub-folder ``b`` of the one root driver, so all buckets share one connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from unionstore.ufs.base import FileStatus, UfsWriter, UnderFileSystem, check_relpath


class PrefixedUfs(UnderFileSystem):
    def __init__(self, inner: UnderFileSystem, subdir: str) -> None:
        super().__init__(f"{inner.uri.rstrip('/')}/{subdir}")
        self.inner = inner
        self.subdir = check_relpath(subdir)
        self.scheme = inner.scheme  # type: ignore[misc]
        self.chunk_size = inner.chunk_size  # type: ignore[misc]

    def _p(self, path: str) -> str:
        check_relpath(path)
        return f"{self.subdir}/{path}" if path else self.subdir

    async def stat(self, path: str) -> FileStatus:
        return await self.inner.stat(self._p(path))

    def list_dir(self, path: str) -> AsyncIterator[FileStatus]:
        return self.inner.list_dir(self._p(path))

    def read_range(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        return self.inner.read_range(self._p(path), offset, length)

    async def read_block(self, path: str, offset: int, length: int) -> bytes:
        return await self.inner.read_block(self._p(path), offset, length)

    async def open_writer(self, path: str) -> UfsWriter:
        return await self.inner.open_writer(self._p(path))

    async def mkdir(self, path: str) -> None:
        await self.inner.mkdir(self._p(path))

    async def rename(self, src: str, dst: str) -> None:
        await self.inner.rename(self._p(src), self._p(dst))

    async def delete(self, path: str, recursive: bool = False) -> None:
        await self.inner.delete(self._p(path), recursive)

    async def close(self) -> None:
        """The inner driver is shared; its owner closes it."""
