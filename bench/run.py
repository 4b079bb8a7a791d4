"""Side-by-side benchmark of the S3 read path: unionstore vs hdfs-s3-gateway (Rust, PyPI).

    python -m bench.run [--quick] [--only ROW[,ROW]] [--out docs/benchmarks.md]

Starts a real HDFS (NameNode + DataNode on loopback), writes the test data into it once with
hdfs-native, then per round starts both gateways on the same HDFS folder and drives both with
the same load generator (bench/loadgen.py), alternating which one goes first. Prints a table
with ratios (unionstore / peer: > 1 means unionstore is faster), writes the raw numbers to
bench/results/*.json and the section for this run into docs/benchmarks.md.

Rows (see bench/README.md): get1g (1 GiB GET, first read with the DataNode's block files
evicted from the page cache, then a second read), get100k, head, list (req/s, 16 connections,
fixed duration). Everything started is stopped at the end, also on error, Ctrl-C, SIGTERM or
when --time-limit passes.
"""

from __future__ import annotations

import _thread
import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/run.py` works too, not only `-m bench.run`
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    BIG_KEY,
    BIG_SIZE,
    BUCKET,
    HDFS_ROOT,
    MIB,
    arm_time_limit,
    big_get_fields,
    git_dirty,
    git_head,
    guarded_run,
    host_facts,
    machine_cpu,
    machine_text,
    markdown_table,
    median,
    notes_lines,
    presigner,
    print_notes,
    proc_cpu_seconds,
    ratio_text,
    request,
    stamped_path,
    tamper,
    write_big_object,
    write_json,
)
from bench.loadgen import (  # noqa: E402
    LoadResult,
    percentile,
    run_load,
    stream_get,
    wrk_available,
)
from tests.support.gateway import ADMIN_SECRET, GatewayProcess  # noqa: E402
from tests.support.hdfs import HdfsCluster, stop_group  # noqa: E402
from tests.support.pagecache import drop_from_page_cache  # noqa: E402
from tests.support.ports import LOOPBACK, free_port, log_tail, wait_for_port  # noqa: E402

# ---- the data set --------------------------------------------------------------------------

SMALL_PREFIX = "small/"
SMALL_COUNT = 1000
SMALL_SIZE = 100 * 1024
LIST_PAGE = 100

OURS = "unionstore"
PEER = "hdfs-s3-gateway"
#: unionstore configurations that can be run (--gateways); each is compared with the peer.
#: "unionstore" is the gateway as shipped (defaults of `unionstore serve`).
OUR_VARIANTS: dict[str, dict[str, Any]] = {
    OURS: {},
    "unionstore-nocache": {"cache": {"enabled": False}},
    "unionstore-2workers": {"workers": 2},
}
VARIANT_NOTES = {
    OURS: "as shipped: `unionstore serve` defaults (metadata cache and on-disk block cache on, "
    "1 worker process)",
    "unionstore-nocache": "`[cache] enabled = false`: every request goes to HDFS (the bare "
    "read path)",
    "unionstore-2workers": "`workers = 2`: two hypercorn worker processes sharing one block cache",
}
#: The server's floor (bench/floor.py): hypercorn with an app that answers from memory, by
#: worker count. Not a gateway: the most any app on this server stack can do per request.
FLOORS: dict[str, int] = {"hypercorn-floor": 1, "hypercorn-floor-2workers": 2}
VARIANT_NOTES.update(
    {
        name: f"not a gateway: hypercorn ({n} worker{'s' if n > 1 else ''}, uvloop, the "
        "gateway's settings) with an app that answers from memory and checks nothing "
        "(bench/floor.py), the most any app on this server can do per request"
        for name, n in FLOORS.items()
    }
)
DEFAULT_SIDES = (OURS, "unionstore-nocache", PEER)
ALL_SIDES = (*OUR_VARIANTS, *FLOORS, PEER)

ROWS: dict[str, str] = {
    "get1g": "GET 1 GiB object (GB/s)",
    "get100k": "GET 100 KiB objects (req/s)",
    "head": "HEAD object (req/s)",
    "list": f"ListObjectsV2, {LIST_PAGE} keys a page (req/s)",
}
DEFAULT_SECTION = "S3 read path (issue 2)"


def small_key(i: int) -> str:
    return f"{SMALL_PREFIX}k{i:04d}"


def small_bytes(i: int) -> bytes:
    return random.Random(f"small-{i}").randbytes(SMALL_SIZE)


def list_start_afters() -> list[str]:
    """start-after values that give SMALL_COUNT / LIST_PAGE distinct full pages."""
    return [""] + [small_key(p * LIST_PAGE - 1) for p in range(1, SMALL_COUNT // LIST_PAGE)]


async def _write_data_async(url: str) -> None:
    import hdfs_native
    from hdfs_native import WriteOptions

    client = hdfs_native.AsyncClient(url)
    for d in ("big", "small"):
        await client.mkdirs(f"{HDFS_ROOT}/{d}", create_parent=True)
    opts = WriteOptions(overwrite=True)
    sem = asyncio.Semaphore(16)

    async def put_small(i: int) -> None:
        async with sem:
            w = await client.create(f"{HDFS_ROOT}/{small_key(i)}", opts)
            await w.write(small_bytes(i))
            await w.close()

    await asyncio.gather(*(put_small(i) for i in range(SMALL_COUNT)))
    await write_big_object(client, opts)


# The writer runs in a child process: once, an hdfs-native AsyncClient hung in its teardown
# after every byte was written (main thread in a futex, where no signal handler can run).
_WRITER = """
import asyncio, os, sys
from bench.run import _write_data_async
loop = asyncio.new_event_loop()
loop.run_until_complete(_write_data_async(sys.argv[1]))
print("DATA-OK", flush=True)
os._exit(0)  # skip the client's teardown
"""


def write_data(hdfs: HdfsCluster, workdir: Path, timeout: float = 300.0) -> float:
    """Write the data set into HDFS from a child process; bounded by `timeout`."""
    t0 = time.monotonic()
    out = workdir / "writer.log"
    env = {**os.environ, "HADOOP_USER_NAME": hdfs.superuser}
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, hdfs.url],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    WATCHDOG.register(proc.pid)
    try:
        while proc.poll() is None:  # short waits, so signal handlers run in between
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"writing the data set took over {timeout:.0f} s")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.5)
    finally:
        stop_group(proc, grace=2.0)
        WATCHDOG.unregister(proc.pid)
    text = out.read_text(errors="replace")
    if "DATA-OK" not in text:
        raise RuntimeError(f"writing the data set failed ({proc.returncode}):\n{text[-3000:]}")
    return time.monotonic() - t0


def datanode_block_files(hdfs: HdfsCluster) -> list[Path]:
    return sorted(p for p in (hdfs.home / "data").rglob("blk_*") if p.is_file())


def evict_datanode_blocks(hdfs: HdfsCluster) -> dict[str, Any]:
    """Drop the DataNode's block files (only those) from the OS page cache, so the next read
    comes from disk: fsync, then posix_fadvise(DONTNEED). Returns what fincore then reports."""
    files = datanode_block_files(hdfs)
    for p in files:
        drop_from_page_cache(p)
    return {
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "resident_after": resident_bytes(files),
    }


def resident_bytes(files: list[Path]) -> int | None:
    """Bytes of `files` in the page cache, by util-linux fincore (None if it is missing)."""
    if not files or shutil.which("fincore") is None:
        return None
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if out.returncode != 0:
        return None
    return sum(int(x) for x in out.stdout.split() if x.isdigit())


# ---- the two gateways ----------------------------------------------------------------------

# Runs the Rust peer in its own process: no GIL shared with the load generator, and killable.
PEER_LAUNCHER = r"""
import ctypes, json, os, signal, sys, threading
try:  # die with the runner even if it is SIGKILLed (PR_SET_PDEATHSIG = 1)
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
except OSError:
    pass
from hdfs_s3_gateway import Gateway
cfg = json.loads(sys.argv[1])
gw = Gateway(**cfg)
stop = threading.Event()
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, lambda *_: stop.set())
gw.start()
print("READY", gw.address, "cache_enabled=%s" % gw.cache_enabled, flush=True)
while not stop.wait(1.0):
    if os.getppid() == 1:
        break
gw.stop()
print("STOPPED", flush=True)
"""


class ServerProcess:
    """A server under test in a process group of its own, on a free loopback port, its
    output in a log file."""

    def __init__(self, workdir: Path, log_name: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / log_name
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], Path]:
        """(argv, working folder)."""
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> ServerProcess:
        argv, cwd = self.command()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        try:
            wait_for_port(LOOPBACK, self.port, timeout, self.proc, self.log_path)  # type: ignore[arg-type]
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, grace=10.0)
        self.proc = None

    def log_tail(self) -> str:
        return log_tail(self.log_path)


class PeerProcess(ServerProcess):
    """hdfs-s3-gateway in a `python -c` subprocess."""

    def __init__(self, namenode_uri: str, workdir: Path) -> None:
        super().__init__(workdir, "peer.log")
        self.config = {
            "namenode_uri": namenode_uri,
            "hdfs_root": HDFS_ROOT,
            "bucket_name": BUCKET,
            "cache_enabled": True,
            "listen_addr": f"{LOOPBACK}:{self.port}",  # never the 0.0.0.0:8080 default
            "auth_secret": ADMIN_SECRET,  # SigV4 checked on every request, as on our side
        }

    def command(self) -> tuple[list[str], Path]:
        return [sys.executable, "-c", PEER_LAUNCHER, json.dumps(self.config)], self.workdir


class FloorProcess(ServerProcess):
    """bench/floor.py's hypercorn."""

    def __init__(self, workers: int, workdir: Path) -> None:
        super().__init__(workdir, "floor.log")
        self.workers = workers

    def command(self) -> tuple[list[str], Path]:
        return [sys.executable, "-m", "bench.floor", str(self.port), str(self.workers)], REPO


class Watchdog:
    """The last line of the time limit. The main thread gets SIGALRM at the limit (and a
    KeyboardInterrupt from here), so normally it cleans up itself; but native code (an HDFS
    client, say) can block it where no signal handler runs. `grace` seconds after the limit,
    this thread kills every process group still registered and ends the process."""

    def __init__(self) -> None:
        self.pgids: set[int] = set()
        self.deadline = float("inf")
        self.grace = 60.0
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def register(self, pgid: int) -> None:
        self.pgids.add(pgid)

    def unregister(self, pgid: int) -> None:
        self.pgids.discard(pgid)

    def start(self, limit: float) -> None:
        self.deadline = time.monotonic() + limit
        self.thread = threading.Thread(target=self._watch, name="bench-watchdog", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.done.set()

    def _watch(self) -> None:
        if self.done.wait(max(0.0, self.deadline - time.monotonic())):
            return
        _thread.interrupt_main()  # in case SIGALRM did not get through
        if self.done.wait(self.grace):
            return
        print(
            "[bench] main thread stuck past the time limit: killing what it started",
            file=sys.stderr,
            flush=True,
        )
        for pgid in list(self.pgids):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        os._exit(124)


WATCHDOG = Watchdog()


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def group_pids(pgid: int) -> list[int]:
    """Every live process in process group `pgid` (a gateway and its worker processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def group_peak_rss(pgid: int) -> int:
    """Sum of VmHWM over the group: exact for one process, an upper bound for several."""
    total = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError, RuntimeError):
            total += _vm_hwm(pid)
    return total


@dataclass
class Side:
    """One running gateway with its pre-signed URLs."""

    name: str
    endpoint: str
    pgid: int  # the gateway's process group (it was started with start_new_session)
    stop: Callable[[], None]
    log_tail: Callable[[], str]
    urls: dict[str, list[str]] = field(default_factory=dict)

    def peak_rss(self) -> int:
        return group_peak_rss(self.pgid)

    def presign_all(self) -> None:
        s3 = presigner(self.endpoint)

        def sign(op: str, **params: Any) -> str:
            url: str = s3.generate_presigned_url(
                op, Params={"Bucket": BUCKET, **params}, ExpiresIn=3600
            )
            return url

        keys = [small_key(i) for i in range(SMALL_COUNT)]
        self.urls = {
            "big": [sign("get_object", Key=BIG_KEY)],
            "get100k": [sign("get_object", Key=k) for k in keys],
            "head": [sign("head_object", Key=k) for k in keys],
            "list": [
                sign("list_objects_v2", Prefix=SMALL_PREFIX, MaxKeys=LIST_PAGE, StartAfter=s)
                for s in list_start_afters()
            ],
            "missing": [sign("get_object", Key="small/no-such-key")],
        }


def start_side(name: str, hdfs: HdfsCluster, workdir: Path) -> Side:
    if name == PEER:
        peer = PeerProcess(hdfs.url, workdir).start()
        return Side(PEER, peer.endpoint, peer.pid, peer.stop, peer.log_tail)
    if name in FLOORS:
        floor = FloorProcess(FLOORS[name], workdir).start(timeout=60.0)
        return Side(name, floor.endpoint, floor.pid, floor.stop, floor.log_tail)
    config = {
        "mounts": [{"bucket": BUCKET, "uri": hdfs.url + HDFS_ROOT}],
        **OUR_VARIANTS[name],
    }
    gw = GatewayProcess(config, workdir=workdir)
    gw.start(timeout=60)
    assert gw.proc is not None
    return Side(name, gw.endpoint, gw.proc.pid, gw.stop, gw.log_tail)


# ---- correctness (untimed) ---------------------------------------------------------------------


def check_side(side: Side) -> list[str]:
    """Both gateways must serve the same bytes and check signatures; returns problems found
    (an empty list when all is well). Problems are reported, not hidden."""
    problems: list[str] = []
    status, headers, _ = request(side.urls["head"][3], "HEAD")
    if status != 200 or headers.get("content-length") != str(SMALL_SIZE):
        problems.append(f"HEAD {small_key(3)}: {status} length={headers.get('content-length')}")
    status, _, body = request(side.urls["get100k"][7])
    if status != 200 or body != small_bytes(7):
        same = body == small_bytes(7)
        problems.append(f"GET {small_key(7)}: {status}, {len(body)} bytes, same bytes={same}")
    status, _, body = request(side.urls["list"][1])
    want = [small_key(i) for i in range(LIST_PAGE, 2 * LIST_PAGE)]
    got: list[str] = []
    if status == 200:
        root = ET.fromstring(body)
        got = [el.text or "" for el in root.iter() if el.tag.endswith("}Key") or el.tag == "Key"]
    if status != 200 or got != want:
        problems.append(f"LIST page 2: {status}, {len(got)} keys, first={got[:1]}")
    status, _, _ = request(side.urls["missing"][0])
    if status != 404:
        problems.append(f"GET of a missing key: {status}, wanted 404")
    status, _, _ = request(tamper(side.urls["get100k"][0]))
    if status != 403 and side.name not in FLOORS:
        problems.append(f"GET with a wrong signature: {status}, wanted 403 (auth not enforced?)")
    return problems


# ---- CPU accounting --------------------------------------------------------------------------


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def group_cpu_seconds(pgid: int) -> dict[int, float]:
    return {pid: proc_cpu_seconds(pid) for pid in group_pids(pgid)}


class CpuWindow:
    """CPU used over a measured window, as % of one core (200 = both cores of this box):
    `gateway` (its whole process group), `loadgen` (this process and its children),
    `namenode`, `datanode`, `machine` (all busy time, kernel included), `steal` (taken by the
    hypervisor) and `rest` = machine - the named ones (other tenants, kernel work not charged
    to a process)."""

    def __init__(self, gateway_pgid: int, jvms: dict[str, int]) -> None:
        self.pgid = gateway_pgid
        self.jvms = jvms

    def __enter__(self) -> CpuWindow:
        self.t0 = time.perf_counter()
        self.gw0 = group_cpu_seconds(self.pgid)
        self.jvm0 = {k: proc_cpu_seconds(p) for k, p in self.jvms.items()}
        self.self0 = self_cpu_seconds()
        self.m0 = machine_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        gw1 = group_cpu_seconds(self.pgid)
        gw = sum(v - self.gw0.get(pid, 0.0) for pid, v in gw1.items())
        jvm1 = {k: proc_cpu_seconds(p) for k, p in self.jvms.items()}
        m1 = machine_cpu()
        self.wall = wall
        pct = {k: 100 * (jvm1[k] - self.jvm0[k]) / wall for k in self.jvms}
        pct["gateway"] = 100 * gw / wall
        pct["loadgen"] = 100 * (self_cpu_seconds() - self.self0) / wall
        pct["machine"] = 100 * (m1[0] - self.m0[0]) / wall
        pct["steal"] = 100 * (m1[1] - self.m0[1]) / wall
        pct["rest"] = (
            pct["machine"] - pct["steal"] - sum(pct[k] for k in ("gateway", "loadgen", *self.jvms))
        )
        self.pct = pct


class QuietWaiter:
    """Before each measurement, wait (boundedly) until the rest of this shared machine is
    quiet: sample whole-machine busy time over 0.5 s and go on once it is below `threshold` %
    of one core, or when this measurement's (or the run's) waiting budget is used up."""

    def __init__(self, threshold: float, per_wait: float, budget: float) -> None:
        self.threshold = threshold
        self.per_wait = per_wait
        self.budget = budget
        self.waited = 0.0

    def wait(self) -> dict[str, float]:
        t0 = time.monotonic()
        busy = float("nan")
        while True:
            b0, _ = machine_cpu()
            time.sleep(0.5)
            b1, _ = machine_cpu()
            busy = 100 * (b1 - b0) / 0.5
            spent = time.monotonic() - t0
            if busy < self.threshold or spent >= self.per_wait:
                break
            if self.waited + spent >= self.budget:
                break
        spent = time.monotonic() - t0
        self.waited += spent
        return {"waited_s": spent, "machine_busy_pct": busy}


# ---- measurements ---------------------------------------------------------------------------


@dataclass
class Settings:
    seconds: float
    warmup: float
    connections: int
    backend: str
    quiet: QuietWaiter | None = None
    slices: int = 5


def measure_big(
    side: Side, hdfs: HdfsCluster, settings: Settings, jvms: dict[str, int]
) -> dict[str, Any]:
    url = side.urls["big"][0]
    out: dict[str, Any] = {"evict": evict_datanode_blocks(hdfs)}
    for label in ("first", "second"):
        quiet = settings.quiet.wait() if settings.quiet else None
        with CpuWindow(side.pgid, jvms) as cpu:
            r = stream_get(url)
        got = big_get_fields(r)
        out[label] = {
            **got,
            "errors": 0 if got["content_ok"] else 1,
            "cpu_pct": cpu.pct,
            "quiet": quiet,
            "rss_peak_so_far": side.peak_rss(),
        }
    return out


def _warm_up(side: Side, row: str, settings: Settings) -> dict[str, Any]:
    """One pass over every URL (each object and page requested once, so caches on either side
    hold what they will hold), then `warmup` more seconds; neither is measured."""
    method = "HEAD" if row == "head" else "GET"
    urls = side.urls[row]
    warm = run_load(
        urls, method=method, connections=settings.connections, seconds=120, max_requests=len(urls)
    )
    if settings.warmup > 0:
        run_load(urls, method=method, connections=settings.connections, seconds=settings.warmup)
    return {"seconds": warm.seconds, "requests": warm.requests, "errors": warm.errors}


def measure_load_interleaved(
    sides: list[Side], row: str, settings: Settings, jvms: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Measure a req/s row on every gateway in short interleaved slices (A B C, B C A, ...)
    rather than one long run each, so a burst of other jobs on this shared machine lands on
    all of them alike. Each gateway gets `settings.seconds` in all."""
    method = "HEAD" if row == "head" else "GET"
    out: dict[str, dict[str, Any]] = {}
    live: list[Side] = []
    warm: dict[str, dict[str, Any]] = {}
    for side in sides:
        try:
            warm[side.name] = _warm_up(side, row, settings)
            live.append(side)
        except Exception as exc:
            out[side.name] = {"error": f"warm-up: {type(exc).__name__}: {_first_line(exc)[:200]}"}
    quiet = settings.quiet.wait() if settings.quiet else None
    parts: dict[str, list[tuple[LoadResult, CpuWindow]]] = {s.name: [] for s in live}
    slice_s = settings.seconds / settings.slices
    for i in range(settings.slices):
        k = i % len(live) if live else 0
        for side in live[k:] + live[:k]:
            if side.name in out:  # failed in an earlier slice
                continue
            try:
                with CpuWindow(side.pgid, jvms) as cpu:
                    res = run_load(
                        side.urls[row],
                        method=method,
                        connections=settings.connections,
                        seconds=slice_s,
                        backend=settings.backend,
                    )
                parts[side.name].append((res, cpu))
            except Exception as exc:
                out[side.name] = {"error": f"{type(exc).__name__}: {_first_line(exc)[:200]}"}
    for side in live:
        if side.name in out:
            continue
        results = parts[side.name]
        seconds = sum(r.seconds for r, _ in results)
        requests = sum(r.requests for r, _ in results)
        wall = sum(c.wall for _, c in results)
        statuses: dict[str, int] = {}
        for r, _ in results:
            for code, n in r.statuses.items():
                statuses[str(code)] = statuses.get(str(code), 0) + n
        lat = sorted(x for r, _ in results for x in r.latencies)
        cpu_pct = {
            key: sum(c.pct[key] * c.wall for _, c in results) / wall for key in results[0][1].pct
        }
        out[side.name] = {
            "backend": results[0][0].backend,
            "connections": settings.connections,
            "slices": len(results),
            "seconds": seconds,
            "requests": requests,
            "errors": sum(r.errors for r, _ in results),
            "statuses": statuses,
            "body_bytes": sum(r.body_bytes for r, _ in results),
            "rps": requests / seconds if seconds else 0.0,
            "value": requests / seconds if seconds else None,
            "slice_rps": [r.rps for r, _ in results],
            "p50_ms": percentile(lat, 50) * 1000
            if lat
            else statistics.median(r.p50_ms for r, _ in results),
            "p99_ms": percentile(lat, 99) * 1000 if lat else max(r.p99_ms for r, _ in results),
            "reconnects": sum(r.reconnects for r, _ in results),
            "cpu_pct": cpu_pct,
            "quiet": quiet,
            "warmup_pass": warm[side.name],
            "rss_peak_so_far": side.peak_rss(),
            "gateway_cpu_us_per_req": cpu_pct["gateway"] / 100 * wall / requests * 1e6
            if requests
            else None,
            "loadgen_cpu_us_per_req": cpu_pct["loadgen"] / 100 * wall / requests * 1e6
            if requests
            else None,
        }
    return out


# ---- machine facts and versions --------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return pkg_version(dist)
    except PackageNotFoundError:
        return "not installed"


def machine_facts() -> dict[str, Any]:
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    import unionstore

    return {
        **host_facts(),
        "affinity": len(os.sched_getaffinity(0)),
        "java": (java.stderr.splitlines() or ["?"])[0],
        "unionstore": f"{unionstore.__version__} (git {git_head() or '?'}"
        f"{', uncommitted changes' if git_dirty() else ''})",
        "hdfs-s3-gateway": _version("hdfs-s3-gateway"),
        "hdfs-native": _version("hdfs-native"),
        "hypercorn": _version("hypercorn"),
        "uvloop": _version("uvloop"),
        "hadoop": "2.7.3 (jars from the pyspark 2.4.8 sdist)",
        "wrk": subprocess.run(
            ["wrk", "-v"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0]
        if wrk_available()
        else None,
    }


# ---- summary ---------------------------------------------------------------------------------

TABLE_ROWS: list[tuple[str, str, str, str]] = [
    # (id, label, row, key inside a measurement)
    ("get1g_first", "GET 1 GiB, 1st read, HDFS blocks not in page cache (GB/s)", "get1g", "first"),
    ("get1g_second", "GET 1 GiB, 2nd read (GB/s)", "get1g", "second"),
    ("get100k", "GET 100 KiB objects, {c} conns (req/s)", "get100k", ""),
    ("head", "HEAD object, {c} conns (req/s)", "head", ""),
    ("list", f"ListObjectsV2, {LIST_PAGE} keys/page, {{c}} conns (req/s)", "list", ""),
]


def _samples(runs: list[dict[str, Any]], row: str, key: str, side: str) -> list[dict[str, Any]]:
    out = []
    for rnd in runs:
        m = rnd["rows"].get(row, {}).get(side)
        if m is None:
            continue
        out.append(m[key] if key else m)
    return out


def _ratios(entry: dict[str, Any], sides: list[str]) -> dict[str, float | None]:
    peer = entry["sides"].get(PEER, {}).get("median")
    out: dict[str, float | None] = {}
    for side in sides:
        if side == PEER:
            continue
        ours = entry["sides"].get(side, {}).get("median")
        out[side] = ours / peer if ours and peer else None
    return out


def summarise(runs: list[dict[str, Any]], sides: list[str], connections: int) -> list[dict]:
    table: list[dict[str, Any]] = []
    for tid, label, row, key in TABLE_ROWS:
        entry: dict[str, Any] = {"id": tid, "label": label.format(c=connections), "sides": {}}
        for side in sides:
            ms = _samples(runs, row, key, side)
            if not ms:
                continue
            vals = [m["value"] for m in ms if m.get("value") is not None]
            cpu = [m["cpu_pct"] for m in ms if m.get("cpu_pct")]
            entry["sides"][side] = {
                "median": statistics.median(vals) if vals else None,
                "min": min(vals) if vals else None,
                "max": max(vals) if vals else None,
                "n": len(vals),
                "errors": sum(int(m.get("errors") or 0) for m in ms),
                "failed": [m["error"] for m in ms if m.get("error")],
                "p50_ms": median([m.get("p50_ms") for m in ms]),
                "p99_ms": median([m.get("p99_ms") for m in ms]),
                "ttfb_ms": median([m.get("ttfb_ms") for m in ms]),
                "cpu_pct": {k: statistics.median([c[k] for c in cpu]) for k in cpu[0]}
                if cpu
                else {},
            }
        entry["ratio"] = _ratios(entry, sides)
        table.append(entry)
    rss: dict[str, Any] = {"id": "rss", "label": "peak RSS of the gateway (MiB)", "sides": {}}
    for side in sides:
        vals = [r["rss"][side] / MIB for r in runs if r.get("rss", {}).get(side)]
        if vals:
            rss["sides"][side] = {
                "median": max(vals),  # the peak over all rounds
                "min": min(vals),
                "max": max(vals),
                "n": len(vals),
                "errors": 0,
                "failed": [],
            }
    rss["ratio"] = _ratios(rss, sides)
    table.append(rss)
    return table


def _fmt(v: float | None, gb: bool) -> str:
    if v is None:
        return "-"
    if gb:
        return f"{v:.2f}"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _cell(entry: dict[str, Any], side: str) -> str:
    s = entry["sides"].get(side)
    if s is None:
        return "not run"
    if s["median"] is None:
        why = s["failed"][0] if s["failed"] else f"{s['errors']} errors"
        return f"FAILED ({why})"[:90]
    text = _fmt(s["median"], "GB/s" in entry["label"])
    if s["errors"]:
        text += f" ({s['errors']} errors)"
    return text


def _short(side: str) -> str:
    return side.replace("unionstore", "us") if side != OURS else "us"


def floor_of(side: str) -> str:
    """The floor side with the worker count of gateway ``side``."""
    return next(name for name, n in FLOORS.items() if n == _workers(side))


def _floor_pairs(sides: list[str]) -> list[tuple[str, str]]:
    """(gateway, its floor) for the gateways of this run whose floor ran too."""
    return [
        (s, floor_of(s))
        for s in sides
        if s in OUR_VARIANTS and _workers(s) in FLOORS.values() and floor_of(s) in sides
    ]


def render_table(table: list[dict[str, Any]], sides: list[str]) -> str:
    ours = [s for s in sides if s != PEER]
    pairs = _floor_pairs(sides)
    head = ["row", *sides]
    if PEER in sides:
        head += [f"ratio {s} / peer" for s in ours]
    head += [f"{s} / {f}" for s, f in pairs]
    rows = []
    for e in table:
        cells = [e["label"], *(_cell(e, s) for s in sides)]
        if PEER in sides:
            cells += [ratio_text(e["ratio"].get(s)) for s in ours]
        for s, f in pairs:
            mine, floor = (e["sides"].get(x, {}).get("median") for x in (s, f))
            cells.append(f"{mine / floor:.0%}" if mine and floor and e["id"] != "rss" else "-")
        rows.append(cells)
    return markdown_table(head, rows)


def render_details(table: list[dict[str, Any]], sides: list[str]) -> str:
    lines = [
        "| row | gateway | median | min-max over rounds | latency p50 / p99 (ms) | errors "
        "| CPU, % of one core: gateway / loadgen / NameNode+DataNode / rest of machine |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for e in table:
        if e["id"] == "rss":
            continue
        gb = "GB/s" in e["label"]
        for side in sides:
            s = e["sides"].get(side)
            if s is None:
                continue
            if s.get("p50_ms") is not None and s.get("p99_ms") is not None:
                lat = f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}"
            elif s.get("ttfb_ms") is not None:
                lat = f"first byte {s['ttfb_ms']:.0f}"
            else:
                lat = "-"
            c = s.get("cpu_pct") or {}
            cpu = (
                f"{c['gateway']:.0f} / {c['loadgen']:.0f} / "
                f"{c.get('namenode', 0) + c.get('datanode', 0):.0f} / "
                f"{c['rest'] + c['steal']:.0f}"
                if c
                else "-"
            )
            lines.append(
                f"| {e['id']} | {side} | {_fmt(s['median'], gb)} | "
                f"{_fmt(s['min'], gb)}-{_fmt(s['max'], gb)} | {lat} | {s['errors']} | {cpu} |"
            )
    return "\n".join(lines)


def verdicts(table: list[dict[str, Any]], sides: list[str]) -> list[str]:
    out = []
    for side in sides:
        if side == PEER:
            continue
        if side in FLOORS:
            for e in table:
                r = e["ratio"].get(side)
                if r is not None and r < 1:
                    out.append(
                        f"- {side}, {e['label']}: the server with an empty app reaches "
                        f"{ratio_text(r)} the peer's rate: no app on it can reach 1x."
                    )
            continue
        for e in table:
            r = e["ratio"].get(side)
            if r is None:
                continue
            if e["id"] == "rss":
                more = "more" if r > 1 else "less"
                out.append(f"- {side}, {e['label']}: {ratio_text(r)} the peer's ({more} memory).")
            elif r >= 1.1:
                out.append(f"- {side}, {e['label']}: faster than the peer ({ratio_text(r)}).")
            elif r <= 0.9:
                out.append(
                    f"- {side}, {e['label']}: **loses** ({ratio_text(r)}; the peer is "
                    f"{1 / r:.1f}x faster)."
                )
            else:
                out.append(f"- {side}, {e['label']}: about even ({ratio_text(r)}).")
    return out


INTRO = """\
# Benchmarks

Sections: [S3 read path (issue 2)](#s3-read-path-issue-2) — `python -m bench.run`;
[Rate limits (issue 5)](#rate-limits-issue-5) — `python -m bench.ratelimit`;
[Caching (issue 3)](#caching-issue-3) — `python -m bench.caching`, and [where the
gateway's CPU goes](#where-the-gateways-cpu-goes-issue-3-analysis) — `python -m bench.cpu`;
[FUSE mount (issue 6)](#fuse-mount-issue-6) — `python -m bench.fuse_bench`.
Each was run on the same shared 2-core machine (the load averages are in each section):
read ratios, not absolute figures.

The read-path section: side-by-side runs of unionstore against
[hdfs-s3-gateway](https://pypi.org/project/hdfs-s3-gateway/) (a Rust HDFS-to-S3 gateway,
PyPI), made by `python -m bench.run` (how to run it and what each row means:
`bench/README.md`).

Method, in short:
- One real HDFS (Apache Hadoop 2.7.3 NameNode + DataNode on loopback), written once with
  hdfs-native; every gateway serves the same HDFS folder as bucket `bench`.
- Each gateway runs as its own process (the peer in a small Python launcher) and checks SigV4
  on every request (the peer with `auth_secret`). The load generator (`bench/loadgen.py`) is
  the same for all of them and sends pre-signed URLs made before the clock starts, so it signs
  nothing while measuring. Before measuring, each gateway must serve the right bytes, the right
  listing page, a 404 and a 403 for a bad signature.
- Each round starts every gateway afresh (empty caches, new cache folder), runs every row on
  each, rotating which one goes first, then stops them. A req/s row runs in short slices
  interleaved across the gateways (A B C, B C A, ...), so bursts of other jobs hit all alike.
  Tables show the median over rounds (for RSS: the peak).
- **These numbers are ratios from one run on a shared, noisy 2-core machine**, where the load
  generator, the NameNode, the DataNode and the gateway under test share the same two cores,
  and other jobs may run beside them (the "rest of machine" CPU column shows how much). Compare
  the ratio columns, not the absolute figures, and only within one run.
- Ratio = unionstore / peer: above 1 means unionstore is faster (for RSS: uses more memory).
"""


def render_section(
    title: str,
    facts: dict[str, Any],
    cfg: dict[str, Any],
    table: list[dict[str, Any]],
    notes: list[str],
) -> str:
    f = facts
    sides: list[str] = cfg["sides"]
    variants = [f"- `{s}`: {VARIANT_NOTES[s]}" for s in sides if s in VARIANT_NOTES]
    if PEER in sides:
        variants.append(
            f"- `{PEER}`: `Gateway(..., cache_enabled=True, auth_secret=...)` (its caches are "
            "metadata, block maps, listings and negative lookups; it has no data cache)"
        )
    parts = [
        f"## {title}",
        "",
        f"Run {f['date']}: `{cfg['command']}` - {cfg['rounds']} round(s), "
        f"{cfg['seconds']:g} s per req/s row and gateway"
        + (f" in {cfg['slices']} interleaved slices" if cfg.get("slices", 1) > 1 else "")
        + f" after a warm-up (one pass over every URL, then {cfg['warmup']:g} s), "
        f"{cfg['connections']} connections, load generator `{cfg['backend']}`; "
        f"whole run {cfg['elapsed']:.0f} s.",
        "",
        machine_text(f) + ".",
        "",
        f"Versions: unionstore {f['unionstore']}; hdfs-s3-gateway {f['hdfs-s3-gateway']}; "
        f"hdfs-native {f['hdfs-native']}; hypercorn {f['hypercorn']}, uvloop {f['uvloop']}; "
        f"Hadoop {f['hadoop']}; {f['java']}; Python {f['python']}.",
        "",
        f"Data: one {BIG_SIZE // MIB} MiB object; {SMALL_COUNT} objects of "
        f"{SMALL_SIZE // 1024} KiB in one folder (GET and HEAD cycle through all of them; LIST "
        f"pages through the same folder with `prefix=small/&max-keys={LIST_PAGE}"
        f"&start-after=...`, {SMALL_COUNT // LIST_PAGE} distinct pages).",
        "",
        "Gateways:",
        "",
        *variants,
        "",
        render_table(table, sides),
        "",
        *verdicts(table, sides),
        "",
        "Details (median over rounds; CPU in % of one core, so 200 = both cores of the box):",
        "",
        render_details(table, sides),
        "",
        *notes_lines(notes, "runner"),
    ]
    return "\n".join(parts)


