"""The caches end to end: a real gateway process over the real HDFS, real clients, and the
DataNode's own byte counter as the witness of what crossed the line."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hdfs_native
import httpx
import pytest
from botocore.exceptions import ClientError

from tests.support.gateway import ADMIN_KEY, ADMIN_SECRET, READER_KEY, READER_SECRET, GatewayProcess
from tests.support.hdfs import HdfsCluster
from tests.support.ports import poll_until

MiB = 1 << 20
BLOCK = 1 * MiB


def write_hdfs(hdfs: HdfsCluster, path: str, data: bytes) -> None:
    client = hdfs_native.Client(hdfs.url)
    client.mkdirs(path.rsplit("/", 1)[0], create_parent=True)
    with client.create(path, hdfs_native.WriteOptions(overwrite=True)) as fh:
        for i in range(0, len(data), 4 * MiB):
            fh.write(data[i : i + 4 * MiB])


def cache_config(root: str, workdir: Path, **cache: Any) -> dict[str, Any]:
    return {
        "mounts": [{"bucket": "cached", "uri": root}],
        "keys": [
            {"access_key": ADMIN_KEY, "secret_key": ADMIN_SECRET, "admin": True},
            {"access_key": READER_KEY, "secret_key": READER_SECRET, "grants": {"*": "read"}},
        ],
        "cache": {"block_size": "1MiB", "metadata_ttl": "1h", **cache},
        "cache_dir": str(workdir / "cache"),
    }


@pytest.fixture(scope="module")
def hroot(hdfs: HdfsCluster) -> str:
    root = f"/cache-{uuid.uuid4().hex[:8]}"
    hdfs_native.Client(hdfs.url).mkdirs(root, create_parent=True)
    return root


@pytest.fixture(scope="module")
def cgw(
    hdfs: HdfsCluster, hroot: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("cgw")
    with GatewayProcess(cache_config(hdfs.url + hroot, workdir), workdir=workdir) as gw:
        yield gw


def cache_cli(
    gw: GatewayProcess, access: str, secret: str, *args: str
) -> subprocess.CompletedProcess[bytes]:
    """``unionstore cache ARGS`` against ``gw`` with the given key."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "unionstore.cli",
            "cache",
            *args,
            "--endpoint",
            gw.endpoint,
            "--access-key",
            access,
            "--secret-key",
            secret,
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )


def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    text = httpx.get(gw.endpoint + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if m and (m.group(1) or "") == want:
            return float(m.group(2))
    return 0.0


def ufs_bytes(gw: GatewayProcess) -> float:
    return metric(gw, "unionstore_ufs_read_bytes_total", mount="cached/")


def test_concurrent_cold_readers_cross_the_line_once(
    cgw: GatewayProcess, hdfs: HdfsCluster, hroot: str
) -> None:
    data = os.urandom(48 * MiB + 12345)
    write_hdfs(hdfs, f"{hroot}/model.bin", data)
    before_ufs, before_dn = ufs_bytes(cgw), hdfs.datanode_bytes_read()

    def read() -> bytes:
        return cgw.client().get_object(Bucket="cached", Key="model.bin")["Body"].read()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: read(), range(16)))
    assert all(r == data for r in results)
    assert ufs_bytes(cgw) - before_ufs == len(data)  # 16 readers, one copy from HDFS
    # the DataNode's own counter (updated once a second, checksums included: +4 bytes/512)
    delta = poll_until(
        lambda: (d := hdfs.datanode_bytes_read() - before_dn) >= len(data) and d,
        timeout=30,
        what="DataNode BytesRead to move",
    )
    assert delta <= 1.05 * len(data)
    # a second read is served from local disk: no HDFS bytes at all
    assert read() == data
    assert ufs_bytes(cgw) - before_ufs == len(data)


def test_small_range_read_fetches_one_block(
    cgw: GatewayProcess, hdfs: HdfsCluster, hroot: str
) -> None:
    data = os.urandom(32 * MiB)
    write_hdfs(hdfs, f"{hroot}/big-random.bin", data)
    before = ufs_bytes(cgw)
    off = 20 * MiB + 777
    r = cgw.client().get_object(
        Bucket="cached", Key="big-random.bin", Range=f"bytes={off}-{off + 4095}"
    )
    assert r["Body"].read() == data[off : off + 4096]
    assert ufs_bytes(cgw) - before == BLOCK  # not the whole file


