"""Metadata cache: stat results and negative lookups per mount, with a TTL, bounded, LRU.

:class:`MetadataCachingUfs` wraps a mount's UFS (a wrapper, not a flag): ``stat`` is answered
from :class:`TtlCache` while fresh; a miss (or ``fresh=True``) asks the UFS. When the UFS is
unreachable (:class:`~unionstore.errors.ServiceUnavailable`), an expired entry younger than
``stale_if_error`` is served instead and counted; with nothing cached the request fails fast
with the 503. Writes through the wrapper drop what they touch at once, so a client reads its
own writes; :meth:`MetadataCachingUfs.invalidate` drops a path or a whole sub-tree.

A listing fills the cache too (:meth:`MetadataCachingUfs.remember`, called by the gateway for
each listing page it reads from the UFS): a directory listed and then read file by file, as
data loaders do, costs the origin one LIST instead of one stat per file. An answer is only
kept if nothing was invalidated since it was asked for (:attr:`~MetadataCachingUfs.changed_at`),
so a stat or listing that raced with a write cannot put the old status back.

Listing pages are cached one level up, by the lister (they are per bucket, not per mount).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from unionstore.errors import NotFound, ServiceUnavailable
from unionstore.ufs.base import FileStatus, UfsWriter, UnderFileSystem

K = TypeVar("K")
V = TypeVar("V")

Clock = Callable[[], float]


@dataclass(slots=True)
class _Item(Generic[V]):
    value: V
    stored: float


class TtlCache(Generic[K, V]):
    """An LRU map whose entries are fresh for ``ttl`` seconds and kept (stale) up to
    ``ttl + stale_if_error`` seconds for use when the source is down."""

    def __init__(
        self,
        ttl: float,
        max_entries: int = 100_000,
        stale_if_error: float = 3600.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.stale_if_error = stale_if_error
        self.clock = clock
        self._items: OrderedDict[K, _Item[V]] = OrderedDict()
        self.hits = self.misses = self.evictions = self.stale_serves = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> tuple[V, bool] | None:
        """(value, fresh) if present and not past the stale bound."""
        item = self._items.get(key)
        if item is None:
            return None
        age = self.clock() - item.stored
        if age > self.ttl + self.stale_if_error:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item.value, age <= self.ttl

    def put(self, key: K, value: V, stored: float | None = None) -> None:
        """Keep ``value``, fresh for ``ttl`` from ``stored`` (when it was read; default now),
        unless the entry there was read later."""
        if self.ttl <= 0 and self.stale_if_error <= 0:
            return
        if stored is None:
            stored = self.clock()
        else:
            there = self._items.get(key)
            if there is not None and there.stored > stored:
                return
        self._items[key] = _Item(value, stored)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
            self.evictions += 1

    def drop(self, key: K) -> None:
        self._items.pop(key, None)

    def drop_where(self, predicate: Callable[[K], bool]) -> int:
        doomed = [k for k in self._items if predicate(k)]
        for k in doomed:
            del self._items[k]
        return len(doomed)

    def clear(self) -> None:
        self._items.clear()


# A cached stat: the status, or None for "does not exist" (a negative entry).
StatResult = FileStatus | None


class MetadataCachingUfs(UnderFileSystem):
    """A UFS whose ``stat`` goes through a :class:`TtlCache`. Everything else passes through;
    writes invalidate the paths they touch."""

    def __init__(self, inner: UnderFileSystem, cache: TtlCache[str, StatResult]) -> None:
        super().__init__(inner.uri)
        self.inner = inner
        self.cache = cache
        self.scheme = inner.scheme  # type: ignore[misc]
        self.chunk_size = inner.chunk_size  # type: ignore[misc]
        #: the cache clock's time of the latest invalidation: answers asked before it are stale
        self.changed_at = -math.inf

    async def stat(self, path: str, *, fresh: bool = False) -> FileStatus:
        hit = None if fresh else self.cache.get(path)
        if hit is not None and hit[1]:
            self.cache.hits += 1
            return _result(hit[0], path)
        self.cache.misses += 1
        asked = self.cache.clock()
        try:
            status: StatResult = await self.inner.stat(path)
        except NotFound:
            status = None
        except ServiceUnavailable:
            stale = hit if hit is not None else self.cache.get(path)
            if stale is None:
                raise
            self.cache.stale_serves += 1
            return _result(stale[0], path)
        if self.changed_at < asked:
            self.cache.put(path, status, asked)
        return _result(status, path)

    def remember(self, statuses: Iterable[tuple[str, FileStatus]], listed_at: float) -> bool:
        """Keep the (path, status) pairs of a listing that began at ``listed_at`` (cache
        clock), unless something was invalidated since or they are no longer fresh."""
        if self.changed_at >= listed_at or listed_at + self.cache.ttl <= self.cache.clock():
            return False
        for path, status in statuses:
            self.cache.put(path, status, listed_at)
        return True

    def list_dir(self, path: str) -> AsyncIterator[FileStatus]:
        return self.inner.list_dir(path)

    def read_range(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        return self.inner.read_range(path, offset, length)

    async def read_block(self, path: str, offset: int, length: int) -> bytes:
        return await self.inner.read_block(path, offset, length)

    def invalidate(self, path: str = "", *, recursive: bool = True) -> int:
        """Drop ``path`` (and, with ``recursive``, everything under it; "" = all)."""
        self.changed_at = self.cache.clock()
        if path == "":
            n = len(self.cache)
            self.cache.clear()
            return n
        self.cache.drop(path)
        if not recursive:
            return 1
        below = path + "/"
        return 1 + self.cache.drop_where(lambda k: k.startswith(below))

    def invalidate_prefix(self, prefix: str) -> int:
        """Drop every path that starts with ``prefix`` (a string prefix, as S3 keys are)."""
        self.changed_at = self.cache.clock()
        return self.cache.drop_where(lambda k: k.startswith(prefix))

    def _touched(self, path: str) -> None:
        self.changed_at = self.cache.clock()
        self.cache.drop(path)
        parent = path.rpartition("/")[0]
        self.cache.drop(parent)

    async def open_writer(self, path: str) -> UfsWriter:
        return _InvalidatingWriter(await self.inner.open_writer(path), self, path)

    async def mkdir(self, path: str) -> None:
        await self.inner.mkdir(path)
        self._touched(path)

    async def rename(self, src: str, dst: str) -> None:
        try:
            await self.inner.rename(src, dst)
        finally:
            self.invalidate(src)
            self.invalidate(dst)

    async def delete(self, path: str, recursive: bool = False) -> None:
        try:
            await self.inner.delete(path, recursive)
        finally:
            self.invalidate(path, recursive=True)

    async def close(self) -> None:
        await self.inner.close()


class _InvalidatingWriter(UfsWriter):
    def __init__(self, inner: UfsWriter, ufs: MetadataCachingUfs, path: str) -> None:
        self.inner, self.ufs, self.path = inner, ufs, path

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def close(self) -> None:
        try:
            await self.inner.close()
        finally:
            self.ufs._touched(self.path)

    async def abort(self) -> None:
        await self.inner.abort()


def _result(status: StatResult, path: str) -> FileStatus:
    if status is None:
        raise NotFound(resource=path)
    return status
