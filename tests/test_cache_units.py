"""The caches in-process, over the real local driver and a real diskcache store.

Fetchers are plain callables that read the real file and record what they were asked for; a
fault-injecting fetcher wraps that real read (failures no real disk produces on demand)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.pagecache import drop_from_page_cache
from unionstore.cache.blocks import BlockCache, FileVersion
from unionstore.cache.coordinator import EmbeddedCoordinator
from unionstore.cache.metadata import MetadataCachingUfs, TtlCache
from unionstore.cache.store import BlockStore, open_cache
from unionstore.errors import NotFound, ServiceUnavailable
from unionstore.ufs.base import FileStatus, UnderFileSystem
from unionstore.ufs.local import LocalUfs

BS = 64 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- metadata cache ----------------------------------------------------------------------------
def test_ttl_cache_fresh_stale_expired_and_lru() -> None:
    clock = FakeClock()
    cache: TtlCache[str, int] = TtlCache(ttl=10, max_entries=2, stale_if_error=100, clock=clock)
    cache.put("a", 1)
    assert cache.get("a") == (1, True)
    clock.now += 11
    assert cache.get("a") == (1, False)  # stale, still there for stale-if-error
    clock.now += 100
    assert cache.get("a") is None
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")  # a is now the most recently used
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.evictions == 1


class FlakyUfs(UnderFileSystem):
    """Wraps the real local driver; counts stats and can be switched 'unreachable'."""

    scheme = "flaky"

    def __init__(self, inner: UnderFileSystem) -> None:
        super().__init__(inner.uri)
        self.inner = inner
        self.stats = 0
        self.down = False

    async def stat(self, path: str) -> FileStatus:
        self.stats += 1
        if self.down:
            raise ServiceUnavailable("namenode down")
        return await self.inner.stat(path)

    def list_dir(self, path: str) -> AsyncIterator[FileStatus]:
        return self.inner.list_dir(path)

    def read_range(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        return self.inner.read_range(path, offset, length)


async def test_metadata_cache_ttl_negative_invalidate_and_stale_if_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    clock = FakeClock()
    flaky = FlakyUfs(LocalUfs(tmp_path.as_uri(), {}))
    ufs = MetadataCachingUfs(flaky, TtlCache(ttl=60, stale_if_error=600, clock=clock))
    assert (await ufs.stat("f")).size == 5
    assert (await ufs.stat("f")).size == 5
    assert flaky.stats == 1  # second stat from the cache
    for _ in range(2):
        with pytest.raises(NotFound):
            await ufs.stat("missing")
    assert flaky.stats == 2  # negative lookups are cached too
    (tmp_path / "f").write_bytes(b"1234567")
    assert (await ufs.stat("f")).size == 5  # within the TTL
    ufs.invalidate("f")
    clock.now += 1  # an answer asked for at the instant of an invalidation is not kept
    assert (await ufs.stat("f")).size == 7
    clock.now += 61
    flaky.down = True
    assert (await ufs.stat("f")).size == 7  # expired, but the UFS is down: stale-if-error
    assert ufs.cache.stale_serves == 1
    with pytest.raises(ServiceUnavailable):
        await ufs.stat("never-seen")  # nothing cached: fail fast with 503
    clock.now += 601
    with pytest.raises(ServiceUnavailable):
        await ufs.stat("f")  # past the stale bound


async def test_writes_through_the_wrapper_invalidate(tmp_path: Path) -> None:
    ufs = MetadataCachingUfs(LocalUfs(tmp_path.as_uri(), {}), TtlCache(ttl=3600))
    with pytest.raises(NotFound):
        await ufs.stat("new")
    writer = await ufs.open_writer("new")
    await writer.write(b"abc")
    await writer.close()
    assert (await ufs.stat("new")).size == 3  # read-your-writes despite the negative entry
    await ufs.delete("new")
    with pytest.raises(NotFound):
        await ufs.stat("new")


async def test_a_listing_fills_the_metadata_cache_unless_it_is_stale(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(b"12345")
    clock = FakeClock()
    flaky = FlakyUfs(LocalUfs(tmp_path.as_uri(), {}))
    ufs = MetadataCachingUfs(flaky, TtlCache(ttl=60, clock=clock))
    listed_at = clock()
    statuses = [(st.name, st) async for st in ufs.list_dir("")]
    clock.now += 1
    assert ufs.remember(statuses, listed_at)
    assert [(await ufs.stat(n)).size for n in ("a", "b")] == [5, 5]
    assert flaky.stats == 0  # both answered by the listing
    clock.now += 59.5
    await ufs.stat("a")
    assert flaky.stats == 1  # fresh for the TTL from the listing, not from remember()
    # an answer read after the listing began is newer than the listing's: it stays
    listed_at = clock()
    clock.now += 1
    (tmp_path / "a").write_bytes(b"1234567")
    assert (await ufs.stat("a", fresh=True)).size == 7
    assert ufs.remember(statuses, listed_at)
    assert (await ufs.stat("a")).size == 7 and (await ufs.stat("b")).size == 5
    # a listing that began before an invalidation is not kept, nor one older than the TTL
    listed_at = clock()
    clock.now += 1
    ufs.invalidate("elsewhere")
    assert not ufs.remember(statuses, listed_at)
    clock.now += 1
    assert not ufs.remember(statuses, clock() - 60)


async def test_a_stat_that_raced_with_an_invalidation_is_not_kept(tmp_path: Path) -> None:
    """The UFS answers the old status, the file is rewritten and invalidated meanwhile: the
    answer is returned but not cached, so the next stat asks again."""
    (tmp_path / "f").write_bytes(b"old")
    clock = FakeClock()

    class Racing(FlakyUfs):
        async def stat(self, path: str) -> FileStatus:
            status = await super().stat(path)
            clock.now += 1
            ufs.invalidate(path)  # a write through the gateway published meanwhile
            return status

    racing = Racing(LocalUfs(tmp_path.as_uri(), {}))
    ufs = MetadataCachingUfs(racing, TtlCache(ttl=60, clock=clock))
    await ufs.stat("f")
    clock.now += 1
    await ufs.stat("f")
    assert racing.stats == 2


# ---- block cache -------------------------------------------------------------------------------
class Source:
    """The real file as a fetcher, recording every fetch; optional failure injection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls: list[tuple[int, int]] = []
        self.fail_at: dict[int, int] = {}  # offset -> how many more fetches of it fail
        self.gates: dict[int, asyncio.Event] = {}

    async def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        gate = self.gates.get(offset)
        if gate is not None:
            await gate.wait()
        await asyncio.sleep(0)
        if self.fail_at.get(offset, 0) > 0:
            self.fail_at[offset] -= 1
            raise OSError("injected datanode failure")
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    @property
    def fetched(self) -> int:
        return sum(n for _, n in self.calls)


