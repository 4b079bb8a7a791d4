"""FUSE mounts side by side: ``unionstore mount`` vs s3fs-fuse vs ``rclone mount``, all on the
same gateway bucket over the same real HDFS, and the local disk.

    python -m bench.fuse_bench [--quick] [--json bench/results/...json] [--plot docs/img/fuse.png]
    python -m bench.fuse_bench --plot-from bench/results/...json   # redraw the plot only

Rows (issue 6, "Benchmarks"):
The gateway's own cache is warmed first, so "cold" means the mount's cache is empty, not the
gateway's, and the order in which clients run does not favour any of them.

- ``seq1g``: sequential read of a 1 GiB file (1 MiB reads): cold (first read through the
  mount), cached from the page cache (the median of 5 more reads, each followed by a read
  of the local disk's copy, so the ratio to the local disk compares reads seconds apart,
  not series minutes apart: ``_meta.page_cache_alongside``), and cached with
  ``--drop-caches`` (the kernel's page cache dropped first, so the mount's own cache serves
  it, and the local disk reads from disk);
- ``files/s P=N``: 100 KB files per second with N reader processes, cold (fresh mount and
  cache, page cache dropped) and cached (second pass). A cold row is the median of 1 +
  ``--rounds`` passes: ``--rounds`` of them run first, the clients taking turns, because on
  this shared machine two passes of the same client minutes apart differ by up to 2x;
- ``stat/s``: stat() calls per second on a warm metadata cache (one process): ``warm``
  loops over the files for 3 s right after a pass over them; ``sweep`` is one pass over
  every file begun 2 s after the previous one (the median of 5), as ``find``, ``du`` or a
  loader's next epoch stat the files of a dataset: longer apart than libfuse's default 1 s
  kernel attribute cache (s3fs keeps it), shorter than our 60 s (``attr_timeout``);
- ``write1g``: sequential write of a 1 GiB checkpoint, the last row of each client (the
  upload's aftermath on the gateway and HDFS would otherwise land in the next row).

Before a cached pass (and the stat row) the client's daemon is let go idle (``settle``):
unionstore writes what a cold pass fetched to its disk cache after the replies, and that
tail of the cold pass would otherwise be timed in the cached one (measured: the 1 GiB read
from the page cache at 2.3 GB/s while the writes ran, 9-10 GB/s after). It also ``sync``s:
the kernel writes the cold pass's dirty pages (gigabytes for ``seq1g``: the gateway's and
the mount's caches) back in threads of its own, which the daemon's CPU does not show.

Prints a markdown table with the ratios unionstore / peer (> 1: unionstore is faster), writes
the raw numbers as JSON, and (with matplotlib) plots each cold round's ratio to each peer.
Everything started is stopped at the end (mounts unmounted, daemons killed), also on error
or Ctrl-C. Numbers from a shared 2-core machine: compare ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import proc_cpu_seconds, pyplot, save_figure  # noqa: E402
from tests.support.fusemount import FuseMount, hdfs_put_many, is_mounted, unmount  # noqa: E402
from tests.support.gateway import ADMIN_KEY, ADMIN_SECRET, GatewayProcess  # noqa: E402
from tests.support.hdfs import HdfsCluster  # noqa: E402
from tests.support.ports import poll_until  # noqa: E402

MIB = 1 << 20
BUCKET, ROOT = "bench", "/fuse-bench"
CLIENTS = ("unionstore", "s3fs", "rclone", "local")

READER = """
import os, sys, time
files = sys.argv[1:]
t = time.perf_counter()
n = 0
for p in files:
    with open(p, "rb") as f:
        n += len(f.read())
