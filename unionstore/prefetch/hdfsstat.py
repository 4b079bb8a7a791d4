"""Sizes and mtimes of HDFS paths, for the daemon's settle detection and size limits."""

from __future__ import annotations

from urllib.parse import urlsplit


class HdfsStat:
    """Sizes and mtimes from the NameNode (hdfs-native), for settling and size limits."""

    def __init__(self, url: str) -> None:
        from hdfs_native import AsyncClient

        config = {"dfs.client.failover.max.attempts": "0"} if urlsplit(url).port else {}
        self.client = AsyncClient(url, config or None)

    async def stat(self, path: str) -> tuple[int, int, bool] | None:
        """(size, mtime ms, is folder), or None if there is nothing at ``path``."""
        try:
            st = await self.client.get_file_info(path)
        except FileNotFoundError:
            return None
        return int(st.length), int(st.modification_time), bool(st.isdir)

    async def files(self, path: str) -> list[tuple[str, int]]:
        """(path, size) of ``path`` if it is a file, or of every file below it."""
        st = await self.stat(path)
        if st is None:
            return []
        if not st[2]:
            return [(path, st[0])]
        return [
            (f.path, int(f.length))
            async for f in self.client.list_status(path, recursive=True)
            if not f.isdir
        ]