def make_file(tmp_path: Path, size: int, seed: int = 1) -> tuple[Path, bytes]:
    data = os.urandom(size) if seed else bytes(size)
    path = tmp_path / f"src-{size}-{seed}"
    path.write_bytes(data)
    return path, data


def version(path: Path, data: bytes, tag: str = "v1") -> FileVersion:
    return FileVersion(str(path), f"{len(data)}:{tag}", len(data), "test/")


def block_cache(tmp_path: Path, **kw: int) -> BlockCache:
    store = BlockStore(tmp_path / "blocks", 1 << 30)
    return BlockCache(store, EmbeddedCoordinator(store), block_size=BS, **kw)


async def settle(bc: BlockCache) -> None:
    """Wait for the fills running in the background (they finish after their readers)."""
    await asyncio.gather(*(t for s in bc._files.values() for t in list(s.tasks)))


async def read_all(
    bc: BlockCache, fv: FileVersion, src: Source, off: int, n: int, whole: bool = False
) -> bytes:
    return b"".join([c async for c in bc.read(fv, src, off, n, whole=whole)])


async def test_concurrent_cold_readers_fetch_each_block_once(tmp_path: Path) -> None:
    path, data = make_file(tmp_path, 20 * BS + 123)
    src, bc = Source(path), block_cache(tmp_path)
    fv = version(path, data)
    results = await asyncio.gather(
        *(read_all(bc, fv, src, 0, len(data), whole=True) for _ in range(16))
    )
    assert all(r == data for r in results)
    assert src.fetched == len(data)  # 16 readers, one copy from the origin
    assert len(src.calls) == 21
    await settle(bc)
    stats = bc.stats_for("test/")
    assert stats.served_bytes == 16 * len(data)
    assert bc.active == 0 and bc.queued == 0 and not bc._inflight


