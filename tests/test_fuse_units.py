"""Pieces of the bridge's cold-read path, without a mount: the SigV4 signer against
botocore's, directory scans handing each file to read-ahead once, and fetched blocks reaching
the disk cache in batches after the reads that fetched them returned."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import random
import threading
from pathlib import Path
from typing import Any
from unittest import mock

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from unionstore.cache.store import PACK_LIMIT, block_key
from unionstore.fuse.blockcache import AccessPattern, BlockCache, Fetch, ObjectVersion
from unionstore.fuse.diskblocks import DiskBlocks
from unionstore.fuse.metadata import Stat
from unionstore.fuse.scan import DirectoryScans
from unionstore.fuse.sigv4 import Signer, host_header

NOW = 1_700_000_000  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize(
    ("endpoint", "method", "path", "query", "headers", "body"),
    [
        ("http://127.0.0.1:9000", "GET", "/b/k%20x/y~z", "", {"Range": "bytes=0-99"}, b""),
        (
            "http://LocalHost:80",
            "GET",
            "/b",
            "delimiter=%2F&list-type=2&prefix=a%2Fb",
            {"If-Match": '"abc"'},
            b"",
        ),
        ("https://h.example:443", "POST", "/b/k", "uploads", {"Content-Type": "a/b"}, b""),
        ("http://[::1]:9000", "PUT", "/b/k", "partNumber=1&uploadId=x", {}, b"part  body"),
    ],
)
def test_the_signer_signs_as_botocore_does(
    token: str | None,
    endpoint: str,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    payload = hashlib.sha256(body).hexdigest()
    ours = Signer("AKID", "SECRET", "eu-west-1", session_token=token, clock=lambda: NOW + 0.7)
    got = ours.sign(method, host_header(endpoint), path, query, headers, payload)
    url = endpoint + path + ("?" + query if query else "")
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    at = dt.datetime.fromtimestamp(NOW, dt.UTC).replace(tzinfo=None)
    with mock.patch.object(botocore.auth, "get_current_datetime", lambda: at):
        botocore.auth.S3SigV4Auth(Credentials("AKID", "SECRET", token), "s3", "eu-west-1").add_auth(
            request
        )
    assert got == dict(request.headers.items())


def test_the_signing_key_is_derived_once_a_day() -> None:
    clock = [float(NOW)]
    signer = Signer("AKID", "SECRET", "us-east-1", clock=lambda: clock[0])
    first = signer.sign("GET", "h", "/b/k", "", {}, "x")["Authorization"]
    key = signer.signing_key("20231114")
    clock[0] += 1
    second = signer.sign("GET", "h", "/b/k", "", {}, "x")["Authorization"]
    assert first != second and signer.signing_key("20231114") is key
    clock[0] += 86_400
    assert "/20231115/" in signer.sign("GET", "h", "/b/k", "", {}, "x")["Authorization"]


def _listing(n: int) -> dict[str, Stat]:
    return {f"f{i:03d}": Stat(False, 100, 1, f"e{i}") for i in range(n)}


def test_a_scan_hands_each_file_to_read_ahead_once() -> None:
    scans, listing, handed = DirectoryScans(), _listing(40), []

    def prefetch(name: str, stat: Stat) -> bool:
        handed.append(name)
        return True

    for i in range(20):
        scans.opened("d", f"f{i:03d}", listing, 4, 1 << 20, prefetch)
    assert handed == [f"f{i:03d}" for i in range(4, 24)]  # the fourth open starts the scan


def test_a_scan_offers_a_refused_file_again_and_starts_over_after_a_jump_back() -> None:
    scans, listing, handed = DirectoryScans(), _listing(100), []
    refuse = {"f005"}

    def prefetch(name: str, stat: Stat) -> bool:
        handed.append(name)
        return name not in refuse

    for i in range(4):
        scans.opened("d", f"f{i:03d}", listing, 4, 1 << 20, prefetch)
    assert handed == ["f004", "f005"]  # f005 refused: f006 and f007 wait for it
    refuse.clear()
    scans.opened("d", "f004", listing, 4, 1 << 20, prefetch)
    assert handed[2:] == ["f005", "f006", "f007", "f008"]
    for i in range(5, 50):
        scans.opened("d", f"f{i:03d}", listing, 4, 1 << 20, prefetch)
    assert handed[-1] == "f053"
    handed.clear()
    for i in range(4):  # a second pass from the start (out of the recent opens): a new scan
        scans.opened("d", f"f{i:03d}", listing, 4, 1 << 20, prefetch)
    assert handed == ["f004", "f005", "f006", "f007"]


def test_shuffled_readers_of_a_large_directory_start_no_scan() -> None:
    """The data-loader test's readers (4 processes, 1,500 random files of 10,000 each),
    interleaved 40 ways: no open ever looks like a scan, so nothing they do not read is
    fetched. With two predecessors making a scan, about one run in twenty had one."""
    names = [f"f{i:05d}" for i in range(10_000)]
    listing = {n: Stat(False, 100, 1, "e") for n in names}
    picks = [random.Random(seed).sample(names, 1_500) for seed in range(4)]
    handed: list[str] = []
    for run in range(40):
        order = random.Random(run)
        scans, pos = DirectoryScans(), [0] * len(picks)
        while live := [k for k, p in enumerate(picks) if pos[k] < len(p)]:
            k = order.choice(live)
            name, pos[k] = picks[k][pos[k]], pos[k] + 1
            scans.opened("d", name, listing, 8, 1 << 20, lambda n, _: handed.append(n) or True)
        assert scans.detected == 0, (run, handed)


async def test_blocks_are_read_from_disk_by_several_threads_at_once(tmp_path: Path) -> None:
    """Four readers of files cached on disk: their blocks are read in parallel (a
    sequential reader's read-ahead from disk is too), not one after another."""
    both = threading.Condition()
    reading, most = 0, 0

    class CountingDisk(DiskBlocks):
        def get(self, key: str) -> bytes | None:
            nonlocal reading, most
            with both:
                reading += 1
                most = max(most, reading)
                both.notify_all()
                both.wait_for(lambda: most >= 2, timeout=10)  # one thread alone: 10 s, then on
                reading -= 1
            return super().get(key)

    cache = BlockCache(CountingDisk(tmp_path / "blocks", 1 << 30), memory_bytes=0)
    body = b"z" * 200_000
    objs = [ObjectVersion(f"ep/b/d{i}", "e", len(body)) for i in range(4)]
    for o in objs:
        cache.disk.put_many([(block_key(o.file_id, o.version, cache.large, 0), body)], o.file_id)

    async def no_fetch(offset: int, length: int) -> bytes:
        raise AssertionError("fetched a block that is on disk")

    reads = [cache.read(o, no_fetch, 0, len(body), AccessPattern()) for o in objs]
    assert await asyncio.gather(*reads) == [body] * 4
    assert cache.statistics()["hits.disk"] == 4
    assert most >= 2
    await cache.close()
    cache.disk.close()


async def test_fetched_blocks_reach_the_disk_in_batches_after_the_reads(tmp_path: Path) -> None:
    """Twenty cold small files read at once: every read is answered from RAM before anything
    is on disk, the blocks are stored in one batch, and a new cache on the same folder (a
    restarted daemon) has all of them, inline, in a segment and as files alike."""
    sizes = [8192] + [100_000 + i for i in range(18)] + [PACK_LIMIT + 5]
    bodies = {f"k{i}": bytes([i]) * n for i, n in enumerate(sizes)}
    objs = {k: ObjectVersion(f"ep/b/{k}", f"e:{len(v)}", len(v)) for k, v in bodies.items()}
    cache = BlockCache(DiskBlocks(tmp_path / "blocks", 1 << 30))

    def fetcher(key: str) -> Fetch:
        async def fetch(offset: int, length: int) -> bytes:
            return bodies[key][offset : offset + length]

        return fetch

    reads = [cache.read(objs[k], fetcher(k), 0, 2 << 20, AccessPattern()) for k in sorted(bodies)]
    got = await asyncio.gather(*reads)
    assert got == [bodies[k] for k in sorted(bodies)]
    assert cache.statistics()["unwritten_blocks"] == len(bodies)  # replies came first
    await cache.close()
    assert cache.counts["disk.batches"] == 1
    assert cache.counts["disk.blocks"] == len(bodies)
    assert cache.statistics()["unwritten_blocks"] == 0
    cache.disk.close()

    reopened = DiskBlocks(tmp_path / "blocks", 1 << 30)
    for k, body in bodies.items():
        assert reopened.get(block_key(objs[k].file_id, objs[k].version, 4 << 20, 0)) == body
    assert len(list((tmp_path / "blocks").rglob("*.val"))) == 1  # only the large one a file
    assert len(list((tmp_path / "blocks").rglob("*.pk"))) == 1  # the 100 KB ones appended
    reopened.close()


async def test_blocks_fetched_one_at_a_time_are_stored_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cold files read one after another (not in one burst) still reach the disk in one
    transaction: the writer waits WRITE_DELAY for more before a small batch."""
    monkeypatch.setattr("unionstore.fuse.blockcache.WRITE_DELAY", 2.0)
    cache = BlockCache(DiskBlocks(tmp_path / "blocks", 1 << 30))
    bodies = {f"k{i}": bytes([i]) * 50_000 for i in range(5)}
    for key, body in bodies.items():
        obj = ObjectVersion(f"ep/b/{key}", "e", len(body))

        async def fetch(offset: int, length: int, body: bytes = body) -> bytes:
            return body[offset : offset + length]

        assert await cache.read(obj, fetch, 0, 1 << 20, AccessPattern()) == body
        await asyncio.sleep(0.01)  # the writer runs meanwhile
    assert cache.statistics()["unwritten_blocks"] == len(bodies)
    await cache.close()  # waits for the writer
    assert (cache.counts["disk.batches"], cache.counts["disk.blocks"]) == (1, len(bodies))
    cache.disk.close()


async def test_the_disk_writer_runs_below_the_loops_priority(tmp_path: Path) -> None:
    """While it keeps up, the writer's thread (not the loop's) gives up WRITER_NICE_STEPS
    of priority."""
    from unionstore.fuse.blockcache import WRITER_NICE_STEPS

    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    cache = BlockCache(DiskBlocks(tmp_path / "blocks", 1 << 30))
    body = b"x" * 50_000
    obj = ObjectVersion("ep/b/k", "e", len(body))

    async def fetch(offset: int, length: int) -> bytes:
        return body[offset : offset + length]

    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def writer_nice() -> int:
        """Asked in the writer's own thread: once close() has joined it, its thread id may
        be gone (ESRCH), as it was once in CI."""
        return await asyncio.wrap_future(cache._writer.submit(own_nice))

    assert await cache.read(obj, fetch, 0, 1 << 20, AccessPattern()) == body
    assert cache._writing is not None
    await cache._writing  # the writer stored the block, so its thread ran
    assert await writer_nice() == min(19, loop_nice + WRITER_NICE_STEPS)
    assert own_nice() == loop_nice
    await cache.close()
    cache.disk.close()


def test_a_writer_that_may_not_raise_its_priority_again_stays_low(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without CAP_SYS_NICE the writer cannot get the loop's priority back: it stays low,
    says so once, and does not try again."""
    from unionstore.fuse.blockcache import _WriterPriority

    calls: list[int] = []

    def setpriority(which: int, who: int, nice: int) -> None:
        calls.append(nice)
        if nice < max([priority.low, *calls[:-1]]):
            raise PermissionError(1, "Operation not permitted")

    priority = _WriterPriority()
    monkeypatch.setattr(os, "setpriority", setpriority)
    priority.set(False)
    priority.set(True)  # refused
    priority.set(True)
    priority.set(False)
    assert calls == [priority.low, priority.loop]
    assert (priority.current, priority.can_raise) == (priority.low, False)