print(n, time.perf_counter() - t)
"""


class Mount:
    """One FUSE client (or the local folder) mounted at ``path``, served by process ``pid``."""

    def __init__(self, name: str, path: Path, stop: Callable[[], None], pid: int = 0) -> None:
        self.name, self.path, self.stop, self.pid = name, path, stop, pid

    def settle(self, quiet: float = 0.02, period: float = 0.5, limit: float = 120.0) -> None:
        """Wait until the client's daemon is idle (under ``quiet`` CPU seconds in ``period``)
        and the dirty pages of the machine are on disk: work a pass left behind (unionstore
        and rclone write what they fetched to their disk caches, unionstore after the reply;
        the gateway caches too) must not land in the next pass's timing. The kernel's
        writeback of a cold GiB ran in the kernel's own threads during the next pass."""
        deadline = time.monotonic() + limit
        used = proc_cpu_seconds(self.pid) if self.pid else 0.0
        while self.pid and time.monotonic() < deadline:
            time.sleep(period)
            now = proc_cpu_seconds(self.pid)
            if not now - used >= quiet:  # NaN: the daemon is gone
                break
            used = now
        os.sync()


def _daemon(
    argv: list[str], path: Path, log: Path, env: dict[str, str]
) -> tuple[Callable[[], None], int]:
    path.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def stop() -> None:
        unmount(path)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        unmount(path)

    try:
        poll_until(
            lambda: is_mounted(path) and bool(os.statvfs(path)),
            30,
            f"{argv[0]} at {path}",
            proc=proc,
            log=log,
        )
    except BaseException:
        stop()
        raise
    return stop, proc.pid


