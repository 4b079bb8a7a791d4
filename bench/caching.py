"""The caching issue's benchmark rows (issue 3) that bench/run.py does not cover, side by side.

    python -m bench.caching [--quick] [--gateways unionstore,unionstore-2workers,hdfs-s3-gateway]

Starts a real HDFS (NameNode + DataNode on loopback), writes one 1 GiB object into it with
hdfs-native (the same bytes as bench/run.py's: MiB number i starts with i, so the first and last
MiB received are checked on every GET), measures the machine's loopback limit with iperf3 (and
a plain Python socket copy, the same receive loop as the load generator), then per round and per
gateway, alternating which one goes first:

- phase "single", on a freshly started gateway (empty cache): the DataNode's block files are
  evicted from the page cache, one cold GET (DataNode BytesRead counted), then cached GETs
  (2nd, 3rd, 4th read; BytesRead counted again), then 10 concurrent clients each stream the
  (cached) object while the gateway's RSS is sampled; its peak-RSS mark (VmHWM) is reset just
  before (``/proc/PID/clear_refs`` = 5), so the peak is that of this row alone;
- phase "herd", on another freshly started gateway (empty cache, block files evicted again):
  16 GETs of the cold object start together (a barrier); aggregate throughput = all bytes /
  wall time until the last one finishes; the DataNode's BytesRead delta / object size.

The rows and targets (issue 3, "Tests and benchmarks"):

- cached 1 GiB GET: >= 70 % of the loopback limit and >= 3x hdfs-s3-gateway;
- 16 concurrent readers of one cold 1 GiB object: HDFS bytes read <= 1.05x the object and
  aggregate throughput >= 4x hdfs-s3-gateway's;
- peak RSS while 10 clients stream 1 GiB objects: < 300 MB;
- cold 1 GiB GET (single reader): >= hdfs-s3-gateway.

Output: the table on stdout (progress on stderr); a markdown section "Caching (issue 3)" in
``bench/results/caching.md`` (meant for ``docs/benchmarks.md``: its plot link is relative to
``docs/``); the plot ``docs/img/caching.png``; the raw numbers in
``bench/results/<UTC time>-caching.json`` (not committed). Everything started (HDFS, each
gateway in its own process group, iperf3) is stopped at the end, also on an error, Ctrl-C,
SIGTERM/SIGHUP or when --time-limit passes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/caching.py` works too, not only `-m`
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    BIG_KEY,
    BIG_SIZE,
    BUCKET,
    CLK_TCK,
    HDFS_ROOT,
    MIB,
    arm_time_limit,
    big_content_ok,
    big_get_fields,
    guarded_run,
    machine_text,
    markdown_table,
    median,
    notes_lines,
    presigner,
    print_notes,
    pyplot,
    ratio_text,
    request,
    save_figure,
    stamped_path,
    tamper,
    write_big_object,
    write_json,
)
from bench.loadgen import StreamResult, stream_get  # noqa: E402
from bench.run import (  # noqa: E402
    OUR_VARIANTS,
    OURS,
    PEER,
    CpuWindow,
    QuietWaiter,
    Side,
    evict_datanode_blocks,
    group_pids,
    machine_facts,
    start_side,
)
from tests.support.hdfs import HdfsCluster, as_hdfs_user, stop_group  # noqa: E402
from tests.support.ports import LOOPBACK, free_port  # noqa: E402

MB = 1_000_000  # RSS in MB = 10^6 bytes, as the target reads "300 MB"
TWO_WORKERS = "unionstore-2workers"
ALL_SIDES = (OURS, TWO_WORKERS, PEER)
#: BytesRead counts what the DataNode sends: data plus a 4-byte CRC per 512-byte chunk.
CHECKSUM_FACTOR = 1 + 4 / 512
SECTION = "Caching (issue 3)"
HERD = 16  # concurrent cold readers
STREAMERS = 10  # concurrent cached streams for the RSS row
CACHED_READS = 3  # cached GETs after the cold one (2nd, 3rd, 4th read)

TARGETS = {
    "cached_vs_peer": 3.0,
    "cached_vs_loopback": 0.70,
    "herd_vs_peer": 4.0,
    "herd_hdfs_amp": 1.05,
    "rss_mb": 300.0,
    "cold_vs_peer": 1.0,
}


def log(msg: str) -> None:
    print(f"[caching {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- data ------------------------------------------------------------------------------------


async def _write_big(url: str) -> None:
    import hdfs_native
    from hdfs_native import WriteOptions

    client = hdfs_native.AsyncClient(url)
    await client.mkdirs(f"{HDFS_ROOT}/big", create_parent=True)
    await write_big_object(client, WriteOptions(overwrite=True))


def write_big(hdfs: HdfsCluster) -> float:
    """Only the 1 GiB object of bench/run.py's data set (same bytes); the small objects are
    not needed here."""
    t0 = time.monotonic()
    with as_hdfs_user(hdfs.superuser):
        asyncio.run(_write_big(hdfs.url))
    return time.monotonic() - t0


# ---- the loopback limit ----------------------------------------------------------------------


def iperf3_loopback(seconds: float, streams: int = 1) -> dict[str, Any]:
    """iperf3 over 127.0.0.1, one TCP stream or ``streams`` in parallel (server -1: exits
    after one test)."""
    if shutil.which("iperf3") is None:
        return {"error": "iperf3 not installed"}
    port = free_port()
    srv = subprocess.Popen(
        ["iperf3", "-s", "-B", LOOPBACK, "-p", str(port), "-1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # No connect probe: a bare connect would use up the one-off server. Retry instead.
        last = ""
        for _ in range(50):
            out = subprocess.run(
                ["iperf3", "-c", LOOPBACK, "-p", str(port), "-t", f"{seconds:g}", "-J"]
                + (["-P", str(streams)] if streams > 1 else []),
                capture_output=True,
                text=True,
                timeout=seconds + 30,
                check=False,
            )
            try:
                d = json.loads(out.stdout)
            except json.JSONDecodeError:
                d = {"error": out.stderr.strip() or "no JSON"}
            if "error" not in d and "end" in d:
                end = d["end"]
                cpu = end.get("cpu_utilization_percent", {})
                return {
                    "tool": "iperf3" if streams == 1 else f"iperf3 -P {streams}",
                    "seconds": seconds,
                    "gbps": end["sum_received"]["bits_per_second"] / 8 / 1e9,
                    "sender_gbps": end["sum_sent"]["bits_per_second"] / 8 / 1e9,
                    "cpu_sender_pct": cpu.get("host_total"),
                    "cpu_receiver_pct": cpu.get("remote_total"),
                }
            last = str(d.get("error"))
            if srv.poll() is not None:
                break
            time.sleep(0.1)
        return {"error": f"iperf3 failed: {last}"}
    finally:
        stop_group(srv, grace=5.0)


SOCKET_SENDER = r"""
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
buf = b"\0" * (1 << 20)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    s.sendall(buf)
s.close()
"""


def python_socket_copy(seconds: float) -> dict[str, Any]:
    """A sender process doing sendall(1 MiB) in a loop; this process receives with the load
    generator's loop (recv_into a 1 MiB buffer). The most a Python client can take in."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind((LOOPBACK, 0))
    lsock.listen(1)
    lsock.settimeout(15)
    port = lsock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SOCKET_SENDER, str(port), f"{seconds:g}"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(seconds + 15)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            view = memoryview(bytearray(1 << 20))
            n = conn.recv_into(view)
            t0 = time.perf_counter()
            total = 0
            while n:
                n = conn.recv_into(view)
                total += n
            t1 = time.perf_counter()
        return {"tool": "python socket copy", "seconds": t1 - t0, "gbps": total / (t1 - t0) / 1e9}
    except OSError as exc:
        return {"error": f"python socket copy failed: {exc!r}"}
    finally:
        lsock.close()
        stop_group(proc, grace=5.0)


