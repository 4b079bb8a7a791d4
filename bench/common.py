"""What the benchmark scripts share, written once.

bench/run.py (read path), bench/caching.py (caching rows) and bench/ratelimit.py (egress
limits) each measure something of their own; around the measuring they need the same pieces:

- the 1 GiB object both gateway benchmarks read (MiB number i starts with i, so the first and
  last MiB of every GET are checked), how it is written into HDFS and how a GET of it is judged;
- a time limit and signals that end a run by raising ``Interrupted``, and a cleanup that
  neither of them can cut short;
- one HTTP request over loopback, a pre-signing S3 client, a tampered signature;
- this machine's CPU counters (/proc) and the facts a report starts with;
- the markdown pieces: a table, the machine line, the notes, the plot's figure.

Nothing here imports the scripts: they import this.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/run.py` works too, not only `-m bench.run`
    sys.path.insert(0, str(REPO))

from bench.loadgen import StreamResult  # noqa: E402
from tests.support.gateway import ADMIN_KEY, ADMIN_SECRET  # noqa: E402
from tests.support.ports import LOOPBACK  # noqa: E402

# ---- the 1 GiB object ------------------------------------------------------------------------

BUCKET = "bench"
HDFS_ROOT = "/bench"
MIB = 1 << 20
BIG_KEY = "big/1GiB.bin"
BIG_SIZE = 1 << 30

_BIG_BASE = random.Random("big").randbytes(MIB)


def big_mib(i: int) -> bytes:
    """MiB number i of the 1 GiB object: its index (8 bytes, big-endian) + fixed random bytes."""
    return i.to_bytes(8, "big") + _BIG_BASE[8:]


async def write_big_object(client: Any, opts: Any) -> None:
    """Write the 1 GiB object with an hdfs-native AsyncClient (its folder must exist) and
    check its length."""
    w = await client.create(f"{HDFS_ROOT}/{BIG_KEY}", opts)
    chunk = 8  # MiB a write
    for first in range(0, BIG_SIZE // MIB, chunk):
        await w.write(b"".join(big_mib(i) for i in range(first, first + chunk)))
    await w.close()
    st = await client.get_file_info(f"{HDFS_ROOT}/{BIG_KEY}")
    if st.length != BIG_SIZE:
        raise RuntimeError(f"wrote {st.length} bytes of {BIG_KEY}, wanted {BIG_SIZE}")


def big_content_ok(r: StreamResult) -> bool:
    """A GET of the 1 GiB object answered 200 with all its bytes, first and last MiB right."""
    return (
        r.status == 200
        and r.received == BIG_SIZE
        and r.first_mib == big_mib(0)
        and r.last_mib == big_mib(BIG_SIZE // MIB - 1)
    )


def big_get_fields(r: StreamResult) -> dict[str, Any]:
    """What a report keeps of one GET of the 1 GiB object (value: GB/s if the bytes were right)."""
    ok = big_content_ok(r)
    return {
        "value": r.gbps if ok else None,
        "gbps": r.gbps,
        "seconds": r.seconds,
        "ttfb_ms": r.ttfb_seconds * 1000,
        "status": r.status,
        "received": r.received,
        "content_ok": ok,
    }


# ---- time limit and signals ------------------------------------------------------------------


class Interrupted(BaseException):
    """SIGTERM, SIGHUP or the time limit (SIGALRM) ended the run."""


def _on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(f"signal {signal.Signals(signum).name}")


_STOPPING = (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)


def arm_time_limit(seconds: float) -> None:
    """From now on SIGTERM, SIGHUP and, after `seconds`, SIGALRM raise Interrupted."""
    for sig in _STOPPING:
        signal.signal(sig, _on_signal)
    signal.setitimer(signal.ITIMER_REAL, seconds)


@contextlib.contextmanager
def cleanup_shielded() -> Iterator[None]:
    """Disarm the time limit and ignore the stopping signals (Ctrl-C too) while the body
    cleans up; afterwards they act as they do by default again."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    for sig in (*_STOPPING, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
    try:
        yield
    finally:
        for sig in _STOPPING:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


# ---- requests --------------------------------------------------------------------------------