async def test_gets_wait_for_a_disk_writer_that_is_far_behind(tmp_path: Path) -> None:
    """Fetched blocks wait in RAM for the writer; beyond the backlog's limit (here two 4 MiB
    blocks) new GETs wait until it has caught up, so a slow disk bounds the daemon's RAM.
    A writer that far behind runs at the loop's priority."""
    release = threading.Event()
    writer_nice: list[int] = []

    class SlowDisk(DiskBlocks):
        def put_tagged(self, items: Any) -> None:
            writer_nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            release.wait(30)
            super().put_tagged(items)

    cache = BlockCache(SlowDisk(tmp_path / "blocks", 1 << 30), memory_bytes=0)
    body = b"y" * (3 << 20)
    fetched: list[str] = []
    three = asyncio.Event()

    def fetcher(key: str) -> Fetch:
        async def fetch(offset: int, length: int) -> bytes:
            fetched.append(key)
            if len(fetched) == 3:
                three.set()
            return body[offset : offset + length]

        return fetch

    objs = [ObjectVersion(f"ep/b/k{i}", "e", len(body)) for i in range(4)]
    reads = [
        asyncio.create_task(cache.read(o, fetcher(o.file_id), 0, 1 << 20, AccessPattern()))
        for o in objs
    ]
    await asyncio.wait_for(three.wait(), 30)
    for _ in range(100):  # every task runs on this loop: the fourth could go on by now
        await asyncio.sleep(0)
    assert len(fetched) == 3  # 9 MiB unwritten > 8 MiB: the fourth GET waits
    assert cache.statistics()["unwritten_bytes"] == 3 * len(body)
    release.set()
    assert await asyncio.gather(*reads) == [body[: 1 << 20]] * 4
    assert cache.counts["writer_waits"] == 1
    await cache.close()
    assert cache.statistics()["unwritten_bytes"] == 0
    # behind, the writer ran at the loop's priority, not WRITER_NICE_STEPS below it
    assert writer_nice[0] == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    cache.disk.close()