async def test_second_read_and_restart_hit_the_disk(tmp_path: Path) -> None:
    path, data = make_file(tmp_path, 5 * BS)
    src = Source(path)
    fv = version(path, data)
    assert await read_all(block_cache(tmp_path), fv, src, 0, len(data), True) == data
    src.calls.clear()
    restarted = block_cache(tmp_path)  # a new process over the same folder
    assert await read_all(restarted, fv, src, 0, len(data), True) == data
    assert src.calls == []
    assert restarted.stats_for("test/").hits == 5


async def test_small_ranged_read_fetches_one_block(tmp_path: Path) -> None:
    path, data = make_file(tmp_path, 64 * BS)
    src, bc = Source(path), block_cache(tmp_path)
    fv = version(path, data)
    off = 37 * BS + 1000
    assert await read_all(bc, fv, src, off, 4096) == data[off : off + 4096]
    assert src.calls == [(37 * BS, BS)]
    assert bc.stats_for("test/").read_amplification == BS / 4096


async def test_sequential_ranged_reads_read_ahead_with_amplification_near_one(
    tmp_path: Path,
) -> None:
    path, data = make_file(tmp_path, 64 * BS)
    src, bc = Source(path), block_cache(tmp_path, readahead_blocks=4)
    fv = version(path, data)
    chunk = BS // 2
    for off in range(0, len(data), chunk):
        assert await read_all(bc, fv, src, off, chunk) == data[off : off + chunk]
    await settle(bc)
    assert src.fetched == len(data)
    assert bc.stats_for("test/").read_amplification == 1.0


async def test_first_block_is_served_before_the_rest_lands(tmp_path: Path) -> None:
    path, data = make_file(tmp_path, 8 * BS)
    src, bc = Source(path), block_cache(tmp_path)
    gate = asyncio.Event()
    src.gates[7 * BS] = gate  # the last block's fetch hangs until we open the gate
    stream = bc.read(version(path, data), src, 0, len(data), whole=True)
    first = await asyncio.wait_for(anext(stream), timeout=30)
    assert first == data[:BS]
    assert not gate.is_set()
    gate.set()
    rest = b"".join([c async for c in stream])
    assert first + rest == data


async def test_failed_fill_falls_back_and_clears_in_flight(tmp_path: Path) -> None:
    path, data = make_file(tmp_path, 4 * BS)
    src, bc = Source(path), block_cache(tmp_path)
    src.fail_at = {2 * BS: 1}
    gate = src.gates[2 * BS] = asyncio.Event()
    stream = bc.read(version(path, data), src, 0, len(data), whole=True)
    got = [await anext(stream), await anext(stream)]
    waiting = asyncio.ensure_future(anext(stream))  # the reader now waits on block 2's fill
    for _ in range(20):
        await asyncio.sleep(0)
    gate.set()  # ... which then fails
    got.append(await waiting)
    got += [c async for c in stream]
    assert b"".join(got) == data
    await settle(bc)
    stats = bc.stats_for("test/")
    assert stats.fill_failures == 1 and stats.fallbacks == 1
    assert not bc._inflight and bc.active == 0 and bc.queued == 0


async def test_a_changed_file_is_never_served_old_blocks(tmp_path: Path) -> None:
    path, old = make_file(tmp_path, 3 * BS, seed=1)
    src, bc = Source(path), block_cache(tmp_path)
    assert await read_all(bc, version(path, old, "v1"), src, 0, len(old), True) == old
    new = os.urandom(3 * BS)
    path.write_bytes(new)
    assert await read_all(bc, version(path, new, "v2"), src, 0, len(new), True) == new


async def test_queue_full_sheds_read_ahead_but_serves_demand(tmp_path: Path) -> None:
    path, data = make_file(tmp_path, 16 * BS)
    src, bc = Source(path), block_cache(tmp_path, max_queued=2)
    assert await read_all(bc, version(path, data), src, 0, len(data), True) == data
    assert bc.stats_for("test/").shed > 0
    assert src.fetched == len(data)


