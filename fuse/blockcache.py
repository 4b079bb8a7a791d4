"""Reads: serve ``read(offset, size)`` of one object version from blocks, fetching missing
blocks with range GETs and keeping them in RAM (recent) and on disk (``DiskBlocks``).

Design (after juicefs ``prefetch.go`` and mountpoint-s3's prefetcher):

- Each open file handle has an :class:`AccessPattern`. Reads that continue one another
  (give or take the kernel's reordering of its own read-ahead) for ``SEQ_RUN`` bytes make a
  *sequential* reader; anything else is *random*. A handle's first read at offset 0 uses a
  large block too (whole-file readers start there: a small file is one GET), but gets no
  read-ahead until the run confirms the pattern.
- Sequential readers use large blocks (``block_size``, default 4 MiB) and get read-ahead:
  background GETs of the next blocks, a window as large as the run read so far (rounded
  down to a power of two blocks, up to ``readahead_blocks``), so a reader that stops early
  or jumps wastes little. Read-ahead is a bounded queue: it skips blocks present
  or in flight and is dropped when the queue is full; a demanded block is never dropped.
- Random readers get no read-ahead and small blocks (``small_block_size``, default 8 KiB),
  each missing run of them fetched with one GET: a 4 KiB read fetches one small block, a
  128 KiB read at most one small block more than it asked for. A large block already
  cached is used for random reads too (only the asked-for range is read from disk).
- Concurrent misses of one block are merged (one GET, every reader awaits it); blocks go to a
  small RAM LRU at once and to disk in the background, after the reply: one writer task
  lets them gather for ``WRITE_DELAY``, then stores everything fetched meanwhile, in one
  thread hop and one SQLite transaction per batch of up to ``WRITE_BATCH`` blocks (a stream
  of cold small files costs a transaction every 25 ms, not one each). Until written, a
  block is served from RAM (``_unwritten``). The writer's thread runs at a lower priority
  than the event loop while it keeps up (``WRITER_NICE_STEPS``), at the loop's once half its
  backlog limit waits for it; past the limit (``memory_bytes``, at least two large blocks),
  new GETs wait for it instead of piling up more in RAM.
- Read amplification = bytes fetched / bytes returned to the kernel, per pattern, reported by
  :meth:`BlockCache.statistics` (read-ahead counts as sequential).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from unionstore.cache.store import block_key
from unionstore.fuse.diskblocks import DiskBlocks
from unionstore.fuse.s3errors import S3Error

log = logging.getLogger("unionstore.fuse.cache")

Fetch = Callable[[int, int], Awaitable[bytes]]
# what a read returns: a range of a block in RAM is a view of it, not a copy (pyfuse3 replies
# from any buffer). A 1 MiB read of a cached 4 MiB block had copied 1 MiB: 8% of the
# daemon's CPU reading a file from its disk cache (``perf``)
Data = bytes | memoryview
T = TypeVar("T")
SEQ_AHEAD = 256 << 10  # a read this far past the last one still continues it
SEQ_BEHIND = 2 << 20  # the kernel's async read-ahead may arrive a little out of order
SEQ_RUN = 512 << 10  # bytes read in one run before a reader counts as sequential
WRITE_BATCH = 64  # blocks stored in one disk transaction
# the writer lets blocks gather this long before a batch smaller than WRITE_BATCH: at several
# hundred cold small files a second it had written one block per transaction, 0.25 ms of CPU
# each (the transaction's own pages dominate)
WRITE_DELAY = 0.025
# while it keeps up, the writer's thread runs this many nice steps below the event loop (at
# most 19). At the same priority, each time the loop released the GIL (every syscall) the
# waiting writer woke and the scheduler preempted the loop for it: 2-3 involuntary switches
# of the loop per cold file. Measured at 15 steps (-10 vs 5), 6 alternating rounds of 2,000
# cold 100 KB files: 4 readers 978 vs 852 files/s, 8 readers 940 vs 789 (medians), daemon
# CPU per file 0.74-0.96 vs 0.90-1.14 ms. Once behind (a cold 1 GiB read: 4 MiB blocks
# faster than it writes them) it gets the loop's priority back, or GETs would wait for a
# writer that other processes of a busy node starve.
WRITER_NICE_STEPS = 15
# threads reading blocks from the disk cache. A sequential reader's read-ahead loads its next
# 4 MiB blocks from disk in parallel: 1 GiB with the page cache dropped, alternating in one
# run (4 rounds, medians), 1 thread 608 MiB/s, 2 821, 4 895-901, 8 794. (Before hits took
# no lock, 8 threads had read 0.19 GB/s: each hit wrote its LRU time under SQLite's lock.)
DISK_READERS = 4


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    file_id: str  # endpoint/bucket/key
    version: str  # ETag and size
    size: int


class AccessPattern:
    """Sequential or random, per open file handle.

    A *run* is a series of reads each continuing the previous one (within a little
    reordering). A reader is sequential once its run covers ``SEQ_RUN`` bytes: random reads
    that happen to touch (the kernel splits one read around pages it already holds) never
    make a run that long. The first read of a handle at offset 0 is treated as sequential
    (whole-file readers start there; a small file is one GET), but gets no read-ahead until
    the run confirms it.
    """

    __slots__ = ("first", "last_end", "run_start", "window")

    def __init__(self) -> None:
        self.first = True
        self.last_end = 0
        self.run_start = 0
        self.window = 0

    def observe(self, offset: int, end: int, block_size: int, max_window: int) -> bool:
        """Record a read; True if it should use large blocks. ``window`` (blocks of
        read-ahead) grows with the run: about as much as was read in it, up to the limit."""
        first, self.first = self.first, False
        if not first and -SEQ_BEHIND <= offset - self.last_end <= SEQ_AHEAD:
            self.last_end = max(end, self.last_end)
        else:
            self.run_start, self.last_end = offset, end
        run = self.last_end - self.run_start
        self.window = min(max_window, 1 << (run // block_size).bit_length() >> 1)
        return run >= SEQ_RUN or (first and offset == 0)


class BlockCache:
    def __init__(
        self,
        disk: DiskBlocks,
        *,
        block_size: int = 4 << 20,
        small_block_size: int = 8 << 10,
        readahead_blocks: int = 8,
        fetch_concurrency: int = 8,
        memory_bytes: int = 64 << 20,
    ) -> None:
        self.disk = disk
        self.large = block_size
        self.small = small_block_size
        self.readahead_blocks = readahead_blocks
        self.memory_bytes = memory_bytes
        self._ra_sem = asyncio.Semaphore(fetch_concurrency)
        self._ra_keys: set[str] = set()  # read-ahead queued or running
        self._ra_limit = 4 * fetch_concurrency
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self._mem: OrderedDict[str, bytes] = OrderedDict()
        self._mem_used = 0
        self._unwritten: dict[str, bytes] = {}  # fetched, disk write pending
        self._unwritten_bytes = 0
        self._backlog_limit = max(memory_bytes, 2 * block_size)
        self._writer_caught_up = asyncio.Event()  # set while the backlog is under its limit
        self._writer_caught_up.set()
        self._queued: list[tuple[str, bytes, str]] = []  # (key, block, tag) for the writer
        self._writing: asyncio.Task[None] | None = None  # the writer task, while it runs
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts: Counter[str] = Counter()
        # DISK_READERS threads read blocks from disk, one writes them
        self._reader = ThreadPoolExecutor(DISK_READERS, "diskcache-read")
        self._writer = ThreadPoolExecutor(1, "diskcache-write")
        self._writer_priority = _WriterPriority()

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)

    async def _from_disk(self, key: str) -> bytes | None:
        """A block from disk. A miss is answered here (one indexed SELECT, ~5 us): only a hit
        goes to a reader thread, so a cold read never queues behind other readers' disk
        reads."""
        if not self.disk.contains(key):
            return None
        return await self._read(self.disk.get, key)

    # -- public ------------------------------------------------------------------------------
    async def read(
        self, obj: ObjectVersion, fetch: Fetch, offset: int, size: int, pattern: AccessPattern
    ) -> Data:
        end = min(offset + size, obj.size)
        if offset >= end:
            return b""
        started = time.perf_counter()
        seq = pattern.observe(offset, end, self.large, self.readahead_blocks)
        kind = "seq" if seq else "random"
        if seq:
            data = await self._read_large(obj, fetch, offset, end, pattern.window)
        else:
            data = await self._read_random(obj, fetch, offset, end)
        self.counts[f"app_bytes.{kind}"] += len(data)
        self.counts["read_us"] += int((time.perf_counter() - started) * 1e6)
        return data

    def prefetch(self, obj: ObjectVersion, fetch: Fetch) -> bool:
        """Fetch a small object (one large block) ahead of its reader, through the read-ahead
        queue: a directory read in order (``scan.py``). Only what is on no disk yet: a block
        read from disk gains little by being read early. False if the queue was full."""
        if not 0 < obj.size <= self.large or self.readahead_blocks <= 0:
            return True
        key = block_key(obj.file_id, obj.version, self.large, 0)
        if key in self._ra_keys or key in self._inflight or self._memory_get(key) is not None:
            return True
        if self.disk.contains(key):
            return True
        self.counts["prefetch.files"] += 1
        return self._readahead(obj, fetch, 0, skip_disk=True)

    def statistics(self) -> dict[str, object]:
        c = self.counts
        out: dict[str, object] = dict(sorted(c.items()))
        for kind in ("seq", "random", "all"):
            if kind == "all":
                fetched = c["fetched_bytes.seq"] + c["fetched_bytes.random"]
                app = c["app_bytes.seq"] + c["app_bytes.random"]
            else:
                fetched, app = c[f"fetched_bytes.{kind}"], c[f"app_bytes.{kind}"]
            out[f"read_amplification.{kind}"] = round(fetched / app, 4) if app else None
        out["memory_bytes"] = self._mem_used
        out["disk_bytes"] = self.disk.volume()
        out["inflight"] = len(self._inflight)
        out["unwritten_blocks"] = len(self._unwritten)
        out["unwritten_bytes"] = self._unwritten_bytes
        return out

    async def close(self) -> None:
        for task in list(self._tasks):
            if not task.done() and task.get_name().startswith("readahead"):
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._reader.shutdown(wait=True)
        self._writer.shutdown(wait=True)

    # -- sequential --------------------------------------------------------------------------
    async def _read_large(
        self, obj: ObjectVersion, fetch: Fetch, offset: int, end: int, window: int
    ) -> Data:
        bs = self.large
        first, last = offset // bs, (end - 1) // bs
        nblocks = (obj.size + bs - 1) // bs
        for i in range(last + 1, min(nblocks, last + 1 + window)):
            self._readahead(obj, fetch, i)
        blocks = await asyncio.gather(
            *(self._large_block(obj, fetch, i, "seq") for i in range(first, last + 1))
        )
        parts = [
            _view(blk, max(offset - i * bs, 0), min(end - i * bs, bs))
            for i, blk in enumerate(blocks, first)
        ]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _large_block(self, obj: ObjectVersion, fetch: Fetch, i: int, kind: str) -> bytes:
        key = block_key(obj.file_id, obj.version, self.large, i)
        data = self._memory_get(key)
        if data is not None:
            self.counts["hits.memory"] += 1
            return data
        running = self._inflight.get(key)
        if running is not None:
            self.counts["hits.inflight"] += 1
            return await asyncio.shield(running)
        data = await self._from_disk(key)
        if data is not None:
            self.counts["hits.disk"] += 1
            self._memory_put(key, data)
            return data
        data = self._memory_get(key)  # filled while we looked on disk?
        if data is not None:
            return data
        running = self._inflight.get(key)
        if running is None:
            running = self._start_fetch(obj, fetch, self.large, i, [key], kind)[0]
        return await asyncio.shield(running)

    def _readahead(
        self, obj: ObjectVersion, fetch: Fetch, i: int, *, skip_disk: bool = False
    ) -> bool:
        """Queue block ``i`` (``skip_disk``: the caller just found it on no disk); False if
        the queue is full."""
        key = block_key(obj.file_id, obj.version, self.large, i)
        if key in self._ra_keys or key in self._inflight or self._memory_get(key) is not None:
            return True
        if len(self._ra_keys) >= self._ra_limit:
            self.counts["readahead.dropped"] += 1
            return False
        self._ra_keys.add(key)
        self.counts["readahead.queued"] += 1

        async def run() -> None:
            try:
                async with self._ra_sem:
                    if key in self._inflight or self._memory_get(key) is not None:
                        return
                    if skip_disk:  # no file data from disk wanted, but a reader may have
                        # fetched and stored the block while this waited for its turn
                        if self.disk.contains(key):
                            return
                        data = None
                    else:
                        data = await self._from_disk(key)
                    if data is not None:  # cached on disk: bring it to RAM ahead of the reader
                        self.counts["readahead.from_disk"] += 1
                        self._memory_put(key, data)
                    elif key not in self._inflight and self._memory_get(key) is None:
                        fut = self._start_fetch(obj, fetch, self.large, i, [key], "seq")[0]
                        await fut
            except Exception as exc:  # the reader will fetch on demand
                log.debug("read-ahead of %s block %d failed: %s", obj.file_id, i, exc)
            finally:
                self._ra_keys.discard(key)

        self._spawn(run(), "readahead")
        return True

    # -- random ------------------------------------------------------------------------------
    async def _read_random(self, obj: ObjectVersion, fetch: Fetch, offset: int, end: int) -> Data:
        lb = offset // self.large
        if lb == (end - 1) // self.large:
            data = await self._from_large(obj, lb, offset, end)
            if data is not None:
                return data
        bs = self.small
        first, last = offset // bs, (end - 1) // bs
        keys = [block_key(obj.file_id, obj.version, bs, i) for i in range(first, last + 1)]
        found: list[bytes | None] = [self._memory_get(k) for k in keys]
        self.counts["hits.memory"] += sum(d is not None for d in found)
        ask = [n for n, d in enumerate(found) if d is None and keys[n] not in self._inflight]
        ask = [n for n in ask if self.disk.contains(keys[n])]  # a miss costs no thread hop
        if ask:
            on_disk = await self._read(self.disk.get_many, [keys[n] for n in ask])
            for n, d in zip(ask, on_disk, strict=True):
                if d is not None:
                    found[n] = d
                    self.counts["hits.disk"] += 1
                    self._memory_put(keys[n], d)
            found = [
                d if d is not None else self._memory_get(k)
                for d, k in zip(found, keys, strict=True)
            ]  # blocks that landed while we looked on disk
        waits: dict[int, asyncio.Future[bytes]] = {}
        n = 0
        while n < len(keys):  # one GET per run of missing blocks; join blocks in flight
            if found[n] is not None:
                n += 1
            elif keys[n] in self._inflight:
                waits[n] = self._inflight[keys[n]]
                self.counts["hits.inflight"] += 1
                n += 1
            else:
                stop = n
                while stop < len(keys) and found[stop] is None and keys[stop] not in self._inflight:
                    stop += 1
                futs = self._start_fetch(obj, fetch, bs, first + n, keys[n:stop], "random")
                waits.update(zip(range(n, stop), futs, strict=True))
                n = stop
        for m, fut in waits.items():
            found[m] = await asyncio.shield(fut)
        blob = b"".join(d or b"" for d in found)
        base = first * bs
        return _view(blob, offset - base, end - base)

    async def _from_large(self, obj: ObjectVersion, i: int, offset: int, end: int) -> Data | None:
        key = block_key(obj.file_id, obj.version, self.large, i)
        base = i * self.large
        data = self._memory_get(key)
        if data is not None:
            self.counts["hits.memory"] += 1
            return _view(data, offset - base, end - base)
        if key in self._inflight:
            self.counts["hits.inflight"] += 1
            data = await asyncio.shield(self._inflight[key])
            return _view(data, offset - base, end - base)
        if not self.disk.contains(key):
            return None
        part = await self._read(self.disk.read, key, offset - base, end - base)
        if part is not None:
            self.counts["hits.disk"] += 1
        return part

    # -- fetching ----------------------------------------------------------------------------
    def _start_fetch(
        self, obj: ObjectVersion, fetch: Fetch, bs: int, first: int, keys: list[str], kind: str
    ) -> list[asyncio.Future[bytes]]:
        """Start one GET for blocks ``first ..`` (size ``bs``) of ``keys``; each key is in
        flight (its future registered) from now until its bytes are in RAM."""
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[bytes]] = [loop.create_future() for _ in keys]
        self._inflight.update(zip(keys, futs, strict=True))
        self._spawn(self._run_fetch(obj, fetch, bs, first, keys, futs, kind), "fetch")
        return futs

    async def _run_fetch(
        self,
        obj: ObjectVersion,
        fetch: Fetch,
        bs: int,
        first: int,
        keys: list[str],
        futs: list[asyncio.Future[bytes]],
        kind: str,
    ) -> None:
        start = first * bs
        length = min(obj.size, (first + len(keys)) * bs) - start
        try:
            if not self._writer_caught_up.is_set():  # the disk writer is far behind
                self.counts["writer_waits"] += 1
                await self._writer_caught_up.wait()
            started = time.perf_counter()
            data = await fetch(start, length)
            self.counts["fetch_us"] += int((time.perf_counter() - started) * 1e6)
            if len(data) != length:
                raise S3Error(errno.EIO, f"short read of {obj.file_id}: {len(data)} < {length}")
            self.counts[f"fetched_bytes.{kind}"] += length
            self.counts[f"gets.{kind}"] += 1
            for n, (k, fut) in enumerate(zip(keys, futs, strict=True)):
                blk = data[n * bs : (n + 1) * bs]
                self._memory_put(k, blk)
                self._set_unwritten(k, blk)
                self._queued.append((k, blk, obj.file_id))
                fut.set_result(blk)
            if self._writing is None:
                self._writing = self._spawn(self._write_queued(), "write")
        except BaseException as exc:
            for fut in futs:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved; waiters still get it
            if not isinstance(exc, Exception):
                raise
        finally:
            for k, fut in zip(keys, futs, strict=True):
                if self._inflight.get(k) is fut:
                    del self._inflight[k]

    async def _write_queued(self) -> None:
        """Store queued blocks, a batch at a time, until none are left."""
        loop = asyncio.get_running_loop()
        try:
            while self._queued:
                if len(self._queued) < WRITE_BATCH:
                    await asyncio.sleep(WRITE_DELAY)
                batch = self._queued[:WRITE_BATCH]
                del self._queued[:WRITE_BATCH]
                try:
                    behind = self._unwritten_bytes > self._backlog_limit // 2
                    await loop.run_in_executor(self._writer, self._store, batch, behind)
                    self.counts["disk.batches"] += 1
                    self.counts["disk.blocks"] += len(batch)
                except Exception as exc:  # not cached: fetched again when next read
                    log.warning("cannot store %d blocks: %s", len(batch), exc)
                finally:
                    for k, _, _ in batch:
                        self._set_unwritten(k, None)
        finally:
            self._writing = None

    def _store(self, batch: list[tuple[str, bytes, str]], behind: bool) -> None:
        """In the writer's thread."""
        self._writer_priority.set(behind)
        self.disk.put_tagged(batch)

    def _set_unwritten(self, key: str, data: bytes | None) -> None:
        """Hold ``data`` until it is on disk (None: it is, or will not be)."""
        old = self._unwritten.pop(key, None)
        if old is not None:
            self._unwritten_bytes -= len(old)
        if data is not None:
            self._unwritten[key] = data
            self._unwritten_bytes += len(data)
        if self._unwritten_bytes > self._backlog_limit:
            self._writer_caught_up.clear()
        else:
            self._writer_caught_up.set()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- RAM ---------------------------------------------------------------------------------
    def _memory_get(self, key: str) -> bytes | None:
        """A block in RAM: recently used, or fetched and not yet on disk."""
        data = self._mem.get(key)
        if data is not None:
            self._mem.move_to_end(key)
            return data
        return self._unwritten.get(key)

    def _memory_put(self, key: str, data: bytes) -> None:
        with contextlib.suppress(KeyError):
            self._mem_used -= len(self._mem.pop(key))
        self._mem[key] = data
        self._mem_used += len(data)
        while self._mem_used > self.memory_bytes and len(self._mem) > 1:
            _, old = self._mem.popitem(last=False)
            self._mem_used -= len(old)


def _view(data: bytes, lo: int, hi: int) -> Data:
    """``data[lo:hi]`` without copying (all of ``data`` as it is)."""
    if lo <= 0 and hi >= len(data):
        return data
    return memoryview(data)[lo:hi]


class _WriterPriority:
    """The disk writer thread's nice value: ``WRITER_NICE_STEPS`` above the loop's (the
    thread that made this), or the loop's own while the writer is behind. Going back up
    needs CAP_SYS_NICE (as raising the daemon's did); without it the writer stays low."""

    def __init__(self) -> None:
        self.loop = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        self.low = min(19, self.loop + WRITER_NICE_STEPS)
        self.current: int | None = None  # the writer's, once set
        self.can_raise = True

    def set(self, behind: bool) -> None:
        """Called in the writer's thread."""
        want = self.loop if behind else self.low
        if want == self.current or (behind and not self.can_raise):
            return
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), want)
            self.current = want
        except OSError as exc:  # EPERM: no CAP_SYS_NICE to raise it again
            self.can_raise = False
            log.info("the disk writer keeps nice %s (%s)", self.current, exc)