async def test_the_fuse_device_wait_asks_the_kernel_first() -> None:
    """A readable device is answered by one poll, without pyfuse3's add_reader/remove_reader
    round; otherwise (nothing queued, or a closed fd) pyfuse3's own wait runs."""
    from unionstore.fuse.mount import poll_first

    waited: list[int] = []

    async def pyfuse3_wait(fd: int) -> None:
        waited.append(fd)

    wait = poll_first(pyfuse3_wait)
    r, w = os.pipe()
    try:
        await wait(r)
        assert waited == [r]  # nothing to read: the slow path
        os.write(w, b"request")
        await wait(r)
        await wait(r)
        assert waited == [r]  # readable: no slow path
        os.read(r, 100)
        await wait(r)
        assert waited == [r, r]
    finally:
        os.close(w)
    os.close(r)  # a closed fd (POLLNVAL) is not "readable"
    await wait(r)
    assert waited == [r, r, r]


def test_the_nice_option_is_checked(tmp_path: Path) -> None:
    from unionstore.config import ConfigError
    from unionstore.fuse import config

    def load(**flags: object) -> config.MountOptions:
        return config.load("http://127.0.0.1:1", "bkt", tmp_path / "m", flags=flags)

    assert load().nice == -10
    assert load(nice="5").nice == 5
    with pytest.raises(ConfigError, match="nice must be between -20 and 19"):
        load(nice="-21")