def _reader_process(cache_dir: str, src_path: str, log_path: str, size: int) -> None:
    async def main() -> None:
        store = BlockStore(Path(cache_dir), 1 << 30)
        bc = BlockCache(store, EmbeddedCoordinator(store), block_size=BS)
        fv = FileVersion(src_path, f"{size}:mp", size, "mp/")

        async def fetch(offset: int, length: int) -> bytes:
            with open(log_path, "a") as log:
                log.write(f"{offset}\n")
            await asyncio.sleep(0.01)  # a slow origin, so the processes overlap
            with open(src_path, "rb") as fh:
                fh.seek(offset)
                return fh.read(length)

        got = b"".join([c async for c in bc.read(fv, fetch, 0, size, whole=True)])
        with open(src_path, "rb") as fh:
            assert got == fh.read()

    asyncio.run(main())


def test_worker_processes_share_fills(tmp_path: Path) -> None:
    path, data = make_file(tmp_path, 32 * BS)
    log = tmp_path / "fetch.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_reader_process, args=(str(tmp_path / "blocks"), str(path), str(log), len(data))
        )
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    offsets = log.read_text().split()
    assert sorted(map(int, offsets)) == [i * BS for i in range(32)]  # each block once


def test_block_store_keeps_bytes_exactly_as_files_segments_or_inline(tmp_path: Path) -> None:
    """Big blocks go to files of their own (written in one call), mid-sized ones to a
    segment, small ones inline; all come back byte for byte, newlines and all, also as a
    sub-range, and through diskcache's own ``get``."""
    store = BlockStore(tmp_path / "blocks", 1 << 30)
    big = (b"line\n" * 300_000) + os.urandom(1 << 20)
    mids = [b"m\n" * 50_000 + os.urandom(i) for i in (0, 1, 4095)]
    small = b"a\nb\n" * 100
    store.put("big", big, "f1")
    store.put("small", small, "f2")
    store.put_tagged((f"mid{i}", mid, "f3") for i, mid in enumerate(mids))
    files = list((tmp_path / "blocks").rglob("*.val"))
    assert len(files) == 1 and files[0].stat().st_size == len(big)
    assert len(list((tmp_path / "blocks").rglob("*.pk"))) == 1
    assert store.get("big") == big
    assert store.get("small") == small
    assert store.read("big", 10, 20) == big[10:20]
    for i, mid in enumerate(mids):
        assert store.get(f"mid{i}") == mid
        assert store.read(f"mid{i}", 99_990, 200_000) == mid[99_990:]
        assert store._cache.get(f"mid{i}") == mid


def test_a_batch_of_blocks_replaces_keys_keeps_the_last_of_a_twice_given_key_and_culls(
    tmp_path: Path,
) -> None:
    """``put_tagged`` writes its index rows in one transaction of its own making: a key stored
    again gets the new bytes (the old range is freed, the size counted once), a key given
    twice in a batch keeps its last block, tags evict, and a batch bigger than the cache
    leaves it within its limit, the last blocks kept."""
    kib = 1 << 10
    store = BlockStore(tmp_path / "blocks", 2048 * kib)
    first = {f"k{i}": os.urandom(100 * kib) for i in range(5)}
    store.put_tagged((k, v, "a") for k, v in first.items())
    again = os.urandom(100 * kib)
    store.put_tagged([("k0", os.urandom(100 * kib), "a"), ("k0", again, "a"), ("s", b"x", "b")])
    assert store.get("k0") == again and store.get("k1") == first["k1"] and store.get("s") == b"x"
    rows = store._cache._sql("SELECT COUNT(*), SUM(size) FROM Cache").fetchone()
    assert rows == (6, 500 * kib) and store._cache.reset("size") == rows[1]
    assert store.evict_file("b") == 1 and store.get("s") is None
    many = [(f"m{i}", os.urandom(100 * kib), "c") for i in range(40)]  # 4,000 KiB > 2,048
    store.put_tagged(many)
    assert store._cache.volume() <= 2048 * kib + 64 * kib  # the index's own pages on top
    assert store.get("m39") == many[39][1] and store.get("k1") is None  # oldest go first