def test_rewritten_file_is_read_whole_and_new_after_refresh(
    cgw: GatewayProcess, hdfs: HdfsCluster, hroot: str
) -> None:
    s3 = cgw.client()
    old, new = os.urandom(5 * MiB), os.urandom(5 * MiB)
    write_hdfs(hdfs, f"{hroot}/weights.bin", old)
    assert s3.get_object(Bucket="cached", Key="weights.bin")["Body"].read() == old
    write_hdfs(hdfs, f"{hroot}/weights.bin", new)
    # within the (1 h) TTL the cached version is served, whole and consistent
    assert s3.get_object(Bucket="cached", Key="weights.bin")["Body"].read() == old
    # a per-request fresh stat sees the new version and never mixes blocks
    fresh = httpx.get(
        s3.generate_presigned_url("get_object", Params={"Bucket": "cached", "Key": "weights.bin"}),
        headers={"Cache-Control": "no-cache"},
    )
    assert fresh.content == new
    write_hdfs(hdfs, f"{hroot}/weights.bin", old[: 3 * MiB])
    cli = cache_cli(cgw, ADMIN_KEY, ADMIN_SECRET, "invalidate", "s3://cached/weights")
    assert cli.returncode == 0, cli.stderr
    assert s3.get_object(Bucket="cached", Key="weights.bin")["Body"].read() == old[: 3 * MiB]


def test_deleted_file_disappears_after_invalidation(
    cgw: GatewayProcess, hdfs: HdfsCluster, hroot: str
) -> None:
    s3 = cgw.client()
    write_hdfs(hdfs, f"{hroot}/dir/gone.txt", b"soon gone")
    assert s3.get_object(Bucket="cached", Key="dir/gone.txt")["Body"].read() == b"soon gone"
    listed = s3.list_objects_v2(Bucket="cached", Prefix="dir/")
    assert [c["Key"] for c in listed["Contents"]] == ["dir/gone.txt"]
    hdfs_native.Client(hdfs.url).delete(f"{hroot}/dir/gone.txt")
    cgw.admin("POST", "invalidate", bucket="cached", prefix="dir/", data="true")
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="cached", Key="dir/gone.txt")
    assert err.value.response["Error"]["Code"] == "NoSuchKey"
    assert s3.list_objects_v2(Bucket="cached", Prefix="dir/")["KeyCount"] == 0


def test_a_listing_spares_the_gets_of_listed_objects_a_stat(
    cgw: GatewayProcess, hdfs: HdfsCluster, hroot: str
) -> None:
    """A data loader lists a folder, then reads its files: the listing fills the metadata
    cache, so the GETs ask the NameNode nothing (and the ETags of objects written through
    the gateway match the listing's)."""
    s3 = cgw.client()
    files = {f"listed/f{i:03d}": os.urandom(1000 + i) for i in range(40)}
    for key, data in files.items():
        write_hdfs(hdfs, f"{hroot}/{key}", data)
    put = s3.put_object(Bucket="cached", Key="listed/put-through", Body=b"via the gateway")
    files["listed/put-through"] = b"via the gateway"
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket="cached", Prefix="listed/", PaginationConfig={"PageSize": 15}
    )
    listed = {c["Key"]: c["ETag"] for page in pages for c in page["Contents"]}
    assert sorted(listed) == sorted(files)
    assert listed["listed/put-through"] == put["ETag"]
    misses = metric(cgw, "unionstore_metadata_misses_total", mount="cached/")
    for key, data in files.items():
        got = s3.get_object(Bucket="cached", Key=key)
        assert got["Body"].read() == data
        assert got["ETag"] == listed[key]
    assert metric(cgw, "unionstore_metadata_misses_total", mount="cached/") == misses
    # a write after the listing still wins: the GET sees it, not the listed status
    s3.put_object(Bucket="cached", Key="listed/f000", Body=b"rewritten")
    assert s3.get_object(Bucket="cached", Key="listed/f000")["Body"].read() == b"rewritten"


def test_admin_api_needs_an_admin_key(cgw: GatewayProcess) -> None:
    r = cache_cli(cgw, READER_KEY, READER_SECRET, "stats")
    assert r.returncode == 1 and b"403" in r.stderr
    r = cache_cli(cgw, ADMIN_KEY, ADMIN_SECRET, "stats")
    assert r.returncode == 0 and b'"blocks"' in r.stdout


def test_metrics_exposition(cgw: GatewayProcess) -> None:
    cgw.client().list_objects_v2(Bucket="cached")
    text = httpx.get(cgw.endpoint + "/metrics").text
    assert 'unionstore_s3_requests_total{op="get_bucket",status="200"}' in text
    assert 'unionstore_s3_request_seconds_bucket{le="+Inf",op="get_bucket"}' in text
    for name in [
        "unionstore_block_hits_total",
        "unionstore_read_amplification",
        "unionstore_fills_in_flight",
        "unionstore_metadata_hits_total",
        "unionstore_block_cache_bytes",
        "unionstore_metadata_stale_serves_total",
    ]:
        assert name in text, name