async def test_a_file_fetched_while_its_prefetch_waited_is_not_fetched_again(
    tmp_path: Path,
) -> None:
    """A directory scan queues a file as not cached; a reader fetches and stores it before
    the queued prefetch gets its turn (and RAM has let it go): the prefetch finds it on disk
    and sends no second GET."""
    body = b"x" * 100_000
    cache = BlockCache(
        DiskBlocks(tmp_path / "blocks", 1 << 30), fetch_concurrency=1, memory_bytes=1
    )
    gate = asyncio.Event()
    gets: list[str] = []

    def fetcher(name: str, wait: bool = False) -> Fetch:
        async def fetch(offset: int, length: int) -> bytes:
            gets.append(name)
            if wait:
                await gate.wait()
            return body[offset : offset + length]

        return fetch

    obj = {n: ObjectVersion(f"ep/b/{n}", "e:1", len(body)) for n in ("slow", "b", "c")}
    assert cache.prefetch(obj["slow"], fetcher("slow", wait=True))  # holds the only slot
    assert cache.prefetch(obj["b"], fetcher("b"))  # queued behind it
    await asyncio.sleep(0)
    assert await cache.read(obj["b"], fetcher("b"), 0, 1 << 20, AccessPattern()) == body
    assert cache._writing is not None
    await cache._writing  # b is stored on disk
    await cache.read(obj["c"], fetcher("c"), 0, 1 << 20, AccessPattern())  # b leaves RAM
    gate.set()
    await asyncio.gather(*cache._tasks)  # the queued prefetches ran (close cancels them)
    await cache.close()
    assert sorted(gets) == ["b", "c", "slow"]
    cache.disk.close()


async def test_reads_of_a_block_in_ram_are_views_of_it_not_copies(tmp_path: Path) -> None:
    """A 1 MiB read of a cached 4 MiB block hands pyfuse3 a view of the block (its reply
    copies it to the kernel anyway); one across two blocks joins only the asked-for parts."""
    cache = BlockCache(DiskBlocks(tmp_path / "blocks", 1 << 30), block_size=4 << 20)
    body = os.urandom(9 << 20)
    obj = ObjectVersion("ep/b/big", "e", len(body))

    async def fetch(offset: int, length: int) -> bytes:
        return body[offset : offset + length]

    pattern, mib = AccessPattern(), 1 << 20
    first = await cache.read(obj, fetch, 0, mib, pattern)
    second = await cache.read(obj, fetch, mib, mib, pattern)
    assert first == body[:mib] and second == body[mib : 2 * mib]
    assert isinstance(second, memoryview)
    assert second.obj is cache._memory_get(block_key(obj.file_id, obj.version, 4 << 20, 0))
    across = await cache.read(obj, fetch, 4 * mib - 100, mib, pattern)
    assert across == body[4 * mib - 100 : 5 * mib - 100]
    random_read = await cache.read(obj, fetch, 8 * mib + 5, 4096, AccessPattern())
    assert random_read == body[8 * mib + 5 : 8 * mib + 4101]
    await cache.close()
    cache.disk.close()
