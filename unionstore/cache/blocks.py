"""The block cache: serve byte ranges of a file version from fixed-size blocks on local disk,
filling missing blocks from a *fetcher* (never a backend) in parallel, each block once.

Design (after juicefs ``prefetch.go`` / ``singleflight.go`` and mountpoint-s3's prefetcher):

- A file version (:class:`FileVersion`: id + size/mtime/checksum) is split into blocks of
  ``block_size``; a block's key carries the version, so a changed file never mixes blocks.
- Per file version, a bitmap records the blocks known present; a table of in-flight futures
  (one per block key) merges concurrent misses: 16 readers of one cold file fetch each block
  once. Other worker processes are merged by the :class:`FillCoordinator` (leases).
- A read schedules fills ahead of the reader: the whole file for a full GET, the requested
  blocks for a ranged GET, plus a read-ahead window when ranged GETs of one file arrive
  sequentially. Then it streams block after block, each as soon as it lands, so the first
  byte comes after about one block, not after the whole file.
- Fills run under a global and a per-file limit. Scheduled-ahead fills are shed when the
  queue is full (the reader fills on demand instead); a demanded block is never shed.
- A failed fill fails no reader: the reader falls back to a direct range read of its block.
  In-flight marks are always cleared in ``finally``.
- Read amplification (bytes fetched / bytes served) is tracked per mount: near 1 for
  sequential reads, at most one block per small random read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from unionstore.cache.coordinator import FillCoordinator
from unionstore.cache.store import BlockStore, block_key

log = logging.getLogger("unionstore.cache")

Fetch = Callable[[int, int], Awaitable[bytes]]
#: blocks a reader has in hand at once: the one being sent and the next one being read
READ_PIPELINE = 2
#: blocks up to this size are read on the event loop, page cache or not (as nginx reads files
#: without aio): a thread hop costs more CPU than the read (measured on a 100 KB GET from a
#: dropped page cache: ~1.0 ms of gateway CPU in all, against ~1.25 ms through a thread)
INLINE_READ = 256 << 10
WRITER_THREADS = 2


@dataclass(frozen=True, slots=True)
class FileVersion:
    file_id: str  # stable name of the file: mount URI + path
    version: str  # size, mtime and checksum
    size: int
    mount: str  # metrics label


@dataclass(slots=True)
class CacheStats:
    """Counters of one mount (rendered by unionstore.metrics)."""

    hits: int = 0
    misses: int = 0
    ufs_bytes: int = 0
    served_bytes: int = 0
    fallbacks: int = 0
    fill_failures: int = 0
    evictions: int = 0
    shed: int = 0

    @property
    def read_amplification(self) -> float:
        return self.ufs_bytes / self.served_bytes if self.served_bytes else 0.0


@dataclass(slots=True)
class _FileState:
    nblocks: int
    present: bytearray
    sem: asyncio.Semaphore
    next_offset: int = -1  # where a sequential reader would continue
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class BlockCache:
    def __init__(
        self,
        store: BlockStore,
        coordinator: FillCoordinator,
        *,
        block_size: int = 4 << 20,
        fill_concurrency: int = 8,
        fill_per_file: int = 4,
        max_queued: int = 4096,
        readahead_blocks: int = 4,
        max_files: int = 10_000,
        memory_capacity: int = 64 << 20,
    ) -> None:
        self.store = store
        self.coordinator = coordinator
        self.block_size = block_size
        self.fill_per_file = fill_per_file
        self.max_queued = max_queued
        self.readahead_blocks = readahead_blocks
        self.max_files = max_files
        self._global = asyncio.Semaphore(fill_concurrency)
        self._pending = asyncio.Semaphore(2 * fill_concurrency)
        # few writers: parallel writes of many block files thrash a slow disk
        self._writer = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="block-writer")
        self._inflight: dict[str, asyncio.Future[bytes | None]] = {}
        self._files: OrderedDict[tuple[str, str, int], _FileState] = OrderedDict()
        self.queued = 0
        self.active = 0
        self.stats: dict[str, CacheStats] = {}
        # a small memory tier above the disk for small blocks (objects smaller than a block):
        # many small-object reads would otherwise each cost a store lookup and a file read
        self.memory_capacity = memory_capacity
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0

    def stats_for(self, mount: str) -> CacheStats:
        stats = self.stats.get(mount)
        if stats is None:
            stats = self.stats[mount] = CacheStats()
        return stats

    # -- public ----------------------------------------------------------------------------
    async def read(
        self, fv: FileVersion, fetch: Fetch, offset: int, length: int, *, whole: bool = False
    ) -> AsyncIterator[bytes]:
        """Yield ``length`` bytes of ``fv`` from ``offset``, block by block."""
        if length <= 0:
            return
        bs = self.block_size
        state = self._state(fv)
        first, last = offset // bs, (offset + length - 1) // bs
        ahead = last
        if not whole and offset == state.next_offset:
            ahead = min(state.nblocks - 1, last + self.readahead_blocks)
        state.next_offset = offset + length
        for i in range(first, ahead + 1):
            self._ensure(fv, state, i, fetch, demand=False)
        stats = self.stats_for(fv.mount)
        end = offset + length
        # the next block is read (from disk, or awaited from its fill) while this one is sent
        upcoming: deque[asyncio.Task[bytes]] = deque()
        nxt = first
        try:
            for i in range(first, last + 1):
                while nxt <= last and len(upcoming) < READ_PIPELINE:
                    upcoming.append(asyncio.ensure_future(self._block(fv, state, nxt, fetch)))
                    nxt += 1
                data = await upcoming.popleft()
                lo, hi = max(offset, i * bs) - i * bs, min(end, (i + 1) * bs) - i * bs
                stats.served_bytes += hi - lo
                yield data if lo == 0 and hi == len(data) else data[lo:hi]
        finally:
            for task in upcoming:
                task.cancel()

    async def warm(self, fv: FileVersion, fetch: Fetch) -> int:
        """Fill every block of ``fv``; returns the number of blocks now present."""
        state = self._state(fv)
        futures = [self._ensure(fv, state, i, fetch, demand=True) for i in range(state.nblocks)]
        await asyncio.gather(
            *(asyncio.shield(f) for f in futures if f is not None), return_exceptions=True
        )
        # readers got their data already; the blocks count as present once written to disk
        await asyncio.gather(
            *(asyncio.shield(t) for t in list(state.tasks)), return_exceptions=True
        )
        return sum(state.present)

    def forget(self, file_id_prefix: str, *, exact: bool = False) -> None:
        """Drop the in-memory state of files under ``file_id_prefix`` (after invalidation);
        with ``exact``, of that one file only."""
        for k in [
            k
            for k in self._files
            if k[0] == file_id_prefix or (not exact and k[0].startswith(file_id_prefix))
        ]:
            del self._files[k]
        prefix = file_id_prefix + "\x00" if exact else file_id_prefix
        for key in [k for k in self._memory if k.startswith(prefix)]:
            self._memory_bytes -= len(self._memory.pop(key))

    def blocks_of(self, size: int) -> int:
        return max(1, -(-size // self.block_size))

    def _remember(self, key: str, data: bytes) -> None:
        if len(data) > self.memory_capacity // 64 or key in self._memory:
            return
        self._memory[key] = data
        self._memory_bytes += len(data)
        while self._memory_bytes > self.memory_capacity:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= len(old)

    # -- internals -------------------------------------------------------------------------
    def _state(self, fv: FileVersion) -> _FileState:
        k = (fv.file_id, fv.version, self.block_size)
        state = self._files.get(k)
        if state is None:
            n = max(1, -(-fv.size // self.block_size))
            state = _FileState(n, bytearray(n), asyncio.Semaphore(self.fill_per_file))
            self._files[k] = state
            while len(self._files) > self.max_files:
                self._files.popitem(last=False)
        else:
            self._files.move_to_end(k)
        return state

    def _key(self, fv: FileVersion, i: int) -> str:
        return block_key(fv.file_id, fv.version, self.block_size, i)

    def _length(self, fv: FileVersion, i: int) -> int:
        return max(0, min(self.block_size, fv.size - i * self.block_size))

    def _ensure(
        self, fv: FileVersion, state: _FileState, i: int, fetch: Fetch, *, demand: bool
    ) -> asyncio.Future[bytes | None] | None:
        """The in-flight future of block ``i``, starting a fill if needed; None if the block
        is known present or (ahead of the reader only) the queue is full."""
        key = self._key(fv, i)
        fut = self._inflight.get(key)
        if fut is not None or state.present[i]:
            return fut
        if not demand and self.queued >= self.max_queued:
            self.stats_for(fv.mount).shed += 1
            return None
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        self.queued += 1
        task = asyncio.create_task(self._fill(fv, state, i, key, fetch, fut))
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)
        return fut

    async def _fill(
        self,
        fv: FileVersion,
        state: _FileState,
        i: int,
        key: str,
        fetch: Fetch,
        fut: asyncio.Future[bytes | None],
    ) -> None:
        """Fetch block ``i``, hand it to waiting readers at once, then write it to disk behind
        them (local disks here write slower than HDFS reads, so readers must not wait for the
        write). ``_pending`` bounds the blocks held in memory between fetch and write."""
        stats = self.stats_for(fv.mount)
        started = claimed = False
        try:
            async with self._pending:
                async with self._global, state.sem:
                    self.queued -= 1
                    self.active += 1
                    started = True
                    if await asyncio.to_thread(self.store.contains, key):
                        state.present[i] = 1
                        fut.set_result(None)
                        return
                    claimed = await self.coordinator.claim(key)
                    if (not claimed and await self.coordinator.wait(key, 60.0)) or (
                        claimed and await asyncio.to_thread(self.store.contains, key)
                    ):  # another process filled it (while we waited, or just before our claim)
                        state.present[i] = 1
                        fut.set_result(None)
                        return
                    want = self._length(fv, i)
                    data = await fetch(i * self.block_size, want)
                    stats.ufs_bytes += len(data)
                    if len(data) != want:
                        raise OSError(f"short read of block {i}: {len(data)} != {want}")
                fut.set_result(data)
                loop = asyncio.get_running_loop()
                write = loop.run_in_executor(self._writer, self.store.put, key, data, fv.file_id)
                try:
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    # shutting down: the write runs on in its thread, and the lease must
                    # outlive it, or another worker finds neither the block nor a lease and
                    # fetches the block again
                    await asyncio.wait([write])
                    raise
                state.present[i] = 1
        except BaseException as exc:
            stats.fill_failures += 1
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else OSError("fill cancelled"))
                fut.exception()  # mark retrieved: a waiter may not exist
            if not isinstance(exc, Exception):
                raise
            log.warning("fill of %s block %d failed: %s", fv.file_id, i, exc)
        finally:
            if claimed:
                await self.coordinator.done(key)
            if started:
                self.active -= 1
            else:
                self.queued -= 1
            if self._inflight.get(key) is fut:
                del self._inflight[key]

    async def _from_disk(self, key: str, length: int) -> bytes | None:
        if length <= INLINE_READ:
            return self.store.read(key)
        return await asyncio.to_thread(self.store.get, key)

    async def _block(self, fv: FileVersion, state: _FileState, i: int, fetch: Fetch) -> bytes:
        """Block ``i`` for a reader: from disk, from a fill in flight, or fetched directly."""
        stats = self.stats_for(fv.mount)
        key = self._key(fv, i)
        want = self._length(fv, i)
        data = self._memory.get(key)
        if data is not None:
            self._memory.move_to_end(key)
            stats.hits += 1
            return data
        if key not in self._inflight:
            data = await self._from_disk(key, want)
            if data is not None and len(data) == want:
                state.present[i] = 1
                stats.hits += 1
                self._remember(key, data)
                return data
            if state.present[i]:
                state.present[i] = 0  # evicted since we saw it
                stats.evictions += 1
        fut = self._ensure(fv, state, i, fetch, demand=True)
        data = None
        if fut is not None:
            with contextlib.suppress(Exception):
                data = await asyncio.shield(fut)
                if data is None:  # the fill found it on disk (a restart, another worker)
                    data = await self._from_disk(key, want)
                    if data is not None and len(data) == want:
                        stats.hits += 1
                        return data
        stats.misses += 1
        if data is None or len(data) != want:
            stats.fallbacks += 1
            data = await fetch(i * self.block_size, want)
            stats.ufs_bytes += len(data)
        return data
