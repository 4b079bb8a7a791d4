"""POSIX behaviour of a real ``unionstore mount`` over the real gateway over a real HDFS.

Files are written into HDFS first; a gateway serves them as bucket ``train`` (its own
metadata cache off, so HDFS changes show at once at the S3 level); the mount talks S3 to the
gateway. Writes (write-close-read back, rename, unlink, mkdir/rmdir ...) are in
test_fuse_write.py, against the same gateway and against moto.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hdfs_native
import pytest

from tests.support.fusemount import FuseMount, hdfs_put_many, is_mounted
from tests.support.gateway import ADMIN_KEY, ADMIN_SECRET, GatewayProcess
from tests.support.hdfs import HdfsCluster
from tests.support.ports import poll_until

RUN = uuid.uuid4().hex[:8]
ROOT = f"/fuse-posix-{RUN}"
MANY = 2500  # entries of one directory: 3 LIST pages


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


FILES: dict[str, bytes] = {
    "empty": b"",
    "one": b"1",
    "page-1": _rand(4095, 1),
    "page": _rand(4096, 2),
    "page+1": _rand(4097, 3),
    "small/100k.bin": _rand(100_000, 4),
    "small/1m+3.bin": _rand((1 << 20) + 3, 5),
    "big.bin": _rand(40 << 20, 6),  # larger than the small-cache mount's cache
    "shared.bin": _rand(16 << 20, 7),  # read by several processes at once
    "seq.bin": _rand(24 << 20, 8),  # read amplification, sequential
    "rand128.bin": _rand(32 << 20, 9),  # read amplification, 128 KiB random reads
    "rand4k.bin": _rand(16 << 20, 10),  # read amplification, 4 KiB random reads
    "mm.bin": _rand(12 << 20, 11),  # mmap
    "restart.bin": _rand(6 << 20, 12),  # disk cache reused across a crash
    **{f"cold/c{i:02d}.bin": _rand(100_000 + i, 40 + i) for i in range(16)},  # ditto, small
    "d1/d2/d3/deep.txt": b"deep",
    "ctl/a/file": b"1",
    "ctl/b/file": b"1",
    "sp ace+plus=eq&amp.txt": b"special",
    "é/ünï.bin": bytes(range(256)) * 4,
    **{f"many/f{i:05d}.txt": f"{i}\n".encode() for i in range(MANY)},
    **{f"tiny/t{i:04d}": _rand(1000 + i, 100 + i) for i in range(300)},
}


@pytest.fixture(scope="module")
def data(hdfs: HdfsCluster) -> dict[str, bytes]:
    hdfs_put_many(
        hdfs.url, {f"{ROOT}/{k}": v for k, v in FILES.items()}, dirs=(f"{ROOT}/emptydir",)
    )
    return FILES


@pytest.fixture(scope="module")
def gw(hdfs: HdfsCluster, data: dict[str, bytes]) -> Iterator[GatewayProcess]:
    config = {
        "mounts": [{"bucket": "train", "uri": hdfs.url + ROOT}],
        "cache": {"metadata_ttl": "0"},
    }
    with GatewayProcess(config) as gateway:
        yield gateway


def _mount(gw: GatewayProcess, **options: object) -> FuseMount:
    return FuseMount(gw.endpoint, "train", access_key=ADMIN_KEY, secret_key=ADMIN_SECRET, **options)


@pytest.fixture(scope="module")
def mnt(gw: GatewayProcess) -> Iterator[FuseMount]:
    with _mount(gw) as m:
        yield m
        assert m.alive(), m.log_tail()


def _delta(before: dict[str, object], after: dict[str, object], key: str) -> int:
    return int(after.get(key) or 0) - int(before.get(key) or 0)  # type: ignore[call-overload]


# -- metadata ---------------------------------------------------------------------------------
def test_stat_files_and_directories(mnt: FuseMount, hdfs: HdfsCluster) -> None:
    client = hdfs_native.Client(hdfs.url)
    for key, body in FILES.items():
        if key.startswith(("many/", "tiny/")):
            continue
        st = os.stat(mnt.path / key)
        assert stat.S_ISREG(st.st_mode), key
        assert st.st_size == len(body), key
        assert st.st_nlink == 1
        hdfs_mtime_ms = client.get_file_info(f"{ROOT}/{key}").modification_time
        assert st.st_mtime_ns // 1_000_000 == hdfs_mtime_ms, key
    for d in ("small", "d1", "d1/d2", "d1/d2/d3", "many", "emptydir", "é"):
        st = os.stat(mnt.path / d)
        assert stat.S_ISDIR(st.st_mode), d
    assert sorted(os.listdir(mnt.path / "emptydir")) == []
    assert sorted(os.listdir(mnt.path / "d1")) == ["d2"]
    assert os.listdir(mnt.path / "é") == ["ünï.bin"]
    top = {k.split("/")[0] for k in FILES} | {"emptydir"}
    assert sorted(os.listdir(mnt.path)) == sorted(top)  # no .unionstore in listings
    assert os.statvfs(mnt.path).f_bavail > 0


def test_readdir_of_many_entries_lists_pages_and_never_heads(mnt: FuseMount) -> None:
    before = mnt.stats()["s3"]
    names = sorted(os.listdir(mnt.path / "many"))
    assert names == [f"f{i:05d}.txt" for i in range(MANY)]
    for name in names:  # attributes came with the listing (readdirplus)
        assert os.stat(mnt.path / "many" / name).st_size == len(name[1:6].lstrip("0") or "0") + 1
    after = mnt.stats()["s3"]
    lists = _delta(before, after, "requests.ListObjectsV2")
    assert lists <= MANY // 1000 + 2, lists
    assert _delta(before, after, "requests.HeadObject") == 0
    assert _delta(before, after, "requests.GetObject") == 0


def test_errors_enoent_eisdir_enotdir(mnt: FuseMount) -> None:
    p = mnt.path
    cases = [
        (lambda: os.stat(p / "no-such-file"), errno.ENOENT),
        (lambda: (p / "small" / "nope.bin").read_bytes(), errno.ENOENT),
        (lambda: os.listdir(p / "no-such-dir"), errno.ENOENT),
        (lambda: (p / "small").read_bytes(), errno.EISDIR),
        (lambda: os.stat(p / "one" / "x"), errno.ENOTDIR),
        (lambda: os.listdir(p / "one"), errno.ENOTDIR),
        (lambda: os.stat(p / ".unionstore" / "nope"), errno.ENOENT),
    ]
    for action, expected in cases:
        with pytest.raises(OSError) as info:
            action()
        assert info.value.errno == expected, (info.value, expected)
    with pytest.raises(OSError) as info:
        os.stat(os.fsencode(p) + b"/bad-\xff-name")
    assert info.value.errno in (errno.EINVAL, errno.ENOENT)
    assert mnt.alive()


# -- reads ------------------------------------------------------------------------------------
def test_reads_at_arbitrary_offsets_and_sizes(mnt: FuseMount) -> None:
    rnd = random.Random(42)
    for key in ("page-1", "page", "page+1", "small/1m+3.bin", "big.bin", "é/ünï.bin"):
        body = FILES[key]
        fd = os.open(mnt.path / key, os.O_RDONLY)
        try:
            for _ in range(60):
                off = rnd.randrange(0, len(body) + 10)
                size = rnd.choice([1, 7, 4096, 4097, 65536, 131072, 1 << 20, 3 << 20])
                assert os.pread(fd, size, off) == body[off : off + size], (key, off, size)
        finally:
            os.close(fd)
    assert (mnt.path / "empty").read_bytes() == b""
    assert (mnt.path / "sp ace+plus=eq&amp.txt").read_bytes() == b"special"
    assert (mnt.path / "d1/d2/d3/deep.txt").read_bytes() == b"deep"


def test_many_small_files(mnt: FuseMount) -> None:
    for i in range(300):
        assert (mnt.path / f"tiny/t{i:04d}").read_bytes() == FILES[f"tiny/t{i:04d}"]


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
def test_a_small_file_costs_one_get_and_four_kernel_requests(
    gw: GatewayProcess, read_only: bool
) -> None:
    """Small files read out of order from a listed directory: one GET each and no HEAD or
    LIST; the kernel asks open, read, flush, release and nothing else (names and attributes
    came with readdirplus); no neighbours were opened, so nothing is fetched ahead. A
    read-only mount answers the first flush ENOSYS, and the kernel sends no more."""
    names = [f"tiny/t{i:04d}" for i in range(0, 300, 3)]
    random.Random(3).shuffle(names)
    with _mount(gw, read_only=read_only) as m:
        os.listdir(m.path / "tiny")
        first = m.stats()
        before = m.stats()  # reading the stats file costs requests too: count them
        for name in names:
            assert (m.path / name).read_bytes() == FILES[name]
        after = m.stats()
    s3 = {
        k: _delta(before["s3"], after["s3"], f"requests.{k}")
        for k in ("GetObject", "HeadObject", "ListObjectsV2")
    }
    assert s3 == {"GetObject": len(names), "HeadObject": 0, "ListObjectsV2": 0}
    n = len(names)
    per_file = {"open": 1, "read": 1, "flush": 1, "release": 1, "lookup": 0, "getattr": 0}
    if read_only:
        del per_file["flush"]
        assert _delta(before["fuse"], after["fuse"], "flush") == 0
        assert after["fuse"].get("flush") == 1  # the first one, answered ENOSYS
    for op, count in per_file.items():
        stats_file = _delta(first["fuse"], before["fuse"], op)
        assert _delta(before["fuse"], after["fuse"], op) - stats_file == n * count, op
    assert _delta(before["cache"], after["cache"], "prefetch.files") == 0


def test_repeated_stats_are_answered_by_the_kernel(gw: GatewayProcess) -> None:
    """entry_timeout and attr_timeout reach the kernel: after readdirplus, stat() of the
    directory's files asks the daemon nothing, however often, and still nothing in a pass
    begun after libfuse's default timeout of 1 s (which s3fs keeps) has run out."""
    with _mount(gw) as m:
        paths = [m.path / f"tiny/t{i:04d}" for i in range(300)]
        os.listdir(m.path / "tiny")
        first = m.stats()
        before = m.stats()
        for n in range(6):
            if n == 5:
                time.sleep(1.5)  # the point: time passing, not a wait for readiness
            for p in paths:
                assert os.stat(p).st_size == len(FILES[f"tiny/{p.name}"])
        after = m.stats()
    for op in ("lookup", "getattr"):
        stats_file = _delta(first["fuse"], before["fuse"], op)
        assert _delta(before["fuse"], after["fuse"], op) == stats_file, op