def update_markdown(path: Path, title: str, section: str) -> None:
    """Rewrite the intro, replace the `## title` section (or append it), keep the others."""
    old = path.read_text() if path.exists() else ""
    sections = re.split(r"(?m)^(?=## )", old)[1:]
    heading = f"## {title}"
    body = section.rstrip("\n") + "\n\n"
    for i, chunk in enumerate(sections):
        if chunk.splitlines()[0].strip() == heading:
            sections[i] = body
            break
    else:
        sections.append(body)
    sections = [c.rstrip("\n") + "\n\n" for c in sections]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((INTRO.rstrip("\n") + "\n\n" + "".join(sections)).rstrip("\n") + "\n")


def auto_notes(
    table: list[dict[str, Any]], runs: list[dict[str, Any]], cfg: dict[str, Any]
) -> list[str]:
    """Observations that follow from this run's own numbers (so they stay true on re-runs)."""
    cpu_bound: list[str] = []
    loadgen_heavy: list[str] = []
    disturbed: list[str] = []
    spread_out: list[str] = []
    for e in table:
        if e["id"] == "rss":
            continue
        for side, s in e["sides"].items():
            c = s.get("cpu_pct") or {}
            if c.get("loadgen", 0) >= 40:
                loadgen_heavy.append(f"{e['id']} on {side} ({c['loadgen']:.0f}%)")
            if side != PEER and c.get("gateway", 0) >= 90 * _workers(side):
                cpu_bound.append(f"{e['id']} on {side} ({c['gateway']:.0f}%)")
            if c.get("rest", 0) + c.get("steal", 0) >= 40:
                disturbed.append(f"{e['id']} on {side} ({c['rest'] + c['steal']:.0f}%)")
            if s["median"] and s["min"] and s["max"] and s["n"] > 1:
                spread = (s["max"] - s["min"]) / s["median"]
                if spread > 0.25:
                    spread_out.append(f"{e['id']} on {side} ({spread * 100:.0f}%)")
    findings = (
        (
            "CPU-bound in the unionstore gateway (its processes used >= 90% of a core per "
            "worker): ",
            cpu_bound,
        ),
        (
            "The load generator needed >= 40% of a core, which the gateway under test could "
            "not use on this 2-core box, so these figures are lower bounds: ",
            loadgen_heavy,
        ),
        (
            "Disturbed: >= 40% of a core went to the rest of the machine (other jobs, kernel "
            "work not charged to a process, steal) during: ",
            disturbed,
        ),
        ("Noisy: the rounds spread more than 25% around the median for: ", spread_out),
    )
    notes = [text + ", ".join(where) + "." for text, where in findings if where]
    evicts = [
        m["evict"]
        for r in runs
        for m in r["rows"].get("get1g", {}).values()
        if isinstance(m, dict) and "evict" in m
    ]
    res = [ev["resident_after"] for ev in evicts if ev.get("resident_after") is not None]
    if res:
        notes.append(
            f"1st 1 GiB read: right after the eviction at most {max(res) / MIB:.0f} MiB of the "
            f"{evicts[0]['bytes'] / MIB:.0f} MiB of DataNode block files were in the page cache "
            "(fincore), so that read came from disk."
        )
    if cfg.get("quiet_below"):
        busy = [m["quiet"]["machine_busy_pct"] for m in _measurements(runs) if m.get("quiet")]
        loud = [b for b in busy if b >= cfg["quiet_below"]]
        notes.append(
            f"Waited {cfg.get('quiet_waited', 0):.0f} s in all for the machine to be quiet "
            f"(< {cfg['quiet_below']:g}% of a core busy) before measurements; {len(loud)} of "
            f"{len(busy)} measurements started on a busier machine anyway (waiting is bounded)."
        )
    return notes