# ---- helpers: HDFS counter, RSS, requests --------------------------------------------------


def settled_bytes_read(
    hdfs: HdfsCluster,
    changed_from: int | None = None,
    quiet_for: float = 2.2,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """The DataNode's BytesRead once it has settled: unchanged for `quiet_for` s (the JMX view
    is refreshed once a second). With `changed_from`, it must also have moved away from that
    value first (or `timeout` passes: then `settled` is False)."""
    t0 = time.monotonic()
    last = hdfs.datanode_bytes_read()
    last_change = t0
    moved = changed_from is None or last != changed_from
    while True:
        time.sleep(0.25)
        v = hdfs.datanode_bytes_read()
        now = time.monotonic()
        if v != last:
            last, last_change = v, now
        moved = moved or v != changed_from
        if moved and now - last_change >= quiet_for:
            return {"value": v, "waited_s": now - t0, "settled": True}
        if now - t0 >= timeout:
            return {"value": v, "waited_s": now - t0, "settled": False, "moved": moved}


def reset_peak_rss(pgid: int) -> bool:
    """Reset VmHWM to the current RSS for every process of the group (clear_refs = 5)."""
    ok = True
    for pid in group_pids(pgid):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def _rss_parts(pid: int) -> tuple[int, int, int]:
    """(VmRSS, RssAnon, RssFile + RssShmem) of a process, in bytes (0s if it is gone)."""
    vals = {"VmRSS:": 0, "RssAnon:": 0, "RssFile:": 0, "RssShmem:": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(None, 1)[0] if line else ""
            if key in vals:
                vals[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return vals["VmRSS:"], vals["RssAnon:"], vals["RssFile:"] + vals["RssShmem:"]


class RssSampler:
    """Samples the summed VmRSS of a process group every `interval` s in a thread."""

    def __init__(self, pgid: int, interval: float = 0.1) -> None:
        self.pids = group_pids(pgid)
        self.interval = interval
        self.peak = 0
        self.peak_anon = 0  # RssAnon at the sample with the highest VmRSS
        self.peak_file = 0  # RssFile + RssShmem (mapped files, e.g. SQLite's mmap) at it
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            parts = [_rss_parts(p) for p in self.pids]
            total = sum(x[0] for x in parts)
            if total > self.peak:
                self.peak = total
                self.peak_anon = sum(x[1] for x in parts)
                self.peak_file = sum(x[2] for x in parts)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def presign_big(endpoint: str) -> str:
    url: str = presigner(endpoint).generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": BIG_KEY}, ExpiresIn=3600
    )
    return url


def scrape_metrics(endpoint: str) -> dict[str, float]:
    """unionstore's own block-cache counters from /metrics (one worker's view)."""
    names = (
        "unionstore_ufs_read_bytes",
        "unionstore_served_bytes",
        "unionstore_block_hits",
        "unionstore_block_misses",
        "unionstore_fill_failures",
        "unionstore_fill_fallbacks",
        "unionstore_fills_shed",
    )
    out: dict[str, float] = {}
    try:
        parts = urlsplit(endpoint)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    except (OSError, http.client.HTTPException):
        return out
    for line in text.splitlines():
        for n in names:
            if line.startswith(n) and line[len(n) : len(n) + 1] in ("{", " "):
                with contextlib.suppress(ValueError):
                    out[n] = out.get(n, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def one_get(url: str) -> dict[str, Any]:
    return big_get_fields(stream_get(url, timeout=300))


def concurrent_gets(url: str, n: int) -> dict[str, Any]:
    """n GETs of `url` from n threads released together by a barrier; each on its own fresh
    connection, reading with stream_get (recv_into a 1 MiB buffer, bytes thrown away)."""
    barrier = threading.Barrier(n + 1)
    results: list[StreamResult | None] = [None] * n
    errors: list[str | None] = [None] * n
    starts = [0.0] * n
    ends = [0.0] * n

    def worker(i: int) -> None:
        barrier.wait()
        starts[i] = time.perf_counter()
        try:
            results[i] = stream_get(url, timeout=300)
        except Exception as exc:
            errors[i] = f"{type(exc).__name__}: {exc}"
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    wall = max(ends) - min(starts)
    received = sum(r.received for r in results if r is not None)
    oks = [r is not None and big_content_ok(r) for r in results]
    per = [r.gbps for r in results if r is not None]
    ttfb = [r.ttfb_seconds * 1000 for r in results if r is not None]
    return {
        "clients": n,
        "wall_s": wall,
        "received": received,
        "aggregate_gbps": received / wall / 1e9,
        "value": received / wall / 1e9 if all(oks) else None,
        "all_content_ok": all(oks),
        "failed": [e for e in errors if e]
        + [
            f"status {r.status}, {r.received} bytes, content ok {big_content_ok(r)}"
            for r in results
            if r is not None and not big_content_ok(r)
        ],
        "per_stream_gbps_min": min(per) if per else None,
        "per_stream_gbps_max": max(per) if per else None,
        "ttfb_ms_max": max(ttfb) if ttfb else None,
        "first_finish_s": min(ends) - min(starts),
    }


# ---- one gateway, one phase --------------------------------------------------------------------


class Ctx:
    def __init__(self, hdfs: HdfsCluster, workdir: Path, quiet: QuietWaiter | None) -> None:
        self.hdfs = hdfs
        self.workdir = workdir
        self.quiet = quiet
        assert hdfs.namenode_proc is not None and hdfs.datanode_proc is not None
        self.jvms = {"namenode": hdfs.namenode_proc.pid, "datanode": hdfs.datanode_proc.pid}

    def wait_quiet(self) -> dict[str, float] | None:
        return self.quiet.wait() if self.quiet else None


@contextlib.contextmanager
def running(name: str, ctx: Ctx, tag: str) -> Iterator[Side]:
    d = ctx.workdir / tag
    d.mkdir(parents=True, exist_ok=True)
    side = start_side(name, ctx.hdfs, d)
    try:
        yield side
    finally:
        try:
            side.stop()
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(side.pgid, signal.SIGKILL)  # stragglers of its group, if any
            shutil.rmtree(d, ignore_errors=True)  # its 1 GiB block cache


def _idle_iowait() -> tuple[float, float]:
    """(idle, iowait) CPU seconds of the whole machine so far, from /proc/stat."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return int(parts[3]) / CLK_TCK, int(parts[4]) / CLK_TCK


def dirty_bytes() -> int:
    """Dirty + Writeback pages of the whole machine (/proc/meminfo): the page cache still to
    be written to disk, e.g. a block cache that was just filled."""
    total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(("Dirty:", "Writeback:")):
            total += int(line.split()[1]) * 1024
    return total


def group_sched(pgid: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(ns on a CPU, ns runnable but waiting for a CPU) of every thread of the group, from
    /proc/PID/task/TID/schedstat."""
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    f = (task / "schedstat").read_text().split()
                    out[(pid, int(task.name))] = (int(f[0]), int(f[1]))
    return out


def sched_delta(
    a: dict[tuple[int, int], tuple[int, int]],
    b: dict[tuple[int, int], tuple[int, int]],
    main_only: bool = False,
) -> tuple[float, float]:
    """Seconds (running, waiting for a CPU) between two group_sched() snapshots, summed over
    all threads or only over each process's main thread (tid == pid: a unionstore worker's
    event loop)."""
    run = wait = 0
    for k, (r1, w1) in b.items():
        if main_only and k[0] != k[1]:
            continue
        r0, w0 = a.get(k, (0, 0))
        run += r1 - r0
        wait += w1 - w0
    return run / 1e9, wait / 1e9


def measured(ctx: Ctx, side: Side, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    quiet = ctx.wait_quiet()
    dirty = dirty_bytes()
    i0, w0 = _idle_iowait()
    s0 = group_sched(side.pgid)
    with CpuWindow(side.pgid, ctx.jvms) as cpu:
        m = fn()
    s1 = group_sched(side.pgid)
    i1, w1 = _idle_iowait()
    m["cpu_pct"] = dict(cpu.pct)
    m["cpu_pct"]["idle"] = 100 * (i1 - i0) / cpu.wall
    m["cpu_pct"]["iowait"] = 100 * (w1 - w0) / cpu.wall
    _run, wait = sched_delta(s0, s1)
    m["cpu_pct"]["gateway_waiting"] = 100 * wait / cpu.wall  # all threads: runnable, no CPU
    if side.name != PEER:  # the peer's main thread is its launcher, asleep; tokio does the work
        loop_run, loop_wait = sched_delta(s0, s1, main_only=True)
        m["cpu_pct"]["loop_running"] = 100 * loop_run / cpu.wall
        m["cpu_pct"]["loop_waiting"] = 100 * loop_wait / cpu.wall
    m["dirty_at_start"] = dirty
    m["quiet"] = quiet
    return m


def phase_single(name: str, ctx: Ctx, tag: str) -> dict[str, Any]:
    """Fresh gateway: cold GET, cached GETs, then 10 concurrent cached streams (RSS)."""
    out: dict[str, Any] = {}
    with running(name, ctx, tag) as side:
        url = presign_big(side.endpoint)
        out["auth_check_status"] = request(tamper(url), "HEAD")[0]  # wanted 403: auth is on
        out["evict"] = evict_datanode_blocks(ctx.hdfs)
        br0 = settled_bytes_read(ctx.hdfs)
        out["cold"] = measured(ctx, side, lambda: one_get(url))
        br1 = settled_bytes_read(ctx.hdfs, changed_from=br0["value"])
        out["cold"]["hdfs_bytes"] = br1["value"] - br0["value"]
        out["cold"]["hdfs_settled"] = br1["settled"]
        log(
            f"  {name}: cold GET {out['cold']['gbps']:.3f} GB/s, HDFS bytes "
            f"{out['cold']['hdfs_bytes'] / BIG_SIZE:.3f}x, bytes ok {out['cold']['content_ok']}"
        )
        out["cached"] = [measured(ctx, side, lambda: one_get(url)) for _ in range(CACHED_READS)]
        br2 = settled_bytes_read(ctx.hdfs)
        out["cached_hdfs_bytes"] = br2["value"] - br1["value"]
        log(
            f"  {name}: cached GETs "
            + ", ".join(f"{c['gbps']:.3f}" for c in out["cached"])
            + f" GB/s; HDFS bytes during them {out['cached_hdfs_bytes'] / BIG_SIZE:.3f}x"
        )
        if side.name != PEER:
            out["metrics_after_reads"] = scrape_metrics(side.endpoint)
        out["peak_rss_before_row"] = side.peak_rss()
        out["hwm_reset"] = reset_peak_rss(side.pgid)
        out["rss_after_reset"] = side.peak_rss()
        with RssSampler(side.pgid) as sampler:
            out["stream10"] = measured(ctx, side, lambda: concurrent_gets(url, STREAMERS))
        out["stream10"]["peak_rss"] = side.peak_rss()
        out["stream10"]["sampled_rss_max"] = sampler.peak
        out["stream10"]["sampled_rss_anon"] = sampler.peak_anon
        out["stream10"]["sampled_rss_file"] = sampler.peak_file
        out["stream10"]["rss_samples"] = sampler.samples
        s = out["stream10"]
        log(
            f"  {name}: {STREAMERS} cached streams {s['aggregate_gbps']:.3f} GB/s aggregate, "
            f"peak RSS {s['peak_rss'] / MB:.0f} MB (sampled max {sampler.peak / MB:.0f} MB), "
            f"all bytes ok {s['all_content_ok']}"
        )
    return out


def phase_herd(name: str, ctx: Ctx, tag: str) -> dict[str, Any]:
    """Fresh gateway (empty cache), HDFS blocks evicted: 16 cold GETs at once."""
    out: dict[str, Any] = {}
    with running(name, ctx, tag) as side:
        url = presign_big(side.endpoint)
        out["evict"] = evict_datanode_blocks(ctx.hdfs)
        br0 = settled_bytes_read(ctx.hdfs)
        out["herd"] = measured(ctx, side, lambda: concurrent_gets(url, HERD))
        br1 = settled_bytes_read(ctx.hdfs, changed_from=br0["value"], timeout=40)
        h = out["herd"]
        h["hdfs_bytes"] = br1["value"] - br0["value"]
        h["hdfs_settled"] = br1["settled"]
        h["hdfs_amp_raw"] = h["hdfs_bytes"] / BIG_SIZE
        h["hdfs_amp_corrected"] = h["hdfs_amp_raw"] / CHECKSUM_FACTOR
        h["peak_rss_lifetime"] = side.peak_rss()
        if side.name != PEER:
            out["metrics"] = scrape_metrics(side.endpoint)
        log(
            f"  {name}: {HERD} cold readers {h['aggregate_gbps']:.3f} GB/s aggregate "
            f"(wall {h['wall_s']:.1f} s), HDFS bytes {h['hdfs_amp_raw']:.3f}x raw / "
            f"{h['hdfs_amp_corrected']:.3f}x corrected, all bytes ok {h['all_content_ok']}"
        )
    return out


def run_phase(fn: Callable[..., dict[str, Any]], name: str, ctx: Ctx, tag: str) -> dict:
    try:
        return fn(name, ctx, tag)
    except Exception as exc:  # report it, run the rest
        log(f"  {name}: {tag} FAILED: {exc!r}")
        return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}


# ---- summary ---------------------------------------------------------------------------------


def _get(d: Any, *path: Any) -> Any:
    for p in path:
        if isinstance(d, dict):
            d = d.get(p)
        elif isinstance(d, list) and isinstance(p, int) and -len(d) <= p < len(d):
            d = d[p]
        else:
            return None
    return d


def side_values(rounds: list[dict[str, Any]], side: str) -> dict[str, Any]:
    """Per-side figures: the median over rounds (RSS: the max)."""
    singles = [r["single"].get(side) or {} for r in rounds]
    herds = [r["herd"].get(side) or {} for r in rounds]
    cached_med = [
        median([c.get("value") for c in s.get("cached", [])]) if s.get("cached") else None
        for s in singles
    ]
    rss = [_get(s, "stream10", "peak_rss") for s in singles]
    rss = [x for x in rss if x]
    sampled = [x for x in (_get(s, "stream10", "sampled_rss_max") for s in singles) if x]
    life = [x for x in (_get(h, "herd", "peak_rss_lifetime") for h in herds) if x]
    life += [x for x in (s.get("peak_rss_before_row") for s in singles) if x]
    return {
        "cold": median([_get(s, "cold", "value") for s in singles]),
        "cold_hdfs_amp": median(
            [(_get(s, "cold", "hdfs_bytes") or float("nan")) / BIG_SIZE for s in singles]
        ),
        "cached": median(cached_med),
        "cached_2nd": median([_get(s, "cached", 0, "value") for s in singles]),
        "cached_all": [c.get("gbps") for s in singles for c in s.get("cached", [])],
        "cached_hdfs_amp": median(
            [(s.get("cached_hdfs_bytes") or float("nan")) / BIG_SIZE for s in singles]
        ),
        "stream10_gbps": median([_get(s, "stream10", "value") for s in singles]),
        "rss_mb": max(rss) / MB if rss else None,
        "rss_sampled_mb": max(sampled) / MB if sampled else None,
        "rss_lifetime_mb": max(life) / MB if life else None,
        "herd": median([_get(h, "herd", "value") for h in herds]),
        "herd_amp_raw": median([_get(h, "herd", "hdfs_amp_raw") for h in herds]),
        "herd_amp_corrected": median([_get(h, "herd", "hdfs_amp_corrected") for h in herds]),
        "herd_amp_raw_max": max(
            [x for x in (_get(h, "herd", "hdfs_amp_raw") for h in herds) if x is not None],
            default=None,
        ),
        "herd_wall": median([_get(h, "herd", "wall_s") for h in herds]),
        "errors": [
            f"round {i + 1} {ph}: {d['error']}"
            for i, r in enumerate(rounds)
            for ph in ("single", "herd")
            if (d := r[ph].get(side)) and d.get("error")
        ]
        + [
            f"round {i + 1}: wrong bytes or status in a GET"
            for i, s in enumerate(singles)
            if s
            and not s.get("error")
            and (
                not _get(s, "cold", "content_ok")
                or not all(c.get("content_ok") for c in s.get("cached", []))
                or not _get(s, "stream10", "all_content_ok")
            )
        ]
        + [
            f"round {i + 1}: wrong bytes or status among the {HERD} readers: "
            + "; ".join(_get(h, "herd", "failed") or [])[:200]
            for i, h in enumerate(herds)
            if h and not h.get("error") and not _get(h, "herd", "all_content_ok")
        ]
        + [
            f"round {i + 1}: a tampered signature got {s['auth_check_status']}, not 403"
            for i, s in enumerate(singles)
            if s.get("auth_check_status") not in (None, 403)
        ],
    }


def best_of_rounds(doc: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per side, the best sample over all rounds: any cached read, the herd, the cold GET."""
    out: dict[str, dict[str, float | None]] = {}
    for side in doc["config"]["sides"]:
        singles = [r["single"].get(side) or {} for r in doc["rounds"]]
        herds = [r["herd"].get(side) or {} for r in doc["rounds"]]
        cached = [c.get("value") for s in singles for c in s.get("cached", [])]
        out[side] = {
            "cached": max((x for x in cached if x), default=None),
            "herd": max((x for h in herds if (x := _get(h, "herd", "value"))), default=None),
            "cold": max((x for s in singles if (x := _get(s, "cold", "value"))), default=None),
        }
    return out


def loopback_limit(loop: list[dict[str, Any]]) -> float | None:
    """The loopback limit the cached GET is held against (as the issue says): the best iperf3
    figure of the run (the stricter of its runs), else the Python socket copy's."""
    ip = [m["gbps"] for m in loop if m.get("tool") == "iperf3"]
    if ip:
        return max(ip)
    return best_loopback(loop)


def best_loopback(loop: list[dict[str, Any]]) -> float | None:
    """The most any one-stream loopback copy of the run moved (iperf3 or the Python socket
    copy)."""
    vals = [m["gbps"] for m in loop if m.get("gbps") and "-P" not in m.get("tool", "")]
    return max(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**PASS**" if ok else "**FAIL**")


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    sides: list[str] = doc["config"]["sides"]
    vals = {s: side_values(doc["rounds"], s) for s in sides}
    limit = loopback_limit(doc["loopback"])
    peer = vals.get(PEER, {})
    rows: list[dict[str, Any]] = []

    def row(
        rid: str,
        label: str,
        target: str,
        cells: dict[str, str],
        ratios: dict[str, float | None],
        ok: dict[str, bool | None],
    ) -> None:
        rows.append(
            {"id": rid, "label": label, "target": target, "cells": cells, "ratio": ratios, "ok": ok}
        )

    ours = [s for s in sides if s != PEER]

    def vs_peer(key: str, label: str) -> None:
        """A GB/s row whose target is TARGETS[key_vs_peer] times the peer's figure."""
        target = TARGETS[f"{key}_vs_peer"]
        ratios = {s: _ratio(vals[s][key], peer.get(key)) for s in ours}
        ok = {s: None if r is None else r >= target for s, r in ratios.items()}
        row(key, label, f">= {target:g}x peer", {s: _f(vals[s][key]) for s in sides}, ratios, ok)

    vs_peer("cached", "GET 1 GiB, cached (2nd-4th read, median), GB/s")
    lb = {s: _ratio(vals[s]["cached"], limit) for s in sides}
    best = best_loopback(doc["loopback"])
    lb_best = {s: _ratio(vals[s]["cached"], best) for s in sides}
    row(
        "cached_loopback",
        f"the same as % of the loopback limit: iperf3 {_f(limit)} GB/s (in brackets: of the "
        f"best loopback copy seen, {_f(best)} GB/s)",
        f">= {TARGETS['cached_vs_loopback'] * 100:g}%",
        {
            s: _f(None if lb[s] is None else lb[s] * 100, "{:.0f}%")
            + _f(None if lb_best[s] is None else lb_best[s] * 100, " ({:.0f}%)")
            for s in sides
        },
        {},
        {s: None if lb[s] is None else lb[s] >= TARGETS["cached_vs_loopback"] for s in ours},
    )
    vs_peer("herd", f"{HERD} concurrent readers of one cold 1 GiB object, aggregate GB/s")
    row(
        "herd_hdfs",
        f"the same: DataNode BytesRead / object size, raw (checksum-corrected: "
        f"/ {CHECKSUM_FACTOR})",
        f"<= {TARGETS['herd_hdfs_amp']:g}x",
        {
            s: f"{_f(vals[s]['herd_amp_raw'], '{:.3f}x')} "
            f"({_f(vals[s]['herd_amp_corrected'], '{:.3f}x')})"
            for s in sides
        },
        {},
        {
            s: None
            if vals[s]["herd_amp_corrected"] is None
            else vals[s]["herd_amp_corrected"] <= TARGETS["herd_hdfs_amp"]
            for s in ours
        },
    )
    row(
        "rss",
        f"peak RSS while {STREAMERS} clients stream the cached 1 GiB object, MB",
        f"< {TARGETS['rss_mb']:g} MB",
        {s: _f(vals[s]["rss_mb"], "{:.0f}") for s in sides},
        {s: _ratio(vals[s]["rss_mb"], peer.get("rss_mb")) for s in ours},
        {
            s: None if vals[s]["rss_mb"] is None else vals[s]["rss_mb"] < TARGETS["rss_mb"]
            for s in ours
        },
    )
    vs_peer(
        "cold", "GET 1 GiB, cold (1st read, single reader, HDFS blocks not in page cache), GB/s"
    )
    return {"values": vals, "loopback_limit": limit, "rows": rows}


def render_table(summary: dict[str, Any], sides: list[str]) -> str:
    ours = [s for s in sides if s != PEER]
    head = ["row", "target", *sides]
    head += [f"{s} / peer" for s in ours]
    head += [f"verdict {s}" for s in ours]
    rows = []
    for r in summary["rows"]:
        cells = [r["label"], r["target"], *(r["cells"].get(s, "-") for s in sides)]
        cells += [ratio_text(r["ratio"].get(s)) for s in ours]
        cells += [_verdict(r["ok"].get(s)) for s in ours]
        rows.append(cells)
    return markdown_table(head, rows, left=2)


def _cpu(c: dict[str, float] | None) -> str:
    if not c:
        return "-"
    idle = f" / {c['idle']:.0f} ({c['iowait']:.0f})" if "idle" in c else ""
    return (
        f"{c['gateway']:.0f} / {c['loadgen']:.0f} / "
        f"{c.get('namenode', 0) + c.get('datanode', 0):.0f} / {c['rest'] + c['steal']:.0f}" + idle
    )


def _loop(c: dict[str, float] | None) -> str:
    if not c or "loop_running" not in c:
        return "-"
    return f"{c['loop_running']:.0f}% + {c['loop_waiting']:.0f}%"


def render_details(doc: dict[str, Any]) -> str:
    lines = [
        "| round | gateway | measurement | GB/s | more | CPU % of one core: gateway / client / "
        "NameNode+DataNode / rest of machine / idle (of which iowait) | event loop: running + "
        "waiting for a CPU |",
        "|---|---|---|---:|---|---|---|",
    ]
    for i, r in enumerate(doc["rounds"]):
        for side in r["order"]:
            s = r["single"].get(side) or {}
            h = r["herd"].get(side) or {}
            lead = f"| {i + 1} | {side} |"

            def row(what: str, value: str, more: str, cpu: dict[str, float] | None) -> None:
                lines.append(_detail_row(lead, what, value, more, cpu))  # noqa: B023 - used at once

            if s.get("error"):
                lines.append(f"| {i + 1} | {side} | single | - | {s['error']} | - | - |")
            if s.get("cold"):
                c = s["cold"]
                row(
                    "cold GET",
                    f"{c['gbps']:.2f}",
                    f"first byte {c['ttfb_ms']:.0f} ms, HDFS bytes "
                    f"{c['hdfs_bytes'] / BIG_SIZE:.3f}x, dirty pages at start "
                    f"{c.get('dirty_at_start', 0) / MB:.0f} MB",
                    c.get("cpu_pct"),
                )
            for k, c in enumerate(s.get("cached", [])):
                more = (
                    f"first byte {c['ttfb_ms']:.0f} ms, dirty pages at start "
                    f"{c.get('dirty_at_start', 0) / MB:.0f} MB"
                )
                if k == 0:
                    more += (
                        f"; HDFS bytes over the {CACHED_READS} cached reads "
                        f"{s['cached_hdfs_bytes'] / BIG_SIZE:.3f}x"
                    )
                row(f"cached GET ({k + 2}. read)", f"{c['gbps']:.2f}", more, c.get("cpu_pct"))
            if s.get("stream10"):
                c = s["stream10"]
                row(
                    f"{STREAMERS} cached streams",
                    f"{c['aggregate_gbps']:.2f}",
                    f"per stream {c['per_stream_gbps_min']:.2f}-"
                    f"{c['per_stream_gbps_max']:.2f} GB/s; VmHWM {c['peak_rss'] / MB:.0f} MB, "
                    f"sampled VmRSS max {c['sampled_rss_max'] / MB:.0f} MB"
                    + (
                        f" (anon {c['sampled_rss_anon'] / MB:.0f}, file-backed "
                        f"{c['sampled_rss_file'] / MB:.0f})"
                        if "sampled_rss_anon" in c
                        else ""
                    )
                    + f" (before the row: "
                    f"peak {s['peak_rss_before_row'] / MB:.0f} MB, reset "
                    f"{'ok' if s['hwm_reset'] else 'FAILED'} to {s['rss_after_reset'] / MB:.0f}"
                    " MB)",
                    c.get("cpu_pct"),
                )
            if h.get("error"):
                lines.append(f"| {i + 1} | {side} | herd | - | {h['error']} | - | - |")
            if h.get("herd"):
                c = h["herd"]
                row(
                    f"{HERD} cold readers",
                    f"{c['aggregate_gbps']:.2f}",
                    f"wall {c['wall_s']:.1f} s (first done {c['first_finish_s']:.1f} s), per "
                    f"stream {c['per_stream_gbps_min']:.3f}-{c['per_stream_gbps_max']:.3f} GB/s,"
                    f" HDFS bytes {c['hdfs_amp_raw']:.3f}x raw"
                    f"{'' if c['hdfs_settled'] else ' (counter not settled)'}, lifetime peak "
                    f"RSS {c['peak_rss_lifetime'] / MB:.0f} MB",
                    c.get("cpu_pct"),
                )
    return "\n".join(lines)


def _detail_row(lead: str, what: str, value: str, more: str, cpu: dict[str, float] | None) -> str:
    return f"{lead} {what} | {value} | {more} | {_cpu(cpu)} | {_loop(cpu)} |"


def auto_notes(doc: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    notes: list[str] = []
    sides: list[str] = doc["config"]["sides"]
    vals = summary["values"]
    if doc["config"].get("aborted"):
        notes.append(
            f"**The run was cut short** ({doc['config']['aborted']}): only what was measured "
            "before that is reported."
        )
    loop = doc["loopback"]
    ip = [m for m in loop if m.get("tool") == "iperf3"]
    many = [m for m in loop if m.get("tool") == f"iperf3 -P {HERD}"]
    py = [m for m in loop if m.get("tool") == "python socket copy"]
    errs = [m["error"] for m in loop if m.get("error")]
    if ip or py:
        notes.append(
            "Loopback: iperf3 (1 stream) "
            + ", ".join(f"{m['gbps']:.2f}" for m in ip)
            + f" GB/s; iperf3 with {HERD} streams "
            + (", ".join(f"{m['gbps']:.2f}" for m in many) or "-")
            + " GB/s in all; plain Python socket copy (sendall 1 MiB -> recv_into 1 MiB, the load "
            "generator's receive loop) "
            + ", ".join(f"{m['gbps']:.2f}" for m in py)
            + " GB/s. The cached GET is held against the best iperf3 figure."
            + (f" Problems: {'; '.join(errs)}." if errs else "")
        )
    pc = doc.get("page_cache") or {}
    if "fresh_cpu_s" in pc:
        notes.append(
            f"Page cache: writing 1 GiB of new files (256 x 4 MiB, what a cold fill writes) "
            f"cost {pc['fresh_cpu_s']:.2f} CPU s into fresh memory and "
            f"{pc['reused_cpu_s']:.2f} CPU s into pages just freed. A cold GET through a cache "
            "pays the first figure per GiB on top of what a gateway without a data cache pays; "
            "where the two differ by much, the machine (a VM whose host takes freed memory "
            "back) makes fresh pages expensive, and a cold fill costs more CPU than it would "
            "on other machines."
        )
    if py and ip:
        pmax = max(m["gbps"] for m in py)
        ours_cached = max((vals[s]["cached"] or 0) for s in sides if s != PEER) if sides else 0
        if ours_cached and ours_cached >= 0.8 * pmax:
            notes.append(
                f"The client may be the limit of the cached GET: unionstore's cached read "
                f"({ours_cached:.2f} GB/s) is {ours_cached / pmax:.0%} of what the same Python "
                f"receive loop takes in from a bare sender ({pmax:.2f} GB/s)."
            )
    for s in sides:
        for e in vals[s]["errors"]:
            notes.append(f"{s}: {e}")
    # CPU: the client and the rest of the machine.
    heavy: list[str] = []
    disturbed: list[float] = []
    waiting: list[str] = []
    loops: list[float] = []
    total = 0
    bound: list[str] = []
    for i, r in enumerate(doc["rounds"]):
        for side in r["order"]:
            ms: list[tuple[str, dict[str, Any]]] = []
            s = r["single"].get(side) or {}
            h = r["herd"].get(side) or {}
            if s.get("cold"):
                ms.append(("cold", s["cold"]))
            ms += [(f"cached{k + 2}", c) for k, c in enumerate(s.get("cached", []))]
            if s.get("stream10"):
                ms.append(("stream10", s["stream10"]))
            if h.get("herd"):
                ms.append(("herd", h["herd"]))
            workers = int(OUR_VARIANTS.get(side, {}).get("workers", 1))
            for label, m in ms:
                c = m.get("cpu_pct") or {}
                tag = f"{label} on {side}, round {i + 1}"
                total += 1
                if c.get("loadgen", 0) >= 50:
                    heavy.append(f"{tag} ({c['loadgen']:.0f}%)")
                disturbed.append(c.get("rest", 0) + c.get("steal", 0))
                if "loop_waiting" in c:
                    loops.append(c["loop_waiting"])
                    if c["loop_running"] + c["loop_waiting"] >= 90:
                        waiting.append(
                            f"{tag} ({c['loop_running']:.0f}% + {c['loop_waiting']:.0f}%)"
                        )
                if side != PEER and c.get("gateway", 0) >= 90 * workers:
                    bound.append(f"{tag} ({c['gateway']:.0f}%)")
    if heavy:
        notes.append(
            "The client (this process: recv_into loops in threads) used >= 50% of a core, which "
            "the gateway could not use on this 2-core box: " + ", ".join(heavy) + "."
        )
    if bound:
        notes.append(
            "CPU-bound in the unionstore gateway (>= 90% of a core per worker): "
            + ", ".join(bound)
            + "."
        )
    loud = [d for d in disturbed if d >= 40]
    if loud:
        notes.append(
            f"Disturbed: in {len(loud)} of {total} measurements >= 40% of a core went to the "
            "rest of the machine (other jobs, kernel work not charged to a process, steal); "
            f"over all measurements the median was {statistics.median(disturbed):.0f}% and the "
            f"max {max(disturbed):.0f}% of a core (of the 200% this box has)."
        )
    if waiting:
        notes.append(
            "A unionstore event loop never idled (running + runnable but waiting for a CPU, "
            "from /proc/PID/task/PID/schedstat, >= 90% of the window; its share of waiting "
            "is time the 2 cores were busy with the client, HDFS, other gateway threads or other "
            "jobs): "
            + ", ".join(waiting)
            + f". Over all unionstore measurements the loop waited for a CPU a median "
            f"{statistics.median(loops):.0f}% of the window."
        )
    # Eviction and counters.
    res = [
        ev["resident_after"]
        for r in doc["rounds"]
        for ph in ("single", "herd")
        for d in r[ph].values()
        if isinstance(d, dict) and (ev := d.get("evict")) and ev.get("resident_after") is not None
    ]
    if res:
        notes.append(
            f"Cold reads: right after each eviction at most {max(res) / MIB:.0f} MiB of the "
            "DataNode's block files were in the page cache (fincore), so the first reader of "
            "each cold row read from disk."
        )
    unsettled = [
        f"{ph} on {side}"
        for r in doc["rounds"]
        for ph, key in (("single", "cold"), ("herd", "herd"))
        for side, d in r[ph].items()
        if isinstance(d, dict) and _get(d, key, "hdfs_settled") is False
    ]
    if unsettled:
        notes.append(
            "The DataNode's BytesRead had not settled within the wait for: "
            + ", ".join(unsettled)
            + " (the delta may be short)."
        )
    for s in sides:
        if s == PEER:
            continue
        v = vals[s]
        if v["cached_hdfs_amp"] is not None:
            notes.append(
                f"{s}: HDFS bytes read during the {CACHED_READS} cached GETs: "
                f"{v['cached_hdfs_amp']:.3f}x the object (0 = all served from the block cache); "
                f"during the single cold GET: {_f(v['cold_hdfs_amp'], '{:.3f}x')}."
            )
        if v["rss_lifetime_mb"] is not None:
            notes.append(
                f"{s}: peak RSS over the gateway's whole life, cold fills included (the "
                f"{HERD}-reader and single-reader phases): {v['rss_lifetime_mb']:.0f} MB."
            )
        metrics = [
            (d.get("metrics") or {})
            for r in doc["rounds"]
            if isinstance(d := r["herd"].get(s), dict)
        ]
        for m in metrics[:1]:
            if m:
                notes.append(
                    f"{s}, {HERD} cold readers, its own /metrics (one worker's view): bytes from "
                    f"the UFS {m.get('unionstore_ufs_read_bytes', 0) / BIG_SIZE:.3f}x the "
                    f"object, served {m.get('unionstore_served_bytes', 0) / BIG_SIZE:.2f}x, fill "
                    f"failures {m.get('unionstore_fill_failures', 0):.0f}, fallbacks to direct "
                    f"reads {m.get('unionstore_fill_fallbacks', 0):.0f}, fills shed "
                    f"{m.get('unionstore_fills_shed', 0):.0f}."
                )
    for s in sides:
        pts = [
            (d["stream10"]["peak_rss"] / MB, d["stream10"]["aggregate_gbps"], i + 1)
            for i, r in enumerate(doc["rounds"])
            if isinstance(d := r["single"].get(s), dict) and d.get("stream10")
        ]
        if len(pts) > 1 and max(p[0] for p in pts) > 1.25 * min(p[0] for p in pts):
            notes.append(
                f"{s}: the peak RSS of the {STREAMERS}-stream row varied between rounds: "
                + ", ".join(f"round {k}: {mb:.0f} MB at {g:.2f} GB/s" for mb, g, k in pts)
                + "."
            )
    peer_cached = vals.get(PEER, {}).get("cached")
    limit0 = summary["loopback_limit"]
    if peer_cached and limit0 and TARGETS["cached_vs_peer"] * peer_cached > 0.9 * limit0:
        notes.append(
            f"The cached-GET target ({TARGETS['cached_vs_peer']:g}x the peer's "
            f"{peer_cached:.2f} GB/s = {TARGETS['cached_vs_peer'] * peer_cached:.2f} GB/s) is "
            f"at or above 90% of this machine's loopback limit ({limit0:.2f} GB/s, iperf3): the "
            "peer reads HDFS blocks that sit in the page cache here, so on this box the ratio "
            "is capped by loopback, whatever the cache does."
        )
    best = best_of_rounds(doc)
    if PEER in best and len(doc["rounds"]) > 1:
        parts = []
        for key, label in (
            ("cached", "cached GET"),
            ("herd", f"{HERD} cold readers"),
            ("cold", "cold GET"),
        ):
            pb = best[PEER].get(key)
            cells = [
                f"{s} {best[s][key]:.2f} ({ratio_text(_ratio(best[s][key], pb))})"
                for s in sides
                if s != PEER and best[s].get(key)
            ]
            if pb and cells:
                parts.append(f"{label}: " + ", ".join(cells) + f" vs peer {pb:.2f} GB/s")
        if parts:
            notes.append(
                "Best single sample over the rounds (noise only slows things down, so this is "
                "each side's figure on its luckiest moment): " + "; ".join(parts) + "."
            )
    peer_herd = vals.get(PEER, {}).get("herd")
    many_gbps = [m["gbps"] for m in loop if m.get("tool") == f"iperf3 -P {HERD}"]
    limit = max(many_gbps) if many_gbps else summary["loopback_limit"]
    if peer_herd and limit and TARGETS["herd_vs_peer"] * peer_herd > 0.9 * limit:
        notes.append(
            f"The {HERD}-reader target ({TARGETS['herd_vs_peer']:g}x the peer's "
            f"{peer_herd:.2f} GB/s = {TARGETS['herd_vs_peer'] * peer_herd:.2f} GB/s) is at or "
            f"above 90% of what this machine's loopback carries ({limit:.2f} GB/s, iperf3"
            + (f" with {HERD} streams" if many_gbps else "")
            + ", with no gateway, no HDFS and no work on the bytes) while client, gateway "
            "and DataNode share its 2 cores: no gateway can reach it on this box."
        )
    for s in sides:
        if s == PEER:
            continue
        h, st = vals[s]["herd"], vals[s]["stream10_gbps"]
        if h and st:
            notes.append(
                f"{s}: {HERD} cold readers {h:.2f} GB/s aggregate vs {STREAMERS} readers of the "
                f"cached object {st:.2f} GB/s (the single cached GET: "
                f"{_f(vals[s]['cached'])} GB/s): the cold herd "
                + (
                    "runs about as fast as serving from the cache"
                    if h >= 0.8 * st
                    else "is held back by the fill, not only by serving"
                )
                + "."
            )
    dirty_cached = [
        (c.get("dirty_at_start", 0), c.get("cpu_pct", {}).get("iowait", 0))
        for r in doc["rounds"]
        for s, d in r["single"].items()
        if isinstance(d, dict) and s != PEER
        for c in d.get("cached", [])
    ]
    if dirty_cached and max(d for d, _ in dirty_cached) >= 256 * MB:
        notes.append(
            f"During unionstore's cached GETs up to {max(d for d, _ in dirty_cached) / MB:.0f} MB"
            " of the machine's page cache was dirty (the block cache just filled, not yet "
            "written back), and iowait stayed at or below "
            f"{max(w for _, w in dirty_cached):.0f}% of a core: those reads came from memory, "
            "not held up by the disk."
        )
    if PEER in sides and vals[PEER]["herd_amp_raw"] is not None:
        notes.append(
            f"The peer has no data cache: its {HERD} readers made the DataNode send "
            f"{vals[PEER]['herd_amp_raw']:.2f}x the object (raw); after the first reader's pass "
            "those blocks come from the page cache, not the disk."
        )
    for s in sides:
        c = vals[s]["cached_all"]
        if len(c) > 1 and min(c) > 0:
            spread = (max(c) - min(c)) / statistics.median(c)
            if spread > 0.25:
                notes.append(
                    f"{s}: cached GETs spread {spread:.0%} ({min(c):.2f}-{max(c):.2f} GB/s): noisy."
                )
    if doc["config"].get("quiet_below"):
        notes.append(
            f"Waited {doc['config'].get('quiet_waited', 0):.0f} s in all for the machine to be "
            f"quiet (< {doc['config']['quiet_below']:g}% of a core busy, bounded) before "
            "measurements."
        )
    return notes


def render_section(doc: dict[str, Any], summary: dict[str, Any], notes: list[str]) -> str:
    f = doc["facts"]
    cfg = doc["config"]
    sides = cfg["sides"]
    variants = []
    for s in sides:
        if s == OURS:
            variants.append(
                f'- `{s}`: defaults (`GatewayProcess({{"mounts": [{{"bucket": "{BUCKET}",'
                f' "uri": hdfs.url + "{HDFS_ROOT}"}}]}})`): block cache on (4 MiB blocks), '
                "1 worker process"
            )
        elif s == TWO_WORKERS:
            variants.append(f"- `{s}`: the same with `workers = 2` (one shared block cache)")
        elif s == PEER:
            variants.append(
                f"- `{s}` {f['hdfs-s3-gateway']}: `Gateway(..., cache_enabled=True, "
                "auth_secret=...)` in its own process (no data cache: it reads HDFS every time)"
            )
    parts = [
        f"## {SECTION}",
        "",
        f"Run {f['date']}: `{cfg['command']}` - {cfg['rounds']} round(s); whole run "
        f"{cfg['elapsed']:.0f} s.",
        "",
        machine_text(f) + " (a shared machine: other jobs ran beside this one). Versions: "
        "unionstore "
        f"{f['unionstore']}; hdfs-native {f['hdfs-native']}; hypercorn {f['hypercorn']}, "
        f"uvloop {f['uvloop']}; Hadoop {f['hadoop']}; Python {f['python']}.",
        "",
        "Gateways:",
        "",
        *variants,
        "",
        "Method (`python -m bench.caching`):",
        "",
        "- One real HDFS (NameNode + DataNode on loopback) holding one 1 GiB object (bench/run.py's"
        " bytes: every GET's first and last MiB are checked). Every request is a SigV4 pre-signed"
        " GET made before the clock starts; each gateway must answer 403 to a tampered signature.",
        "- Loopback limit: `iperf3 -c 127.0.0.1 -t N -J` (one stream) before and after the "
        "gateways; the best iperf3 figure is the limit. Also a plain Python socket copy with "
        "the load generator's receive loop, to see whether the client caps a GET.",
        "- Phase single, per gateway, freshly started (empty cache): the DataNode's block files "
        "are evicted from the page cache (fsync + fadvise DONTNEED; fincore checks), one GET "
        f"(cold), then {CACHED_READS} more GETs (cached: unionstore serves its block cache, the "
        f"peer reads HDFS again); then {STREAMERS} clients stream the object at once on their "
        "own connections while the gateway's process group is watched: VmHWM reset just "
        "before (`/proc/PID/clear_refs` = 5), read after, and VmRSS sampled every 0.1 s (split "
        "into anonymous and file-backed memory at its peak). With 2 workers the figures are "
        "sums over the group's processes (an upper bound for VmHWM).",
        f"- Phase herd, per gateway, freshly started again (empty cache, blocks evicted): {HERD} "
        "threads released by one barrier each GET the object on a fresh connection; aggregate = "
        "all bytes / time from the first request to the last byte of the last reader. The "
        "DataNode's BytesRead (JMX, refreshed once a second; read when it has settled before "
        "and after) gives the HDFS bytes; it counts the 4-byte CRC of every 512-byte chunk too, "
        f"so corrected = raw / {CHECKSUM_FACTOR}.",
        "- GB/s = 10^9 bytes/s; MB = 10^6 bytes. Each GET reads into a 1 MiB buffer with "
        "`recv_into` and throws the bytes away (bench/loadgen.py's `stream_get`; threads for the "
        "concurrent rows). Client, gateway, NameNode and DataNode share the 2 cores: compare the "
        "ratios within this run, not absolute figures across runs.",
        "",
        render_table(summary, sides),
        "",
        "Ratio = unionstore / peer (for RSS: more than 1 = more memory). Verdicts use the median"
        " over rounds (RSS: the peak over rounds); the HDFS-bytes verdict uses the "
        "checksum-corrected figure.",
        "",
        "![unionstore vs hdfs-s3-gateway, caching rows](img/caching.png)",
        "",
        "Details (CPU in % of one core over the measurement, so 200 = both cores):",
        "",
        render_details(doc),
        "",
        *notes_lines(notes, "script"),
    ]
    return "\n".join(parts)


def _side_bars(
    ax: Any,
    values: dict[str, float | None],
    colors: dict[str, str],
    fmt: str,
    target: float,
    target_label: str,
) -> None:
    """One labelled bar per side (in the order of `values`) and the target as a red line."""
    for i, (side, v) in enumerate(values.items()):
        if v is not None:
            ax.bar(i, v, 0.7, color=colors.get(side, "grey"))
            ax.text(i, v, fmt.format(v), ha="center", va="bottom", fontsize=8)
    ax.axhline(target, color="red", linestyle="--", linewidth=1.5, label=target_label)
    labels = [s.replace("unionstore-", "us-") for s in values]
    ax.set_xticks(range(len(values)), labels, fontsize=8)


def plot(summary: dict[str, Any], sides: list[str], path: Path) -> bool:
    plt = pyplot(log)
    if plt is None:
        return False
    vals = summary["values"]
    ours = [s for s in sides if s != PEER]
    colors = {OURS: "#1f77b4", TWO_WORKERS: "#9467bd", PEER: "#ff7f0e"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [2.2, 1, 1]})

    # 1: ratios against the peer (and the loopback limit), with target marks.
    ax = axes[0]
    groups = [
        ("cached GET\n/ peer", "cached", TARGETS["cached_vs_peer"]),
        ("cached GET\n/ loopback", "cached_loopback", TARGETS["cached_vs_loopback"]),
        (f"{HERD} cold readers\naggregate / peer", "herd", TARGETS["herd_vs_peer"]),
        ("cold GET\n/ peer", "cold", TARGETS["cold_vs_peer"]),
    ]
    width = 0.8 / max(1, len(ours))
    limit = summary["loopback_limit"]
    for gi, (_, key, target) in enumerate(groups):
        for si, s in enumerate(ours):
            if key == "cached_loopback":
                r = _ratio(vals[s]["cached"], limit)
            else:
                r = _ratio(vals[s][key], vals.get(PEER, {}).get(key))
            x = gi - 0.4 + width * (si + 0.5)
            if r is not None:
                ax.bar(x, r, width * 0.9, color=colors.get(s, "grey"), label=s if gi == 0 else None)
                ax.text(x, r, f"{r:.2f}x", ha="center", va="bottom", fontsize=8)
        ax.hlines(
            target,
            gi - 0.45,
            gi + 0.45,
            colors="red",
            linestyles="--",
            linewidth=1.5,
            label="target" if gi == 0 else None,
        )
    ax.axhline(1.0, color="grey", linewidth=0.6)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=9)
    ax.set_ylabel("ratio (higher is better)")
    ax.set_title("throughput ratios")
    ax.legend(fontsize=8)

    # 2: HDFS bytes per object, 16 cold readers (log scale).
    ax = axes[1]
    amps = {s: vals[s]["herd_amp_corrected"] for s in sides}
    target = TARGETS["herd_hdfs_amp"]
    _side_bars(ax, amps, colors, "{:.2f}x", target, f"target <= {target:g}x")
    ax.set_yscale("log")
    top = max((v or 1.0) for v in amps.values())
    ax.set_ylim(0.5, max(2.0, top * 2))
    ax.set_title(
        f"{HERD} cold readers: HDFS bytes / object\n(checksum-corrected, lower is better)",
        fontsize=10,
    )
    ax.legend(fontsize=8)

    # 3: peak RSS, 10 streams.
    ax = axes[2]
    target = TARGETS["rss_mb"]
    rss = {s: vals[s]["rss_mb"] for s in sides}
    _side_bars(ax, rss, colors, "{:.0f}", target, f"target < {target:g} MB")
    ax.set_ylabel("MB")
    ax.set_title(f"peak RSS, {STREAMERS} cached 1 GiB streams\n(lower is better)", fontsize=10)
    ax.legend(fontsize=8)

    fig.suptitle(
        "Caching (issue 3): unionstore vs hdfs-s3-gateway, one run side by side "
        "(shared 2-core machine)",
        fontsize=11,
    )
    save_figure(plt, fig, path)
    return True


# ---- the run ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.caching",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"1 round, {OURS} and {PEER} only, 2 s iperf3 (about 3 minutes)",
    )
    p.add_argument(
        "--gateways",
        help=f"comma-separated, from {', '.join(ALL_SIDES)} (default: all; --quick: {OURS},{PEER})",
    )
    p.add_argument("--rounds", type=int, help="rounds (default 2, --quick 1)")
    p.add_argument("--iperf-seconds", type=float, help="seconds per iperf3 run (5; --quick 2)")
    p.add_argument(
        "--quiet-below",
        type=float,
        default=30.0,
        help="before each measurement wait (at most 5 s; 20 s a run, 15 s with --quick) until "
        "the machine is below this %% of one core busy; 0 = do not wait",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        help="stop, clean up and report what was measured after this many s (900; 300)",
    )
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "caching.md")
    p.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "caching.png")
    p.add_argument("--no-write", action="store_true", help="print only: no markdown, no plot")
    p.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument(
        "--render", type=Path, metavar="JSON", help="run nothing: report a saved run's JSON"
    )
    args = p.parse_args(argv)
    default = f"{OURS},{PEER}" if args.quick else ",".join(ALL_SIDES)
    args.sides = [s.strip() for s in (args.gateways or default).split(",") if s.strip()]
    if not args.sides or any(s not in ALL_SIDES for s in args.sides):
        p.error(f"--gateways takes names from {list(ALL_SIDES)}")
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.iperf_seconds = args.iperf_seconds or (2.0 if args.quick else 5.0)
    args.time_limit = args.time_limit or (300.0 if args.quick else 900.0)
    return args


PAGE_CACHE_PROBE = """
import os, resource, sys
folder, data = sys.argv[1], os.urandom(4 << 20)
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
out = []
for round in ("fresh", "reused"):
    c0 = cpu()
    for i in range(256):
        with open(os.path.join(folder, str(i)), "wb") as f:
            f.write(data)
    out.append(cpu() - c0)
    for i in range(256):
        os.unlink(os.path.join(folder, str(i)))
print(*out)
"""


def page_cache_write_cost(folder: Path) -> dict[str, Any]:
    """CPU seconds to write 1 GiB of new files (256 x 4 MiB, the block cache's pattern) into
    the page cache: once into fresh memory, then again into the pages just freed. On a VM
    whose host takes freed memory back, fresh pages cost a fault in the host each: the price
    every cache fill pays here, and a gateway without a data cache does not."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", PAGE_CACHE_PROBE, str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        fresh, reused = (float(x) for x in done.stdout.split())
    except ValueError:
        return {"error": f"page-cache probe failed: {done.stderr.strip()[-200:]}"}
    log(f"page cache: 1 GiB of new files costs {fresh:.2f} CPU s fresh, {reused:.2f} reused")
    return {"fresh_cpu_s": fresh, "reused_cpu_s": reused}


def measure_loopback(seconds: float) -> list[dict[str, Any]]:
    out = [
        iperf3_loopback(seconds),
        iperf3_loopback(seconds, HERD),  # what the herd's streams could carry together
        python_socket_copy(min(seconds, 3.0)),
    ]
    for m in out:
        if m.get("error"):
            log(f"loopback: {m['error']}")
        else:
            log(f"loopback: {m['tool']} {m['gbps']:.2f} GB/s")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        doc = json.loads(args.render.read_text())
        report(doc, args)
        return 0
    argv_used = sys.argv[1:] if argv is None else argv
    t_start = time.monotonic()
    arm_time_limit(args.time_limit)
    facts = machine_facts()
    workdir = Path(tempfile.mkdtemp(prefix="unionstore-bench-caching-"))
    hdfs = HdfsCluster()
    rounds: list[dict[str, Any]] = []
    loop: list[dict[str, Any]] = []
    quiet: QuietWaiter | None = None
    data_seconds = 0.0
    page_cache: dict[str, Any] = {}

    def stop() -> None:
        log("stopping HDFS")
        hdfs.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    with guarded_run(stop, log) as ending:
        log(f"starting HDFS (work folder {workdir})")
        hdfs.start()
        log(f"HDFS up in {hdfs.startup_seconds:.1f} s; writing the {BIG_SIZE // MIB} MiB object")
        data_seconds = write_big(hdfs)
        log(f"written in {data_seconds:.1f} s")
        loop += measure_loopback(args.iperf_seconds)
        page_cache = page_cache_write_cost(workdir / "page-cache-probe")
        if args.quiet_below > 0:
            quiet = QuietWaiter(args.quiet_below, per_wait=5.0, budget=15.0 if args.quick else 20.0)
        ctx = Ctx(hdfs, workdir, quiet)
        for rnd in range(args.rounds):
            k = rnd % len(args.sides)
            order = args.sides[k:] + args.sides[:k]
            r: dict[str, Any] = {"round": rnd, "order": order, "single": {}, "herd": {}}
            rounds.append(r)
            for phase, fn in (("single", phase_single), ("herd", phase_herd)):
                for name in order:
                    log(f"round {rnd + 1}/{args.rounds}: {phase} on {name}")
                    r[phase][name] = run_phase(fn, name, ctx, f"r{rnd}-{phase}-{name}")
        loop += measure_loopback(args.iperf_seconds)
    if ending.aborted and not rounds:
        return 130
    facts["loadavg_end"] = os.getloadavg()
    doc = {
        "facts": facts,
        "config": {
            "command": " ".join(["python -m bench.caching", *argv_used]),
            "sides": args.sides,
            "rounds": args.rounds,
            "iperf_seconds": args.iperf_seconds,
            "elapsed": time.monotonic() - t_start,
            "data_write_seconds": data_seconds,
            "quiet_below": args.quiet_below,
            "quiet_waited": quiet.waited if quiet is not None else 0.0,
            "aborted": ending.aborted,
        },
        "loopback": loop,
        "page_cache": page_cache,
        "rounds": rounds,
    }
    raw = stamped_path(args.results_dir, "caching")
    write_json(raw, doc)
    report(doc, args)
    log(f"raw results: {raw}")
    return 130 if ending.aborted else 0


def report(doc: dict[str, Any], args: argparse.Namespace) -> None:
    doc["facts"]["loadavg_start"] = tuple(doc["facts"]["loadavg_start"])
    summary = summarise(doc)
    notes = auto_notes(doc, summary)
    sides = doc["config"]["sides"]
    print()
    print(render_table(summary, sides))
    print()
    print(render_details(doc))
    print_notes(notes)
    if args.no_write:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_section(doc, summary, notes))
    log(f"wrote {args.out}")
    if plot(summary, sides, args.plot):
        log(f"wrote {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
