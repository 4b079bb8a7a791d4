"""The prefetch daemon and ``unionstore warm`` end to end: a real HDFS whose NameNode writes
its real audit log (rotating every 16 KB), a real gateway process, the daemon as a process.

Witnesses: the DataNode's own BytesRead (JMX) and the gateway's ``ufs_read_bytes`` say whether
a GET crossed the line; the daemon's state file (written atomically, kept across restarts)
counts every event it finished, so an event handled twice or never shows there."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hdfs_native
import httpx
import pytest
from botocore.exceptions import ClientError

from tests.support.gateway import ADMIN_KEY, ADMIN_SECRET, GatewayProcess
from tests.support.hdfs import HdfsCluster
from tests.support.ports import free_port, poll_until

pytestmark = pytest.mark.slow
MiB = 1 << 20
CLI = [sys.executable, "-m", "unionstore.cli"]
CREDS = ["--access-key", ADMIN_KEY, "--secret-key", ADMIN_SECRET]


@pytest.fixture(scope="module")
def cluster() -> Iterator[HdfsCluster]:
    with HdfsCluster(audit_max_file_size="16KB", audit_max_backup_index=200) as c:
        client = hdfs_native.Client(c.url)
        client.mkdirs("/models", create_parent=True)
        client.mkdirs("/other", create_parent=True)
        yield c


@pytest.fixture(scope="module")
def gw(cluster: HdfsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "mounts": [
            {"bucket": "models", "uri": cluster.url + "/models"},
            {"bucket": "other", "uri": cluster.url + "/other"},
        ],
        "cache": {"block_size": "1MiB", "metadata_ttl": "1h"},
    }
    workdir = tmp_path_factory.mktemp("pgw")
    with GatewayProcess(config, workdir=workdir) as g:
        yield g


class Prefetcher:
    """``unionstore prefetch`` as a process, with its own /metrics."""

    def __init__(self, cluster: HdfsCluster, gw: GatewayProcess, state: Path, watch: str) -> None:
        self.port = free_port()
        self.state = state
        self.log = state.parent / f"{state.name}.log"
        self.args = [
            *CLI,
            "prefetch",
            "--audit-log",
            str(cluster.audit_log),
            "--watch",
            watch,
            "--gateway",
            gw.endpoint,
            *CREDS,
            "--hdfs",
            cluster.url,
            "--settle",
            "1s",
            "--state-dir",
            str(state),
            "--poll-interval",
            "50ms",
            "--metrics-listen",
            f"127.0.0.1:{self.port}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prefetcher:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        poll_until(
            lambda: httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200,
            20,
            "prefetch daemon to serve /health",
            proc=self.proc,
            log=self.log,
        )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)
        code = self.proc.wait(20)
        self.proc = None
        return code

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics").text
        total = 0.0
        for line in text.splitlines():
            m = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
            if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
                total += float(m.group(2))
        return total

    def handled(self) -> dict[str, int]:
        """Events finished, from the state file: survives kills, counts each event once."""
        try:
            data: dict[str, int] = json.loads((self.state / "prefetch-state.json").read_text())[
                "handled"
            ]
            return data
        except (OSError, ValueError):
            return {}


@pytest.fixture
def prefetcher(cluster: HdfsCluster, gw: GatewayProcess, tmp_path: Path) -> Iterator[Any]:
    started: list[Prefetcher] = []

    def make(watch: str = "/models=models") -> Prefetcher:
        p = Prefetcher(cluster, gw, tmp_path / "state", watch)
        started.append(p)
        return p

    yield make
    for p in started:
        if p.proc is not None:
            assert p.kill(signal.SIGTERM) == 0, "no clean stop on SIGTERM"


def ufs_bytes(gw: GatewayProcess) -> float:
    text = httpx.get(gw.endpoint + "/metrics").text
    m = re.search(r'^unionstore_ufs_read_bytes_total\{mount="models/"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def write(client: hdfs_native.Client, path: str, data: bytes) -> None:
    with client.create(path, hdfs_native.WriteOptions(overwrite=True)) as fh:
        for i in range(0, len(data), 8 * MiB):
            fh.write(data[i : i + 8 * MiB])


def get(gw: GatewayProcess, bucket: str, key: str) -> bytes:
    body: bytes = gw.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def settled_bytes_read(cluster: HdfsCluster) -> int:
    """BytesRead once it stopped moving across a JMX refresh (about a second)."""
    last = cluster.datanode_bytes_read()
    for _ in range(30):
        time.sleep(1.2)
        now = cluster.datanode_bytes_read()
        if now == last:
            return now
        last = now
    raise AssertionError("DataNode BytesRead never settled")


# ---- the four scenarios ----------------------------------------------------------------------
def test_renamed_model_is_cached_before_the_first_read(
    prefetcher: Any, cluster: HdfsCluster, gw: GatewayProcess
) -> None:
    daemon = prefetcher().start()
    client = hdfs_native.Client(cluster.url)
    client.mkdirs("/models/m1", create_parent=True)
    data = os.urandom(64 * MiB)
    write(client, "/models/m1/_tmp", data)
    client.rename("/models/m1/_tmp", "/models/m1/model.bin")
    renamed = time.monotonic()
    poll_until(lambda: daemon.metric("unionstore_prefetch_warmed_total") >= 1, 20, "the warm")
    assert time.monotonic() - renamed < 10
    assert daemon.metric("unionstore_prefetch_warm_lag_seconds_count") == 1
    dn_before, ufs_before = settled_bytes_read(cluster), ufs_bytes(gw)
    assert get(gw, "models", "m1/model.bin") == data
    assert ufs_bytes(gw) == ufs_before
    for _ in range(2):  # across two JMX refreshes
        time.sleep(1.2)
        assert cluster.datanode_bytes_read() == dn_before


def test_deleted_or_rewritten_file_is_not_served_stale(
    prefetcher: Any, cluster: HdfsCluster, gw: GatewayProcess
) -> None:
    client = hdfs_native.Client(cluster.url)
    client.mkdirs("/models/fresh", create_parent=True)
    v1, v2 = b"one" * 100_000, b"two, and longer" * 100_000
    for path in ("/models/fresh/a.bin", "/models/fresh/b.bin", "/other/c.bin"):
        write(client, path, v1)
    daemon = prefetcher().start()
    for bucket, key in (("models", "fresh/a.bin"), ("models", "fresh/b.bin"), ("other", "c.bin")):
        assert get(gw, bucket, key) == v1  # metadata and blocks now cached for an hour
    client.delete("/models/fresh/a.bin")
    write(client, "/models/fresh/b.bin", v2)
    write(client, "/other/c.bin", v2)  # not watched: the control

    def gone() -> bool:
        try:
            get(gw, "models", "fresh/a.bin")
        except ClientError as exc:
            return bool(exc.response["Error"]["Code"] == "NoSuchKey")
        return False

    poll_until(gone, 10, "the deleted file to disappear")
    poll_until(lambda: get(gw, "models", "fresh/b.bin") == v2, 10, "the rewritten file")
    assert get(gw, "other", "c.bin") == v1  # the TTL alone would have served stale data
    assert daemon.handled().get("delete") == 1


def burst(cluster: HdfsCluster, root: str, n: int, pace: float = 0.0) -> dict[str, int]:
    """Write n files as _tmp + rename (6 writers), touch some, delete some; return the
    number of events of each command under ``root``."""
    hdfs_native.Client(cluster.url).mkdirs(root, create_parent=True)
    local = threading.local()

    def one(i: int) -> None:
        if not hasattr(local, "client"):
            local.client = hdfs_native.Client(cluster.url)
        c = local.client
        write(c, f"{root}/_tmp_{i}", os.urandom(64 * 1024 + i))
        c.rename(f"{root}/_tmp_{i}", f"{root}/f{i:03d}.bin")
        if i % 5 == 1:
            c.set_times(f"{root}/f{i:03d}.bin", 1_000_000, 1_000_000)
        time.sleep(pace)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(one, range(n)))
    client = hdfs_native.Client(cluster.url)
    deleted = [i for i in range(n) if i % 7 == 3]
    for i in deleted:
        client.delete(f"{root}/f{i:03d}.bin")
    return {"create": n, "rename": n, "setTimes": len(range(1, n, 5)), "delete": len(deleted)}


def check_everything_cached(gw: GatewayProcess, prefix: str, n: int) -> None:
    before = ufs_bytes(gw)
    for i in range(n):
        key = f"{prefix}/f{i:03d}.bin"
        if i % 7 == 3:
            with pytest.raises(ClientError):
                get(gw, "models", key)
        else:
            assert len(get(gw, "models", key)) == 64 * 1024 + i
    assert ufs_bytes(gw) == before, "a file was not warmed"


def test_rotation_mid_burst_loses_nothing_and_repeats_nothing(
    prefetcher: Any, cluster: HdfsCluster, gw: GatewayProcess
) -> None:
    prefix = f"b3-{uuid.uuid4().hex[:6]}"
    daemon = prefetcher(f"/models/{prefix}=models/{prefix}").start()
    files_before = len(list(cluster.audit_log.parent.glob("hdfs-audit.log*")))
    expected = burst(cluster, f"/models/{prefix}", 30)
    poll_until(lambda: daemon.handled() == expected, 30, f"handled == {expected}")
    assert daemon.metric("unionstore_prefetch_log_rotations_total") >= 2
    assert len(list(cluster.audit_log.parent.glob("hdfs-audit.log*"))) >= files_before + 2
    assert daemon.metric("unionstore_prefetch_events_total", outcome="garbage") == 0
    calls = "unionstore_prefetch_gateway_calls_total"
    warm_calls = daemon.metric(calls, action="warm", result="ok") + daemon.metric(
        calls, action="warm", result="missing"
    )
    assert warm_calls == 30  # one per file: no event seen twice (deleted ones may be missing)
    check_everything_cached(gw, prefix, 30)
    time.sleep(1)
    assert daemon.handled() == expected  # and nothing more trickles in


def test_kill_and_restart_mid_burst_loses_nothing_and_repeats_nothing(
    prefetcher: Any, cluster: HdfsCluster, gw: GatewayProcess
) -> None:
    prefix = f"b4-{uuid.uuid4().hex[:6]}"
    daemon = prefetcher(f"/models/{prefix}=models/{prefix}").start()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        writer = pool.submit(burst, cluster, f"/models/{prefix}", 36, 0.3)
        poll_until(lambda: daemon.handled().get("rename", 0) >= 6, 30, "a few renames handled")
        daemon.kill(signal.SIGKILL)
        at_kill = daemon.handled()
        time.sleep(1.5)  # events keep coming while it is down
        daemon.start()
        expected = writer.result()
    assert sum(at_kill.values()) < sum(expected.values())
    poll_until(lambda: daemon.handled() == expected, 30, f"handled == {expected}")
    assert daemon.metric("unionstore_prefetch_events_total", outcome="garbage") == 0
    check_everything_cached(gw, prefix, 36)
    time.sleep(1)
    assert daemon.handled() == expected


# ---- unionstore warm -------------------------------------------------------------------------
class SlowProxy:
    """A TCP proxy on loopback that holds each client->gateway chunk for ``delay`` seconds
    (SigV4 still verifies: the Host header is the proxy's, as signed)."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.delay, self.upstream = delay, upstream_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(conn, up, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, conn, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if slow:
                    time.sleep(self.delay)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


def make_files(cluster: HdfsCluster, root: str, n: int, size: int) -> None:
    client = hdfs_native.Client(cluster.url)
    client.mkdirs(f"{root}/sub", create_parent=True)
    for i in range(n):
        write(client, f"{root}/{'sub/' if i % 3 == 0 else ''}w{i:02d}.bin", os.urandom(size))


def warm_cmd(gw_url: str, target: str, state: Path, *extra: str) -> list[str]:
    return [*CLI, "warm", target, "--gateway", gw_url, *CREDS, "--state-dir", str(state), *extra]


def test_warm_dry_run_then_progress_bar_on_a_terminal(
    cluster: HdfsCluster, gw: GatewayProcess, tmp_path: Path
) -> None:
    prefix = f"ws-{uuid.uuid4().hex[:6]}"
    make_files(cluster, f"/models/{prefix}", 9, 2 * MiB)
    before = ufs_bytes(gw)
    dry = subprocess.run(
        warm_cmd(gw.endpoint, f"s3://models/{prefix}/", tmp_path, "--dry-run"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listed = [ln for ln in dry.stdout.splitlines() if ln.startswith("would warm ")]
    assert len(listed) == 9 and "would warm 9 (18.0 MiB)" in dry.stdout
    assert ufs_bytes(gw) == before  # a dry run reads nothing
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        warm_cmd(gw.endpoint, f"s3://models/{prefix}/", tmp_path), stdout=follower
    )
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(60) == 0
    os.close(leader)
    text = out.decode()
    assert "\r[" in text and "ETA" in text and "9/9 files" in text and "18.0 MiB/18.0 MiB" in text
    assert ufs_bytes(gw) == before + 18 * MiB
    get(gw, "models", f"{prefix}/w01.bin")
    assert ufs_bytes(gw) == before + 18 * MiB  # served from the cache


def test_warm_interrupted_and_rerun_does_not_redo_finished_files(
    cluster: HdfsCluster, gw: GatewayProcess, tmp_path: Path
) -> None:
    prefix = f"wi-{uuid.uuid4().hex[:6]}"
    make_files(cluster, f"/models/{prefix}", 20, 256 * 1024)
    proxy = SlowProxy(gw.port, 0.15)  # the same gateway, slowly
    via_proxy = f"http://127.0.0.1:{proxy.port}"
    try:
        proc = subprocess.Popen(
            warm_cmd(via_proxy, f"s3://models/{prefix}", tmp_path, "-j1"),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first: list[str] = []
        for line in proc.stdout:
            if line.startswith("warmed "):
                first.append(line.split()[1])
                if len(first) == 4:
                    proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        assert 4 <= len(first) < 20
        proxy.delay = 0.0
        again = subprocess.run(
            warm_cmd(via_proxy, f"s3://models/{prefix}", tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        proxy.close()
    assert f"{len(first)} already warm" in again.stdout
    second = [ln.split()[1] for ln in again.stdout.splitlines() if ln.startswith("warmed ")]
    assert not set(first) & set(second)
    assert len(first) + len(second) == 20
    assert not list(tmp_path.glob("warm-*.jsonl"))  # finished: no state left behind
    before = ufs_bytes(gw)
    third = subprocess.run(
        warm_cmd(gw.endpoint, f"s3://models/{prefix}", tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "0 already warm" in third.stdout and ufs_bytes(gw) == before


def test_warm_evict_drops_the_prefix(
    cluster: HdfsCluster, gw: GatewayProcess, tmp_path: Path
) -> None:
    prefix = f"we-{uuid.uuid4().hex[:6]}"
    make_files(cluster, f"/models/{prefix}", 3, MiB)
    subprocess.run(
        warm_cmd(gw.endpoint, f"s3://models/{prefix}", tmp_path),
        check=True,
        capture_output=True,
        timeout=60,
    )
    before = ufs_bytes(gw)
    ev = subprocess.run(
        warm_cmd(gw.endpoint, f"s3://models/{prefix}", tmp_path, "--evict"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "evicted" in ev.stdout
    get(gw, "models", f"{prefix}/w01.bin")
    assert ufs_bytes(gw) == before + MiB  # read again from HDFS