def test_kill_9_mid_fill_leaves_no_torn_block(
    hdfs: HdfsCluster, hroot: str, tmp_path: Path
) -> None:
    data = os.urandom(40 * MiB)
    write_hdfs(hdfs, f"{hroot}/crash.bin", data)
    config = cache_config(hdfs.url + hroot, tmp_path, fill_concurrency=2, fill_per_file=2)
    gw = GatewayProcess(config, workdir=tmp_path).start()
    try:
        body = gw.client().get_object(Bucket="cached", Key="crash.bin")["Body"]
        assert body.read(3 * MiB) == data[: 3 * MiB]
        assert gw.proc is not None
        os.killpg(gw.proc.pid, signal.SIGKILL)  # mid-fill: later blocks are being written
        gw.proc.wait(10)
    finally:
        gw.stop()
    gw2 = GatewayProcess(config, workdir=tmp_path)
    with gw2:
        assert gw2.client().get_object(Bucket="cached", Key="crash.bin")["Body"].read() == data
        # and once more, now entirely from the cache
        before = ufs_bytes(gw2)
        assert gw2.client().get_object(Bucket="cached", Key="crash.bin")["Body"].read() == data
        assert ufs_bytes(gw2) == before


def test_namenode_down_cached_data_still_served(
    cgw: GatewayProcess, hdfs: HdfsCluster, hroot: str
) -> None:
    s3 = cgw.client()
    data = os.urandom(3 * MiB)
    write_hdfs(hdfs, f"{hroot}/resilient.bin", data)
    assert s3.get_object(Bucket="cached", Key="resilient.bin")["Body"].read() == data
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "cached", "Key": "resilient.bin"}
    )
    stale_before = metric(cgw, "unionstore_metadata_stale_serves_total", mount="cached/")
    hdfs.stop_namenode()
    try:
        assert s3.get_object(Bucket="cached", Key="resilient.bin")["Body"].read() == data
        # a forced fresh stat fails at the UFS: the stale entry is served (stale-if-error)
        r = httpx.get(url, headers={"Cache-Control": "no-cache"}, timeout=60)
        assert r.status_code == 200 and r.content == data
        assert metric(cgw, "unionstore_metadata_stale_serves_total", mount="cached/") > stale_before
        with pytest.raises(ClientError) as err:
            s3.head_object(Bucket="cached", Key="never-cached.bin")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        hdfs.start_namenode()
    assert s3.get_object(Bucket="cached", Key="resilient.bin")["Body"].read() == data


def test_worker_processes_share_fills_over_hdfs(
    hdfs: HdfsCluster, hroot: str, tmp_path: Path
) -> None:
    data = os.urandom(24 * MiB)
    write_hdfs(hdfs, f"{hroot}/shared.bin", data)
    config = {**cache_config(hdfs.url + hroot, tmp_path), "workers": 2}
    with GatewayProcess(config, workdir=tmp_path) as gw:
        before = hdfs.datanode_bytes_read()

        def read(_: int) -> bytes:
            return gw.client().get_object(Bucket="cached", Key="shared.bin")["Body"].read()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert all(r == data for r in pool.map(read, range(8)))
        delta = poll_until(
            lambda: (d := hdfs.datanode_bytes_read() - before) >= len(data) and d,
            timeout=30,
            what="DataNode BytesRead to move",
        )
        assert delta <= 1.05 * len(data)  # two workers, eight readers, one copy


def test_exact_invalidation_spares_neighbours_and_warm_reports(
    cgw: GatewayProcess, hdfs: HdfsCluster, hroot: str
) -> None:
    write_hdfs(hdfs, f"{hroot}/m1/model", b"a" * (2 * MiB))
    write_hdfs(hdfs, f"{hroot}/m1/model.bin", b"b" * (3 * MiB))
    for key, blocks in (("m1/model", 2), ("m1/model.bin", 3)):
        warmed = cgw.admin("POST", "warm", bucket="cached", key=key)
        assert warmed["complete"] is True and warmed["present"] == blocks == warmed["blocks"]
    cgw.admin("POST", "invalidate", bucket="cached", prefix="m1/model", data="true", exact="true")
    before = ufs_bytes(cgw)
    assert cgw.client().get_object(Bucket="cached", Key="m1/model.bin")["Body"].read() == b"b" * (
        3 * MiB
    )
    assert ufs_bytes(cgw) == before  # the neighbour kept its blocks
    assert cgw.client().get_object(Bucket="cached", Key="m1/model")["Body"].read() == b"a" * (
        2 * MiB
    )
    assert ufs_bytes(cgw) == before + 2 * MiB  # the invalidated one was read again
