"""CPU the gateway spends per request and per GiB: a measure that a busy machine does not skew.

    python -m bench.cpu [--requests N]

Throughput on a shared 2-core box swings with whatever else runs; the CPU seconds the gateway
process spends on a fixed amount of work do not. One gateway (`unionstore serve` defaults,
1 worker) serves a local folder (``file://`` mount, files in the page cache, so the UFS costs
next to nothing): 200 objects of 100 KB and one 1 GiB object. After a warm-up pass, N
pre-signed HEADs, GETs of 100 KB objects and ListObjectsV2 pages (100 keys) go out on 16
keep-alive connections (bench/loadgen.py), then 3 GETs of the cached 1 GiB object (curl, to
/dev/null); the gateway's user and system CPU (/proc/PID/stat) are read around each row.

The figures say where a faster gateway has to come from: user CPU is our Python and the
server's (hypercorn, h11, asyncio); system CPU is syscalls and copies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import CLK_TCK, MIB  # noqa: E402
from bench.loadgen import run_load  # noqa: E402
from tests.support.gateway import GatewayProcess  # noqa: E402

SMALL, SMALL_SIZE = 200, 100_000


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def make_data(root: Path) -> None:
    small = root / "bkt" / "small"
    small.mkdir(parents=True)
    blob = os.urandom(SMALL_SIZE)
    for i in range(SMALL):
        (small / f"f{i:04d}").write_bytes(blob)
    (root / "big").mkdir()
    with open(root / "big" / "big.bin", "wb") as f:
        for _ in range(1024):
            f.write(os.urandom(MIB))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__)
    p.add_argument("--requests", type=int, default=10_000, help="per request row (10,000)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="unionstore-bench-cpu-"))
    make_data(work)
    (work / "gateway").mkdir()
    gw = GatewayProcess(
        {
            "mounts": [
                {"bucket": "bkt", "uri": f"file://{work}/bkt"},
                {"bucket": "big", "uri": f"file://{work}/big"},
            ]
        },
        workdir=work / "gateway",
    )
    rows: list[tuple[str, str, str, str]] = []
    try:
        gw.start()
        assert gw.proc is not None
        pid, s3 = gw.proc.pid, gw.client()

        def url(op: str, **params: object) -> str:
            return str(s3.generate_presigned_url(op, Params=params, ExpiresIn=3600))

        keys = [f"small/f{i:04d}" for i in range(SMALL)]
        cases = {
            "HEAD 100 KB object": ("HEAD", [url("head_object", Bucket="bkt", Key=k) for k in keys]),
            "GET 100 KB object": ("GET", [url("get_object", Bucket="bkt", Key=k) for k in keys]),
            "ListObjectsV2, 100 keys": (
                "GET",
                [
                    url("list_objects_v2", Bucket="bkt", Prefix="small/", MaxKeys=100, StartAfter=k)
                    for k in keys[::20]
                ],
            ),
        }
        for name, (method, urls) in cases.items():
            run_load(urls, method=method, connections=16, seconds=60, max_requests=2 * SMALL)
            u0, s0 = cpu_split(pid)
            n = args.requests
            r = run_load(urls, method=method, connections=16, seconds=300, max_requests=n)
            u1, s1 = cpu_split(pid)
            if r.errors or not r.requests:
                raise RuntimeError(f"{name}: {r.errors} errors, statuses {r.statuses}")
            per = 1e6 / r.requests
            rows.append((name, f"{(u1 - u0) * per:.0f} us", f"{(s1 - s0) * per:.0f} us", "req"))
            print(f"{name}: user {(u1 - u0) * per:.0f} us, system {(s1 - s0) * per:.0f} us")
        big = url("get_object", Bucket="big", Key="big.bin")
        curl = ["curl", "-sf", "-o", "/dev/null", big]
        subprocess.run(curl, check=True)  # the cold read fills the cache
        u0, s0 = cpu_split(pid)
        for _ in range(3):
            subprocess.run(curl, check=True)
        u1, s1 = cpu_split(pid)
        user, system = f"{(u1 - u0) / 3:.2f} s", f"{(s1 - s0) / 3:.2f} s"
        rows.append(("GET 1 GiB, cached", user, system, "GiB"))
        print(f"GET 1 GiB cached: user {user}, system {system}")
    finally:
        gw.stop()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| row | user CPU | system CPU | per |")
    print("|---|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
