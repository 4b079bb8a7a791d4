"""Two source trees of ``unionstore mount`` (or of the gateway) side by side on cold 100 KB
files: files/s and where the CPU goes, per file.

    python -m bench.fuse_ab TREE_A TREE_B [--rounds 4] [--readers 4,8] [--files 2000]
        [--side mount|gateway] [--metadata-ttl 60s] [--read-only]

A tree is a checkout of a revision (``git archive REV | tar -x -C DIR``); a process imports
``unionstore`` from its tree (``PYTHONPATH``). With ``--side mount`` (the default) each mount's
daemon comes from its tree, and HDFS, the gateway (warmed, as in ``bench.fuse_bench``) and the
reader processes are the same for both. With ``--side gateway`` each tree runs its own warmed
gateway on the same HDFS, and the mounts, from this checkout, take turns on them;
``--metadata-ttl`` sets the gateways' metadata TTL (a short one makes GETs stat the UFS).
Each round mounts fresh (empty cache, page cache dropped), the two taking turns and in
reverse order every other round, and reads every file once with N reader processes:
``bench.fuse_bench``'s cold rows. Around each pass the CPU of the daemon's threads (its event
loop and the others, user and system) and of the gateway is read from ``/proc``, and printed
per file with each pass, then as medians. CPU per file does not drift with a busy machine the
way files/s does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import CLK_TCK, proc_cpu_seconds  # noqa: E402
from bench.fuse_bench import (  # noqa: E402
    cold_pass,
    mount,
    small_files,
    warm_gateway,
)
from tests.support.hdfs import HdfsCluster  # noqa: E402

ROWS = ("files/s", "daemon ms", "loop user", "loop sys", "others ms", "gateway ms")


def thread_cpu(pid: int) -> dict[tuple[bool, str], float]:
    """CPU seconds of ``pid``'s threads: {(is the main thread, "user" | "sys"): seconds}."""
    out: dict[tuple[bool, str], float] = defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            main = task.name == str(pid)
            out[main, "user"] += int(fields[11]) / CLK_TCK
            out[main, "sys"] += int(fields[12]) / CLK_TCK
    return out


def _restore(python_path: str | None) -> None:
    if python_path is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = python_path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("trees", nargs=2, type=Path, help="two source trees: A and B")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--readers", default="4,8", help="reader processes, comma-separated")
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--side", choices=("mount", "gateway"), default="mount")
    p.add_argument("--metadata-ttl", default=None, help="the gateways' [cache] metadata_ttl")
    p.add_argument("--read-only", action="store_true", help="mount read-only")
    args = p.parse_args()
    trees = [t.resolve() for t in args.trees]
    for t in trees:
        if not (t / "unionstore" / "__init__.py").exists():
            p.error(f"{t} is not a source tree of unionstore")
    readers = [int(n) for n in args.readers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="fuse-bench-"))
    stops: list[Callable[[], None]] = []
    hdfs = HdfsCluster()
    passes: dict[tuple[int, int], list[list[float]]] = defaultdict(list)
    old_path = os.environ.get("PYTHONPATH")
    try:
        hdfs.start()
        keys = list(small_files(hdfs, args.files))
        cache = {"metadata_ttl": args.metadata_ttl} if args.metadata_ttl else None
        gateways = []
        for tree in trees if args.side == "gateway" else trees[:1]:
            if args.side == "gateway":
                os.environ["PYTHONPATH"] = str(tree)
            gateways.append(warm_gateway(hdfs, keys, stops, cache))
            _restore(old_path)
        for rnd in range(args.rounds):
            for procs in readers:
                for i in (0, 1) if rnd % 2 == 0 else (1, 0):
                    gw = gateways[i] if args.side == "gateway" else gateways[0]
                    assert gw.proc is not None
                    if args.side == "mount":
                        os.environ["PYTHONPATH"] = str(trees[i])
                    m = mount("unionstore", gw, work, work, args.read_only)
                    try:
                        before, gw0 = thread_cpu(m.pid), proc_cpu_seconds(gw.proc.pid)
                        paths, rate = cold_pass(m, procs)
                        after, gw1 = thread_cpu(m.pid), proc_cpu_seconds(gw.proc.pid)
                    finally:
                        m.stop()
                    ms = {k: 1000 * (after[k] - before.get(k, 0.0)) / len(paths) for k in after}
                    row = [
                        rate,
                        sum(ms.values()),
                        ms.get((True, "user"), 0.0),
                        ms.get((True, "sys"), 0.0),
                        ms.get((False, "user"), 0.0) + ms.get((False, "sys"), 0.0),
                        1000 * (gw1 - gw0) / len(paths),
                    ]
                    passes[i, procs].append(row)
                    cells = ", ".join(
                        f"{n} {v:.0f}" if n == "files/s" else f"{n} {v:.2f}"
                        for n, v in zip(ROWS, row, strict=True)
                    )
                    print(f"round {rnd + 1}, {procs} readers, {'AB'[i]}: {cells}", flush=True)
    finally:
        _restore(old_path)
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                stop()
        hdfs.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nA = {trees[0]}\nB = {trees[1]}\nmedians of {args.rounds} passes:\n")
    print("| tree | readers | " + " | ".join(ROWS) + " |")
    print("|---|---|" + "---|" * len(ROWS))
    for procs in readers:
        for i in (0, 1):
            rows = passes[i, procs]
            med = [statistics.median(r[k] for r in rows) for k in range(len(ROWS))]
            cells = [f"{med[0]:.0f}", *(f"{v:.2f}" for v in med[1:])]
            print(f"| {'AB'[i]} | {procs} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