def test_block_hits_keep_lru_order_and_take_no_write_lock(tmp_path: Path) -> None:
    """A hit is served while another process holds the index's write lock (diskcache's own
    get would wait for it), and its access time still reaches the index: the block read
    last survives an eviction that the blocks stored after it do not."""
    mib = 1 << 20
    store = BlockStore(tmp_path / "blocks", int(3.5 * mib), cull_limit=1)
    for key in ("a", "b", "c"):
        store.put(key, os.urandom(mib), key)
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        other = open_cache(tmp_path / "blocks", int(3.5 * mib), cull_limit=1)
        with other.transact():
            holding.set()
            release.wait(60)
        other.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    assert holding.wait(30)
    got: list[bytes | None] = []
    reader = threading.Thread(target=lambda: got.append(store.read("a")))
    reader.start()
    reader.join(30)
    finished = not reader.is_alive()
    release.set()
    holder.join()
    reader.join()
    assert finished, "a hit waited for the write lock"
    assert got[0] is not None and len(got[0]) == mib
    store.write_touches()
    store.put("d", os.urandom(mib), "d")  # over the limit: the least recently used goes
    assert [store.contains(k) for k in "abcd"] == [True, False, True, True]
    store.close()


async def test_small_blocks_are_read_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block of INLINE_READ or less comes from the disk without a thread hop, also when
    its pages were dropped (the hop costs more CPU than the read); a block file or segment
    gone since the lookup (evicted by another process) is a miss, never an error."""
    path, data = make_file(tmp_path, 3 * BS)
    src, fv = Source(path), version(path, data)
    first = block_cache(tmp_path)
    assert await read_all(first, fv, src, 0, len(data), True) == data
    await settle(first)
    for block in (tmp_path / "blocks").rglob("*.pk"):
        drop_from_page_cache(block)

    def no_thread(*args: object) -> None:
        raise AssertionError("a small block went through a thread")

    monkeypatch.setattr("unionstore.cache.blocks.asyncio.to_thread", no_thread)
    src.calls.clear()
    restarted = block_cache(tmp_path)  # empty memory tier: every block from the disk
    assert await read_all(restarted, fv, src, 0, len(data), True) == data
    assert src.calls == [] and restarted.stats_for("test/").hits == 3

    store = BlockStore(tmp_path / "other", 1 << 30)
    store.put("mid", data, "f")
    store.put("big", data * 8, "f")
    assert store.read("mid", 5, 105) == data[5:105]
    for gone in [*(tmp_path / "other").rglob("*.pk"), *(tmp_path / "other").rglob("*.val")]:
        gone.unlink()
    assert store.read("mid") is None and store.read("big") is None
    store.close()


def test_the_fuse_block_store_sweeps_orphans_at_start(tmp_path: Path) -> None:
    """A block file without an index row (a crash mid-write) is never served and not counted
    against the size limit: the node's FUSE cache removes old ones when it opens."""
    from unionstore.fuse.diskblocks import DiskBlocks

    folder = tmp_path / "fuse-blocks"
    DiskBlocks(folder, 1 << 30).put_many([("kept", os.urandom(1 << 16))], "f")
    orphan, young = folder / "ab" / "orphan.val", folder / "ab" / "young.val"
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"x" * 100)
    young.write_bytes(b"y" * 100)
    os.utime(orphan, (1, 1))
    blocks = DiskBlocks(folder, 1 << 30)
    assert not orphan.exists() and young.exists()  # a young one may be another daemon's fill
    assert blocks.get("kept") is not None


async def test_a_fill_cancelled_while_writing_holds_its_lease_until_the_block_is_on_disk(
    tmp_path: Path,
) -> None:
    """A worker shutting down cancels its fills. One cancelled while its block is being
    written must not give up its lease before the block is stored, or another worker finds
    neither and fetches the block again (seen as a flaky double fetch in
    ``test_worker_processes_share_fills``)."""
    path, data = make_file(tmp_path, BS)
    src, bc = Source(path), block_cache(tmp_path)
    fv = version(path, data)
    key = bc._key(fv, 0)
    writing, proceed = threading.Event(), threading.Event()
    real_put = bc.store.put

    def slow_put(k: str, block: bytes, tag: str) -> None:
        writing.set()
        proceed.wait(30)
        real_put(k, block, tag)

    bc.store.put = slow_put  # type: ignore[method-assign]
    assert await read_all(bc, fv, src, 0, len(data), whole=True) == data
    (fill,) = bc._files[(fv.file_id, fv.version, BS)].tasks
    assert await asyncio.to_thread(writing.wait, 30)
    fill.cancel()
    finished, _ = await asyncio.wait([fill], timeout=0.5)
    assert not finished  # still waiting for the write...
    assert bc.store.lease_held(key)  # ... and holding the lease
    proceed.set()
    await asyncio.wait([fill])
    assert fill.cancelled()
    assert bc.store.contains(key) and not bc.store.lease_held(key)