def _measurements(runs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every single measurement of a run (the 1 GiB row holds two: first and second)."""
    for r in runs:
        for row in r["rows"].values():
            for m in row.values():
                if "first" in m:
                    yield m["first"]
                    yield m["second"]
                else:
                    yield m


def _workers(side: str) -> int:
    if side in FLOORS:
        return FLOORS[side]
    return int(OUR_VARIANTS.get(side, {}).get("workers", 1))


# ---- the run ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="1 round, 3 s per req/s row")
    p.add_argument(
        "--only", default="", help=f"comma-separated rows to run: {', '.join(ROWS)} (default all)"
    )
    p.add_argument(
        "--gateways",
        default=",".join(DEFAULT_SIDES),
        help=f"comma-separated, from {', '.join(ALL_SIDES)} (default {','.join(DEFAULT_SIDES)})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "docs" / "benchmarks.md",
        help="markdown file to write this run's section into (default docs/benchmarks.md)",
    )
    p.add_argument("--no-write", action="store_true", help="print only; write no markdown")
    p.add_argument("--section", default=DEFAULT_SECTION, help="section title in --out")
    p.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    p.add_argument("--seconds", type=float, help="seconds per req/s row (default 10, --quick 3)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each req/s row (1; 0.5)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument(
        "--slices",
        type=int,
        help="a req/s row runs in this many interleaved slices per gateway (default 5, --quick 3)",
    )
    p.add_argument(
        "--loadgen",
        choices=("python", "wrk"),
        default="python",
        help="load generator for req/s rows (wrk cannot do HEAD, so HEAD always uses python)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        help="abort and clean up after this many seconds (default 900, --quick 300)",
    )
    p.add_argument(
        "--quiet-below",
        type=float,
        default=30.0,
        help="before each measurement wait (at most 10 s; 90 s a run, 30 s with --quick) "
        "until the whole machine is below this %% of one core busy; 0 = do not wait",
    )
    p.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="run nothing: print (and write, unless --no-write) the report of a saved run",
    )
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.slices = max(1, args.slices or (3 if args.quick else 5))
    args.time_limit = args.time_limit or (300.0 if args.quick else 900.0)
    args.rows = [r.strip() for r in args.only.split(",") if r.strip()] or list(ROWS)
    if unknown := [r for r in args.rows if r not in ROWS]:
        p.error(f"unknown row(s) {unknown}; choose from {list(ROWS)}")
    args.sides = [s.strip() for s in args.gateways.split(",") if s.strip()]
    if not args.sides or any(s not in ALL_SIDES for s in args.sides):
        p.error(f"--gateways takes names from {list(ALL_SIDES)}")
    if args.loadgen == "wrk" and not wrk_available():
        p.error("--loadgen wrk: wrk is not installed (apt-get install -y wrk)")
    return args


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def run_round(
    rnd: int,
    args: argparse.Namespace,
    hdfs: HdfsCluster,
    workdir: Path,
    notes: list[str],
    quiet: QuietWaiter | None,
) -> dict[str, Any]:
    k = rnd % len(args.sides)
    order = args.sides[k:] + args.sides[:k]  # rotate who goes first
    result: dict[str, Any] = {"round": rnd, "order": order, "rows": {}, "rss": {}, "checks": {}}
    sides: dict[str, Side] = {}
    settings = Settings(
        args.seconds, args.warmup, args.connections, args.loadgen, quiet, args.slices
    )
    assert hdfs.namenode_proc is not None and hdfs.datanode_proc is not None
    jvms = {"namenode": hdfs.namenode_proc.pid, "datanode": hdfs.datanode_proc.pid}
    try:
        for name in order:
            d = workdir / f"round{rnd}-{name}"
            d.mkdir(parents=True, exist_ok=True)
            try:
                side = start_side(name, hdfs, d)
            except Exception as exc:  # report it and run the others
                msg = f"round {rnd + 1}: {name} did not start: {_first_line(exc)[:300]}"
                log(msg)
                notes.append(msg)
                result["checks"][name] = [msg]
                continue
            sides[name] = side
            WATCHDOG.register(side.pgid)
            side.presign_all()
            problems = check_side(side)
            result["checks"][name] = problems
            for problem in problems:
                msg = f"round {rnd + 1}: {name} failed a correctness check: {problem}"
                log(msg)
                notes.append(msg)
        for row in args.rows:
            result["rows"][row] = {}
            running = [sides[name] for name in order if name in sides]
            if row == "get1g":
                for side in (s for s in running if s.name not in FLOORS):
                    log(f"round {rnd + 1}/{args.rounds}: {row} on {side.name}")
                    try:
                        m = measure_big(side, hdfs, settings, jvms)
                        log(
                            f"  1st {m['first']['gbps']:.3f} GB/s, 2nd {m['second']['gbps']:.3f}"
                            f" GB/s (bytes ok: {m['first']['content_ok']}, "
                            f"{m['second']['content_ok']}; block bytes in page cache after "
                            f"eviction: {m['evict']['resident_after']})"
                        )
                    except Exception as exc:
                        log(f"  FAILED: {exc!r}")
                        err = {"error": f"{type(exc).__name__}: {_first_line(exc)[:200]}"}
                        m = {"first": dict(err), "second": dict(err)}
                    result["rows"][row][side.name] = m
                continue
            log(
                f"round {rnd + 1}/{args.rounds}: {row} on "
                f"{', '.join(s.name for s in running)} ({settings.slices} interleaved slices)"
            )
            backend = "python" if row == "head" else args.loadgen
            got = measure_load_interleaved(running, row, replace(settings, backend=backend), jvms)
            for name, m in got.items():
                result["rows"][row][name] = m
                if "error" in m:
                    log(f"  {name}: FAILED: {m['error']}")
                    continue
                c = m["cpu_pct"]
                log(
                    f"  {name}: {m['rps']:,.0f} req/s, errors {m['errors']} {m['statuses']}; "
                    f"CPU gateway {c['gateway']:.0f}% loadgen {c['loadgen']:.0f}% "
                    f"HDFS {c['namenode'] + c['datanode']:.0f}% rest {c['rest']:.0f}%"
                )
        for name, side in sides.items():
            if name in FLOORS:  # it holds every answer in memory: its RSS says nothing
                continue
            with contextlib.suppress(Exception):
                result["rss"][name] = side.peak_rss()
    finally:
        for side in sides.values():
            try:
                side.stop()
                WATCHDOG.unregister(side.pgid)
            except Exception as exc:  # keep stopping the others
                log(f"stopping {side.name}: {exc!r}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        return render_saved(args.render, args)
    argv_used = sys.argv[1:] if argv is None else argv
    t_start = time.monotonic()
    arm_time_limit(args.time_limit)
    WATCHDOG.start(args.time_limit)
    facts = machine_facts()
    workdir = Path(tempfile.mkdtemp(prefix="unionstore-bench-"))
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    hdfs = HdfsCluster()
    quiet: QuietWaiter | None = None
    data_seconds = 0.0

    def stop() -> None:
        log("stopping HDFS")
        hdfs.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        WATCHDOG.stop()

    with guarded_run(stop, log) as ending:
        log(f"starting HDFS (work folder {workdir})")
        hdfs.start()
        for proc in (hdfs.namenode_proc, hdfs.datanode_proc):
            if proc is not None:
                WATCHDOG.register(proc.pid)
        log(
            f"HDFS up in {hdfs.startup_seconds:.1f} s; writing {BIG_SIZE // MIB} MiB + "
            f"{SMALL_COUNT} x {SMALL_SIZE // 1024} KiB"
        )
        data_seconds = write_data(hdfs, workdir)
        log(f"data written in {data_seconds:.1f} s")
        quiet = (
            QuietWaiter(args.quiet_below, per_wait=10.0, budget=30.0 if args.quick else 90.0)
            if args.quiet_below > 0
            else None
        )
        for rnd in range(args.rounds):
            runs.append(run_round(rnd, args, hdfs, workdir, notes, quiet))
    if ending.aborted:
        return 130
    facts["loadavg_end"] = os.getloadavg()
    cfg = {
        "command": " ".join(["python -m bench.run", *argv_used]),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "connections": args.connections,
        "slices": args.slices,
        "backend": args.loadgen,
        "rows": args.rows,
        "sides": args.sides,
        "elapsed": time.monotonic() - t_start,
        "data_write_seconds": data_seconds,
        "quiet_below": args.quiet_below,
        "quiet_waited": quiet.waited if quiet is not None else 0.0,
    }
    raw = stamped_path(args.results_dir, "read-path")
    doc = {"facts": facts, "config": cfg, "rounds": runs, "run_notes": notes}
    report(doc, args)
    write_json(raw, doc)
    log(f"raw results: {raw}")
    return 0


def report(doc: dict[str, Any], args: argparse.Namespace) -> None:
    """Summarise a run (fresh, or loaded with --render), print it, write the markdown."""
    facts, cfg, runs = doc["facts"], doc["config"], doc["rounds"]
    table = summarise(runs, cfg["sides"], cfg["connections"])
    notes = list(doc.get("run_notes", [])) + auto_notes(table, runs, cfg)
    doc["table"], doc["notes"] = table, notes
    print()
    print(render_table(table, cfg["sides"]))
    print()
    print("\n".join(verdicts(table, cfg["sides"])))
    print()
    print(render_details(table, cfg["sides"]))
    print_notes(notes)
    if not args.no_write:
        section = render_section(args.section, facts, cfg, table, notes)
        update_markdown(args.out, args.section, section)
        log(f"wrote the section '{args.section}' of {args.out}")


def render_saved(path: Path, args: argparse.Namespace) -> int:
    doc = json.loads(path.read_text())
    if "run_notes" not in doc:  # files from before run_notes: keep the runner's own notes
        doc["run_notes"] = [n for n in doc.get("notes", []) if n.startswith("round ")]
    doc["facts"]["loadavg_start"] = tuple(doc["facts"]["loadavg_start"])
    report(doc, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