def test_a_directory_read_in_order_is_fetched_ahead_once(gw: GatewayProcess) -> None:
    """Files read in name order (two processes taking every other one): the next files
    are fetched ahead (scan.py), and still each file is fetched exactly once."""
    names = [f"tiny/t{i:04d}" for i in range(300)]
    with _mount(gw) as m:
        os.listdir(m.path / "tiny")
        before = m.stats()
        code = "import sys\nfor p in sys.argv[1:]:\n    open(p, 'rb').read()\n"
        procs = [
            subprocess.Popen([sys.executable, "-c", code, *(str(m.path / n) for n in part)])
            for part in (names[0::2], names[1::2])
        ]
        assert [p.wait(120) for p in procs] == [0, 0]
        for name in names:
            assert (m.path / name).read_bytes() == FILES[name]
        after = m.stats()
    assert _delta(before["s3"], after["s3"], "requests.GetObject") == len(names)
    assert after["directory_scans"] > 0
    assert _delta(before["cache"], after["cache"], "prefetch.files") > 0
    assert _delta(before["cache"], after["cache"], "hits.memory") > 0


def test_kernel_readahead_of_the_mount_follows_the_options(gw: GatewayProcess) -> None:
    """The daemon raises read_ahead_kb of its own mount's bdi, so 1 MiB reads reach it as
    1 MiB requests; with read_ahead off the kernel's default (128 KiB) stays."""

    def bdi(m: FuseMount) -> Path:
        dev = os.stat(m.path).st_dev
        return Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")

    size = len(FILES["shared.bin"])
    with _mount(gw, kernel_readahead_kb=2048) as m:
        ra = bdi(m)
        poll_until(lambda: ra.read_text().strip() == "2048", 10, f"{ra} = 2048", log=m.log_path)
        before = m.stats()["cache"]
        with open(m.path / "shared.bin", "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
        after = m.stats()["cache"]
        requests = _delta(before, after, "read_requests")
        assert requests <= size // (1 << 20) + 2, requests  # 128 at the default 128 KiB
    with _mount(gw, read_ahead="off") as m:
        assert m.stats()["cache"] is not None  # served: the daemon is past its start
        assert bdi(m).read_text().strip() == "128"


def test_the_daemon_runs_at_the_nice_value_asked_for(gw: GatewayProcess) -> None:
    """Every thread of the daemon (the event loop, the disk threads started after it) runs
    at ``nice``, but the disk writer, WRITER_NICE_STEPS below it; ``0`` leaves the priority
    it was started with."""
    from unionstore.fuse.blockcache import WRITER_NICE_STEPS

    def nice_values(m: FuseMount) -> list[int]:
        assert m.proc is not None
        m.stats()  # served: past the start
        tasks = Path(f"/proc/{m.proc.pid}/task")
        return sorted(
            int((t / "stat").read_text().rsplit(")", 1)[1].split()[16]) for t in tasks.iterdir()
        )

    with _mount(gw, nice=-5) as m:
        (m.path / "shared.bin").read_bytes()  # starts the disk-cache threads
        poll_until(
            lambda: m.stats()["cache"]["disk.blocks"] > 0, 10, "block stored", log=m.log_path
        )
        *loop, writer = nice_values(m)
        assert set(loop) == {-5}
        assert writer == -5 + WRITER_NICE_STEPS
    with _mount(gw, nice="0") as m:
        assert set(nice_values(m)) == {os.getpriority(os.PRIO_PROCESS, 0)}


def test_file_larger_than_the_cache(gw: GatewayProcess) -> None:
    with _mount(gw, cache_size="8MiB", memory_cache_size="4MiB", block_size="1MiB") as m:
        body = FILES["big.bin"]
        assert (
            hashlib.sha256((m.path / "big.bin").read_bytes()).digest()
            == hashlib.sha256(body).digest()
        )
        fd = os.open(m.path / "big.bin", os.O_RDONLY)
        try:
            rnd = random.Random(7)
            for _ in range(40):
                off = rnd.randrange(len(body))
                assert os.pread(fd, 200_000, off) == body[off : off + 200_000]
        finally:
            os.close(fd)
        assert m.stats()["cache"]["disk_bytes"] <= 12 << 20


READER = """
import hashlib, os, random, sys
path, seed = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
whole = hashlib.sha256()
off = 0
while off < size:
    chunk = os.pread(fd, 1 << 20, off)
    whole.update(chunk)
    off += len(chunk)
rnd = random.Random(seed)
parts = []
for _ in range(50):
    o = rnd.randrange(size)
    parts.append(hashlib.sha256(os.pread(fd, 65536, o)).hexdigest()[:12])
print(whole.hexdigest(), *parts)
"""


def test_concurrent_readers_in_several_processes(mnt: FuseMount) -> None:
    body = FILES["shared.bin"]
    before = mnt.stats()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(mnt.path / "shared.bin"), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in range(6)
    ]
    for seed, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        whole, *parts = out.decode().split()
        assert whole == hashlib.sha256(body).hexdigest()
        rnd = random.Random(seed)
        for part in parts:
            o = rnd.randrange(len(body))
            assert part == hashlib.sha256(body[o : o + 65536]).hexdigest()[:12]
    after = mnt.stats()
    fetched = _delta(before["s3"], after["s3"], "bytes_fetched")
    assert len(body) <= fetched <= 1.1 * len(body)  # six readers, each byte fetched once