def mount(name: str, gw: GatewayProcess, work: Path, local: Path, read_only: bool = False) -> Mount:
    """A fresh mount with an empty cache (read-only: each client's own option for it)."""
    if name == "local":
        return Mount(name, local, lambda: None)
    base = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    path = base / "mnt"
    if name == "unionstore":
        m = FuseMount(
            gw.endpoint,
            BUCKET,
            access_key=ADMIN_KEY,
            secret_key=ADMIN_SECRET,
            workdir=base,
            readahead_blocks=16,
            read_only=read_only,
        ).start()
        assert m.proc is not None
        return Mount(name, m.path, m.stop, m.proc.pid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    if name == "s3fs":
        passwd = base / "passwd"
        passwd.write_text(f"{ADMIN_KEY}:{ADMIN_SECRET}\n")
        passwd.chmod(0o600)
        argv = [
            "s3fs",
            BUCKET,
            str(path),
            "-f",
            "-o",
            f"url={gw.endpoint}",
            "-o",
            "use_path_request_style",
            "-o",
            f"passwd_file={passwd}",
            "-o",
            f"use_cache={base / 'cache'}",
            "-o",
            "stat_cache_expire=60",
            "-o",
            "enable_noobj_cache",
            "-o",
            "endpoint=us-east-1",
            "-o",
            "parallel_count=8",
            *(["-o", "ro"] if read_only else []),
        ]
    else:
        remote = (
            f":s3,provider=Other,endpoint='{gw.endpoint}',access_key_id={ADMIN_KEY},"
            f"secret_access_key={ADMIN_SECRET},force_path_style=true:{BUCKET}"
        )
        argv = [
            "rclone",
            "mount",
            remote,
            str(path),
            "--vfs-cache-mode",
            "full",
            "--cache-dir",
            str(base / "cache"),
            "--dir-cache-time",
            "60s",
            "--attr-timeout",
            "60s",
            "--config",
            "/dev/null",
            "--vfs-read-chunk-size",
            "8M",
            *(["--read-only"] if read_only else []),
        ]
    stop, pid = _daemon(argv, path, base / "daemon.log", env)
    return Mount(name, path, stop, pid)


def drop_page_cache() -> None:
    with contextlib.suppress(OSError):
        subprocess.run(["sync"], check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_seq(path: Path) -> float:
    """MiB/s of a sequential read in 1 MiB chunks."""
    t = time.perf_counter()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(MIB):
            n += len(chunk)
    return n / MIB / (time.perf_counter() - t)


def files_per_second(paths: list[Path], procs: int) -> float:
    shares = [paths[i::procs] for i in range(procs)]
    t = time.perf_counter()
    running = [
        subprocess.Popen([sys.executable, "-c", READER, *map(str, share)], stdout=subprocess.PIPE)
        for share in shares
    ]
    for p in running:
        p.communicate(timeout=1800)
    return len(paths) / (time.perf_counter() - t)


def stats_per_second(paths: list[Path], seconds: float) -> float:
    for p in paths:  # warm
        os.stat(p)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for p in paths:
            os.stat(p)
        n += len(paths)
    return n / (time.perf_counter() - t)


def stat_sweeps(paths: list[Path], pause: float = 2.0, passes: int = 5) -> float:
    """stat() calls per second of one pass over ``paths``, each pass ``pause`` seconds after
    the one before (the median)."""
    for p in paths:  # warm
        os.stat(p)
    rates = []
    for _ in range(passes):
        time.sleep(pause)
        t = time.perf_counter()
        for p in paths:
            os.stat(p)
        rates.append(len(paths) / (time.perf_counter() - t))
    return statistics.median(rates)


def read_alongside(path: Path, local: Path, rounds: int) -> tuple[list[float], list[float]]:
    """MiB/s of ``rounds`` reads of ``path``, each followed by a read of ``local``."""
    read_seq(local)  # into the page cache
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(read_seq(path))
        theirs.append(read_seq(local))
    return ours, theirs


def write_seq(path: Path, size: int) -> float | str:
    chunk = os.urandom(MIB)
    t = time.perf_counter()
    try:
        with open(path, "wb") as f:
            for _ in range(size // MIB):
                f.write(chunk)
    except OSError as exc:
        return f"n/a ({os.strerror(exc.errno or 5)})"
    return size / MIB / (time.perf_counter() - t)


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    big = (256 if args.quick else 1024) * MIB
    nfiles = 300 if args.quick else 2000
    results: dict[str, dict[str, Any]] = {c: {} for c in CLIENTS}
    alongside: dict[str, dict[str, list[float]]] = {}
    work = Path(tempfile.mkdtemp(prefix="fuse-bench-"))
    stops: list[Callable[[], None]] = []
    hdfs = HdfsCluster()
    try:
        hdfs.start()
        files = small_files(hdfs, nfiles)
        local = work / "local"
        for k, v in files.items():
            (local / k).parent.mkdir(parents=True, exist_ok=True)
            (local / k).write_bytes(v)
        with open(local / "big.bin", "wb") as f:
            for _ in range(big // MIB):
                f.write(os.urandom(MIB))
        import hdfs_native

        with (
            hdfs_native.Client(hdfs.url).create(f"{ROOT}/big.bin") as w,
            open(local / "big.bin", "rb") as r,
        ):
            while chunk := r.read(8 * MIB):
                w.write(chunk)
        gw = warm_gateway(hdfs, [*files, "big.bin"], stops)
        # cold passes first (no checkpoint upload has run yet), clients interleaved
        passes = cold_rounds(args.clients, args.rounds, gw, work, local, args.read_only)
        for name in args.clients:
            print(f"-- {name}", flush=True)
            r = results[name]
            for procs in (1, 4, 8):
                m = mount(name, gw, work, local, args.read_only)
                try:
                    paths, rate = cold_pass(m, procs)
                    passes[name][procs].append(rate)
                    r[f"files/s P={procs} cold"] = statistics.median(passes[name][procs])
                    m.settle()
                    r[f"files/s P={procs} cached"] = files_per_second(paths, procs)
                    if procs == 1:
                        m.settle()
                        r["stat/s warm"] = stats_per_second(paths, 3.0)
                        r["stat/s sweep, 2 s apart"] = stat_sweeps(paths)
                        drop_page_cache()
                        r["seq1g MiB/s cold"] = read_seq(m.path / "big.bin")
                        m.settle()
                        # median of 5: single passes from the page cache ran at 5.6-10.9
                        # GB/s back to back (memory bandwidth shared with other tenants)
                        warm, loc = read_alongside(m.path / "big.bin", local / "big.bin", 5)
                        r["seq1g MiB/s cached (page cache)"] = statistics.median(warm)
                        alongside[name] = {"client": warm, "local": loc}
                        if args.drop_caches:
                            drop_page_cache()
                            r["seq1g MiB/s cached (dropped)"] = read_seq(m.path / "big.bin")
                    if procs == 8:  # last: the gateway's and HDFS's work after a 1 GiB
                        # upload must not land in the next row's timing
                        r["write1g MiB/s"] = write_seq(m.path / "ckpt.bin", big)
                finally:
                    m.stop()
                print(json.dumps(r), flush=True)
    finally:
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                stop()
        hdfs.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["_meta"] = {"cold_passes": passes, "page_cache_alongside": alongside}
    return results


def small_files(hdfs: HdfsCluster, n: int) -> dict[str, bytes]:
    """``n`` files of 100 KB under ``small/`` in HDFS (keys relative to the bucket)."""
    blob = os.urandom(100_000)
    files = {f"small/f{i:05d}.bin": i.to_bytes(8, "big") + blob[8:] for i in range(n)}
    hdfs_put_many(hdfs.url, {f"{ROOT}/{k}": v for k, v in files.items()})
    return files


def warm_gateway(
    hdfs: HdfsCluster,
    keys: list[str],
    stops: list[Callable[[], None]],
    cache: dict[str, Any] | None = None,
) -> GatewayProcess:
    """A gateway on the bench's HDFS folder (its stop added to ``stops``; ``cache``: its
    ``[cache]`` settings), with ``keys`` in its own cache, so every client meets the same
    gateway: "cold" is the mount's cache, not the gateway's."""
    config: dict[str, Any] = {"mounts": [{"bucket": BUCKET, "uri": hdfs.url + ROOT}]}
    if cache:
        config["cache"] = cache
    gw = GatewayProcess(config)
    gw.start()
    stops.append(gw.close)
    s3 = gw.client()
    for key in keys:
        s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return gw


def cold_pass(m: Mount, procs: int) -> tuple[list[Path], float]:
    """The small files of a fresh mount, and files/s of a first pass over them with the page
    cache dropped."""
    drop_page_cache()
    paths = sorted((m.path / "small").iterdir())
    return paths, files_per_second(paths, procs)


def cold_rounds(
    clients: list[str],
    rounds: int,
    gw: GatewayProcess,
    work: Path,
    local: Path,
    read_only: bool = False,
) -> dict[str, dict[int, list[float]]]:
    """Files/s of cold passes (fresh mount, page cache dropped) with 1, 4 and 8 readers,
    ``rounds`` times, the clients taking turns (in reverse order every other round), so a
    slow spell of this shared machine lands on all of them alike."""
    passes: dict[str, dict[int, list[float]]] = {c: {1: [], 4: [], 8: []} for c in clients}
    for rnd in range(rounds):
        for procs in (1, 4, 8):
            for name in clients if rnd % 2 == 0 else clients[::-1]:
                m = mount(name, gw, work, local, read_only)
                try:
                    passes[name][procs].append(cold_pass(m, procs)[1])
                finally:
                    m.stop()
            print(f"cold round {rnd + 1}, P={procs}:", {c: passes[c][procs] for c in clients})
    return passes


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = list(results["unionstore"])
    out = [
        "| row | unionstore | s3fs | rclone | local | vs s3fs | vs rclone | vs local |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        vals = [results[c].get(row) for c in CLIENTS]
        ours = vals[0]
        ratios = [
            f"{ours / v:.2f}x" if isinstance(ours, float) and isinstance(v, float) and v else "-"
            for v in vals[1:]
        ]
        cells = [f"{v:,.0f}" if isinstance(v, float) else str(v) for v in vals]
        out.append(f"| {row} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(out)


def alongside_table(results: dict[str, Any]) -> str:
    """The 1 GiB page-cache read of each client against the local disk's read right after."""
    out = [
        "| 1 GiB from the page cache, read alternately | client MiB/s | local MiB/s | vs local |",
        "|---|---|---|---|",
    ]
    for name, runs in results["_meta"].get("page_cache_alongside", {}).items():
        ours, local = (statistics.median(runs[k]) for k in ("client", "local"))
        out.append(f"| {name} | {ours:,.0f} | {local:,.0f} | {ours / local:.2f}x |")
    return "\n".join(out)


def plot(results: dict[str, Any], path: Path) -> bool:
    """Each cold pass's files/s over the peer's pass in the same round, per reader count:
    how far each round lands from the 2x target, not just the medians."""
    plt = pyplot(print)
    if plt is None:
        return False
    # keys are ints in a run's results, strings once read back from its JSON
    passes = {
        c: {str(k): v for k, v in d.items()} for c, d in results["_meta"]["cold_passes"].items()
    }
    peers = (("s3fs", "o", "tab:blue"), ("rclone", "s", "tab:red"))
    if "unionstore" not in passes or not any(p in passes for p, _, _ in peers):
        return False  # a run of a subset of the clients (``--clients``) with no ratio to draw
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for shift, (peer, marker, color) in enumerate(peers):
        if peer not in passes:
            continue
        for n, procs in enumerate(("1", "4", "8")):
            ours, theirs = passes["unionstore"][procs], passes[peer][procs]
            ratios = [a / b for a, b in zip(ours, theirs, strict=True) if b]
            xs = [n + (shift - 0.5) * 0.3] * len(ratios)
            label = f"vs {peer}" if n == 0 else None
            ax.scatter(xs, ratios, marker=marker, color=color, alpha=0.7, label=label)
    ax.axhline(2.0, color="grey", linestyle="--", linewidth=1, label="target 2x")
    ax.set_xticks(range(3), ["1 reader", "4 readers", "8 readers"])
    ax.set_ylabel("cold 100 KB files/s, unionstore / peer")
    ax.set_ylim(bottom=0)
    ax.set_title("Cold small files, per round (same round, clients taking turns)")
    ax.legend(loc="upper right", fontsize="small")
    save_figure(plt, fig, path)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB and 300 files")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="interleaved cold passes per client and reader count, besides the one in its own "
        "series; the cold rows are the median of all of them (default 4)",
    )
    parser.add_argument(
        "--clients",
        type=lambda v: [c for c in CLIENTS if c in v.split(",")],
        default=list(CLIENTS),
        help="comma-separated subset of " + ",".join(CLIENTS),
    )
    parser.add_argument(
        "--drop-caches",
        dest="drop_caches",
        action="store_true",
        default=True,
        help="drop the kernel page cache between passes (needs root; the default)",
    )
    parser.add_argument(
        "--no-drop-caches",
        dest="drop_caches",
        action="store_false",
        help="do not drop the kernel page cache between passes",
    )
    parser.add_argument(
        "--read-only",
        action="store_true",
        help="mount every client read-only (the write row then reads n/a)",
    )
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "fuse.png")
    parser.add_argument(
        "--plot-from", type=Path, help="only draw the plot from a saved JSON of this bench"
    )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    parser.add_argument(
        "--json", type=Path, default=REPO / "bench" / "results" / f"{stamp}-fuse.json"
    )
    args = parser.parse_args()
    if args.plot_from:
        return 0 if plot(json.loads(args.plot_from.read_text()), args.plot) else 1
    load_before = os.getloadavg()
    results = run(args)
    load_after = os.getloadavg()
    results["_meta"].update(load_start=list(load_before), load_end=list(load_after))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(alongside_table(results))
    print(f"load average (1/5/15 min) at start {load_before}, at end {load_after}")
    plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