def request(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh loopback connection: (status, lower-cased headers, body)."""
    parts = urlsplit(url)
    assert parts.hostname == LOOPBACK
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        target = parts.path + ("?" + parts.query if parts.query else "")
        conn.request(method, target)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def tamper(url: str) -> str:
    """The same pre-signed URL with its signature's last hex digit changed."""
    m = re.search(r"X-Amz-Signature=([0-9a-f]+)", url)
    assert m is not None
    sig = m.group(1)
    return url[: m.start(1)] + sig[:-1] + ("0" if sig[-1] != "0" else "1") + url[m.end(1) :]


def presigner(endpoint: str) -> Any:
    """A boto3 S3 client with the gateways' admin key, to pre-sign URLs for `endpoint`."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", retries={"max_attempts": 1}),
    )


# ---- CPU counters ----------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (NaN if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal
    busy = parts[0] + parts[1] + parts[2] + parts[5] + parts[6] + parts[7]
    return busy / CLK_TCK, parts[7] / CLK_TCK


# ---- machine facts ---------------------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    ).stdout.strip()


def git_head() -> str:
    """The short hash of HEAD ("" outside a checkout)."""
    return _git("rev-parse", "--short", "HEAD")


def git_dirty() -> bool:
    """Tracked files differ from HEAD."""
    return bool(_git("status", "--porcelain", "--untracked-files=no"))


def host_facts() -> dict[str, Any]:
    """The machine a run starts on: date, cores, memory, CPU, kernel, Python, load average."""
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def loadavg_text(load: Sequence[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def machine_text(f: dict[str, Any]) -> str:
    """The report's machine line, to be ended by the caller: "Machine: nproc 2, ... at the end"."""
    return (
        f"Machine: nproc {f['nproc']}, {f['mem_gib']} GiB RAM, {f['cpu_model']}, "
        f"Linux {f['kernel']}; load average {loadavg_text(f['loadavg_start'])} at the start, "
        f"{loadavg_text(f.get('loadavg_end', ()))} at the end"
    )


# ---- numbers and markdown --------------------------------------------------------------------


def median(xs: Sequence[Any]) -> float | None:
    """The median of the numbers among `xs` (None, NaN and the rest left out), or None."""
    vals = [x for x in xs if isinstance(x, int | float) and x == x]
    return statistics.median(vals) if vals else None


def ratio_text(r: float | None) -> str:
    """A ratio: two decimals, or two significant digits below 0.1 (0.0035x, not 0.00x)."""
    if r is None:
        return "-"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A markdown table; the first `left` columns are aligned left, the others right."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * left + "---:|" * (len(head) - left)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def notes_lines(notes: Sequence[str], by: str) -> list[str]:
    """The report's notes section (none if there are no notes); `by` names who wrote them."""
    if not notes:
        return []
    return [
        f"Notes from this run (written by the {by} from its measurements):",
        "",
        *(f"- {n}" for n in notes),
        "",
    ]


def print_notes(notes: Sequence[str]) -> None:
    if notes:
        print("\nNotes:\n" + "\n".join(f"- {n}" for n in notes))


def stamped_path(folder: Path, name: str) -> Path:
    """`folder`/<UTC time>-`name`.json for a run's raw numbers (the folder is made)."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-{name}.json"


def write_json(path: Path, doc: Any, indent: int = 2) -> None:
    path.write_text(json.dumps(doc, indent=indent, default=str))


def pyplot(log: Callable[[str], None]) -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None (said with `log`) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    return plt


def save_figure(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- a run's end -----------------------------------------------------------------------------


@dataclass
class Ending:
    """How a guarded run ended: `aborted` says why it stopped early (None: it did not)."""

    aborted: str | None = None


@contextlib.contextmanager
def guarded_run(cleanup: Callable[[], None], log: Callable[[str], None]) -> Iterator[Ending]:
    """The body of a run: Ctrl-C, a stopping signal or the time limit end it early (the run
    reports what it measured), an error ends it and goes on up; either way `cleanup` runs to
    its end, shielded from further signals."""
    ending = Ending()
    try:
        yield ending
    except (Interrupted, KeyboardInterrupt) as exc:
        ending.aborted = f"interrupted ({exc or 'Ctrl-C'})"
    except BaseException as exc:
        ending.aborted = f"error: {exc!r}"
        raise
    finally:
        with cleanup_shielded():
            cleanup()
        if ending.aborted:
            log(f"aborted: {ending.aborted}; everything started was stopped")