def test_mmap_reads(mnt: FuseMount) -> None:
    """What numpy.memmap and safetensors do: map the file, read slices and typed views."""
    body = FILES["mm.bin"]
    with open(mnt.path / "mm.bin", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert len(m) == len(body)
        rnd = random.Random(3)
        for _ in range(50):
            off = rnd.randrange(len(body) - 5000)
            assert m[off : off + 5000] == body[off : off + 5000]
        view = memoryview(m)[: len(body) // 4 * 4].cast("I")  # a tensor of uint32
        try:
            expected = memoryview(body)[: len(body) // 4 * 4].cast("I")
            assert sum(view[::1024]) == sum(expected[::1024])
        finally:
            view.release()
        assert m[-100:] == body[-100:]
        assert hashlib.sha256(m).digest() == hashlib.sha256(body).digest()
    with open(mnt.path / "mm.bin", "rb") as f:  # a private (copy-on-write) map, as np.load does
        m2 = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        m2[:4] = b"XXXX"  # changes the copy only
        assert m2[4:100] == body[4:100]
        m2.close()
    assert (mnt.path / "mm.bin").read_bytes()[:4] == body[:4]


# -- read amplification -----------------------------------------------------------------------
def test_read_amplification_sequential(mnt: FuseMount) -> None:
    before = mnt.stats()["cache"]
    with open(mnt.path / "seq.bin", "rb") as f:
        while f.read(1 << 20):
            pass
    after = mnt.stats()["cache"]
    fetched = _delta(before, after, "fetched_bytes.seq") + _delta(
        before, after, "fetched_bytes.random"
    )
    read = len(FILES["seq.bin"])
    assert fetched / read <= 1.1, (fetched, read)
    assert after["read_amplification.seq"] is not None  # reported in the stats file


def _random_reads(
    m: FuseMount, key: str, size: int, count: int, align: int
) -> tuple[int, int, int]:
    """(bytes the app read, bytes fetched, GETs) for ``count`` random preads (FADV_RANDOM) at
    offsets aligned to ``align``, each in its own slot of ``2 * size`` bytes (no overlap)."""
    body = FILES[key]
    before = m.stats()["cache"]
    rnd = random.Random(size)
    slot = max(2 * size, 4 * align)
    fd = os.open(m.path / key, os.O_RDONLY)
    got = 0
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for n in rnd.sample(range(len(body) // slot - 1), count):
            off = n * slot + rnd.randrange(size)
            off -= off % align
            data = os.pread(fd, size, off)
            assert data == body[off : off + size]
            got += len(data)
    finally:
        os.close(fd)
    after = m.stats()["cache"]
    fetched = sum(_delta(before, after, f"fetched_bytes.{k}") for k in ("seq", "random"))
    gets = sum(_delta(before, after, f"gets.{k}") for k in ("seq", "random"))
    return got, fetched, gets


def test_read_amplification_random_128k(mnt: FuseMount) -> None:
    got, fetched, _ = _random_reads(mnt, "rand128.bin", 128 << 10, 100, 1)
    assert fetched / got <= 1.1, (fetched, got)


def test_random_4k_read_fetches_at_most_one_small_block(mnt: FuseMount) -> None:
    small = 8 << 10  # the default small block
    got, fetched, gets = _random_reads(mnt, "rand4k.bin", 4096, 200, 4096)
    assert gets == 200  # distinct 4 KiB-aligned pages, none sharing a small block's GET
    assert fetched <= 200 * small, (fetched, got)


# -- control files ----------------------------------------------------------------------------
def test_control_files_drop_metadata_for_a_subtree_and_the_kernel(
    mnt: FuseMount, hdfs: HdfsCluster
) -> None:
    client = hdfs_native.Client(hdfs.url)
    a, b = mnt.path / "ctl/a", mnt.path / "ctl/b"
    assert os.listdir(a) == ["file"]
    assert (b / "file").stat().st_size == 1
    with client.create(f"{ROOT}/ctl/a/new.txt") as f:
        f.write(b"new")
    client.delete(f"{ROOT}/ctl/b/file")
    with client.create(f"{ROOT}/ctl/b/file") as f:
        f.write(b"22")
    # cached: neither the user-space cache nor the kernel has seen the changes
    assert os.listdir(a) == ["file"]
    assert (b / "file").stat().st_size == 1
    mnt.invalidate("ctl/a")  # a sub-tree ...
    assert sorted(os.listdir(a)) == ["file", "new.txt"]
    assert (a / "new.txt").read_bytes() == b"new"
    assert (b / "file").stat().st_size == 1  # ... and only that sub-tree
    report = (mnt.path / ".unionstore" / "invalidate").read_text()  # reading drops it all
    assert '"invalidated": "/"' in report
    assert (b / "file").stat().st_size == 2
    assert (b / "file").read_bytes() == b"22"
    assert sorted(os.listdir(mnt.path / ".unionstore")) == ["invalidate", "stats"]


# -- permissions ------------------------------------------------------------------------------
def _as_user(uid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=60,
        user=uid,
        group=uid,
        extra_groups=[],
        cwd="/",
    )


def test_permission_bits_owner_and_umask(gw: GatewayProcess) -> None:
    with _mount(gw, uid=1234, gid=1234, umask="027", allow_other=True) as m:
        os.chmod(m.workdir, 0o755)  # mkdtemp's 0700 would stop other users before the mount
        st = os.stat(m.path / "one")
        assert (st.st_uid, st.st_gid) == (1234, 1234)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert stat.S_IMODE(os.stat(m.path / "small").st_mode) == 0o750
        owner = _as_user(1234, "cat", str(m.path / "one"))
        assert owner.returncode == 0 and owner.stdout == "1", owner.stderr
        other = _as_user(4321, "cat", str(m.path / "one"))
        assert other.returncode != 0 and "Permission denied" in other.stderr
        listing = _as_user(4321, "ls", str(m.path / "small"))
        assert listing.returncode != 0 and "Permission denied" in listing.stderr
        with pytest.raises(PermissionError):
            os.chmod(m.path / "one", 0o777)


def test_read_only_mount_refuses_writes(gw: GatewayProcess) -> None:
    with _mount(gw, read_only=True) as m:
        for action in (
            lambda: (m.path / "new-file").write_bytes(b"x"),
            lambda: os.mkdir(m.path / "newdir"),
            lambda: os.unlink(m.path / "one"),
            lambda: os.open(m.path / "one", os.O_WRONLY | os.O_APPEND),
        ):
            with pytest.raises(OSError) as info:
                action()
            assert info.value.errno == errno.EROFS
        assert (m.path / ".unionstore" / "invalidate").read_text()  # reading still drops


# -- restart ----------------------------------------------------------------------------------
def _daemon_and_its_restart(gw: GatewayProcess, tmp_path: Path) -> tuple[FuseMount, FuseMount]:
    """Two daemons (not started) for one mountpoint and one disk cache."""
    a, b = (
        _mount(gw, workdir=tmp_path / w, mountpoint=tmp_path / "mnt", cache_dir=tmp_path / "cache")
        for w in ("a", "b")
    )
    return a, b


def test_restart_after_crash_remounts_and_reuses_the_disk_cache(
    gw: GatewayProcess, tmp_path: Path
) -> None:
    body = FILES["restart.bin"]
    first, second = _daemon_and_its_restart(gw, tmp_path)
    try:
        first.start()
        assert (first.path / "restart.bin").read_bytes() == body
        poll_until(
            lambda: first.stats()["cache"]["unwritten_blocks"] == 0,
            30,
            "blocks to reach the disk cache",
        )
        first.kill()
        with pytest.raises(OSError) as info:
            os.statvfs(first.path)
        assert info.value.errno == errno.ENOTCONN
        second.start()  # cleans the stale mount, mounts the same path again
        assert is_mounted(second.path)
        assert (second.path / "restart.bin").read_bytes() == body
        stats = second.stats()
        assert stats["s3"].get("requests.GetObject", 0) == 0, stats
        assert "stale mount" in second.log_tail()
    finally:
        second.stop()
        first.stop()
    assert not is_mounted(tmp_path / "mnt")


def test_small_files_stored_after_their_replies_survive_a_crash(
    gw: GatewayProcess, tmp_path: Path
) -> None:
    """Cold 100 KB files read by 8 threads at once: their blocks reach the disk cache after
    the replies, in batches; once written they are served after a crash without a GET."""
    names = sorted(k for k in FILES if k.startswith("cold/"))
    first, second = _daemon_and_its_restart(gw, tmp_path)
    try:
        first.start()
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda k: (first.path / k).read_bytes(), names))
        assert got == [FILES[k] for k in names]
        poll_until(
            lambda: first.stats()["cache"]["unwritten_blocks"] == 0,
            30,
            "blocks to reach the disk cache",
        )
        cache = first.stats()["cache"]
        assert cache["disk.blocks"] == len(names) >= cache["disk.batches"], cache
        first.kill()
        second.start()
        for k in names:
            assert (second.path / k).read_bytes() == FILES[k], k
        stats = second.stats()
        assert stats["s3"].get("requests.GetObject", 0) == 0, stats
        assert stats["cache"]["hits.disk"] == len(names), stats
    finally:
        second.stop()
        first.stop()


def test_errors_at_the_boundary_never_stop_the_daemon(hdfs: HdfsCluster) -> None:
    config = {
        "mounts": [{"bucket": "train", "uri": hdfs.url + ROOT}],
        "cache": {"metadata_ttl": "0"},
    }
    gateway = GatewayProcess(config).start()
    try:
        with FuseMount(
            gateway.endpoint, "train", access_key=ADMIN_KEY, secret_key=ADMIN_SECRET
        ) as m:
            fd = os.open(m.path / "big.bin", os.O_RDONLY)
            try:
                assert os.pread(fd, 10, 0) == FILES["big.bin"][:10]
                gateway.stop()  # the endpoint goes away under an open file
                with pytest.raises(OSError) as info:
                    os.pread(fd, 4096, 30 << 20)
                assert info.value.errno == errno.EIO
                m.invalidate()
                with pytest.raises(OSError) as info:
                    os.listdir(m.path / "d1")
                assert info.value.errno == errno.EIO
            finally:
                os.close(fd)
            assert m.alive(), m.log_tail()
            assert os.listdir(m.path / ".unionstore")  # still answering
    finally:
        gateway.close()
