"""Shared fixtures: real servers, started once per test session.

- `hdfs`: a real Hadoop 2.7.3 NameNode + DataNode on loopback (tests/support/hdfs.py)
- `hdfs_client`: a fresh `hdfs_native.Client` for it (connects as $HADOOP_USER_NAME, or the OS
  user, at its first call)
- `moto_s3`: moto's S3 server on loopback (tests/support/moto.py)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import hdfs_native
import pytest

from tests.support.gateway import (
    ADMIN_KEY,
    ADMIN_SECRET,
    ALICE,
    ALICE_SECRET,
    FILES,
    READER_KEY,
    READER_SECRET,
    WREADER,
    WREADER_SECRET,
    GatewayProcess,
)
from tests.support.hdfs import HdfsCluster
from tests.support.moto import MotoS3


@pytest.fixture(scope="session")
def hdfs() -> Iterator[HdfsCluster]:
    cluster = HdfsCluster()
    try:
        cluster.start()  # kills what it started if it fails halfway
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def hdfs_client(hdfs: HdfsCluster) -> hdfs_native.Client:
    return hdfs_native.Client(hdfs.url)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---- more fixtures go below this line (gateway, MariaDB, FUSE mount, ...) --------------------


@pytest.fixture(scope="session")
def backends(
    hdfs: HdfsCluster, moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The same files in HDFS, a moto bucket and a local folder; returns bucket -> URI."""
    run = uuid.uuid4().hex[:8]
    client = hdfs_native.Client(hdfs.url)
    hroot = f"/s3read-{run}"
    for key, data in FILES.items():
        path = f"{hroot}/{key}"
        client.mkdirs(path.rsplit("/", 1)[0], create_parent=True)
        with client.create(path) as fh:
            fh.write(data)
    client.mkdirs(f"{hroot}/emptydir", create_parent=True)
    client.mkdirs(f"{hroot}-scratch", create_parent=True)
    local = tmp_path_factory.mktemp("local")
    for key, data in FILES.items():
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(data)
    s3 = moto_s3.client()
    bucket = f"origin-{run}"
    s3.create_bucket(Bucket=bucket)
    for key, data in FILES.items():
        s3.put_object(Bucket=bucket, Key=f"pfx/{key}", Body=data)
    return {
        "hdfsb": f"{hdfs.url}{hroot}",
        "scratch": f"{hdfs.url}{hroot}-scratch",
        "localb": local.as_uri(),
        "objb": f"s3://{bucket}/pfx",
    }


@pytest.fixture(scope="session")
def gateway(
    backends: dict[str, str], moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway over all three backends, a union bucket and a public bucket."""
    s3_options = {
        "endpoint": moto_s3.endpoint,
        "access_key": moto_s3.access_key,
        "secret_key": moto_s3.secret_key,
        "region": moto_s3.region,
    }
    public = tmp_path_factory.mktemp("public")
    (public / "hello.txt").write_bytes(b"hello anonymous")
    mounts: list[dict[str, Any]] = [
        {"bucket": "hdfsb", "uri": backends["hdfsb"]},
        {"bucket": "scratch", "uri": backends["scratch"]},
        {"bucket": "localb", "uri": backends["localb"]},
        {"bucket": "objb", "uri": backends["objb"], "options": s3_options},
        {"bucket": "union", "uri": backends["localb"]},
        {"bucket": "union", "prefix": "a/", "uri": backends["hdfsb"]},
        {"bucket": "union", "prefix": "remote/", "uri": backends["objb"], "options": s3_options},
        {"bucket": "public", "uri": public.as_uri()},
    ]
    config = {
        "mounts": mounts,
        "keys": [
            {"access_key": ADMIN_KEY, "secret_key": ADMIN_SECRET, "admin": True},
            {"access_key": READER_KEY, "secret_key": READER_SECRET, "grants": {"hdfsb": "read"}},
        ],
        "buckets": {"public": {"anonymous": "read"}},
    }
    with GatewayProcess(config) as gw:
        yield gw


# ---- the write-path gateway: a bucket root on HDFS plus object-store and local mounts ----
@pytest.fixture(scope="session")
def wroot(hdfs: HdfsCluster) -> str:
    root = f"/w-{uuid.uuid4().hex[:8]}"
    client = hdfs_native.Client(hdfs.url)
    client.mkdirs(f"{root}/buckets/hbkt", create_parent=True)
    client.mkdirs(f"{root}/alice", create_parent=True)
    client.set_owner(f"{root}/alice", "alice")
    client.mkdirs(f"{root}/rootonly", create_parent=True)  # 755 root: alice may not write
    client.set_permission(f"{root}/buckets/hbkt", 0o777)
    return root


@pytest.fixture(scope="session")
def wgw(
    hdfs: HdfsCluster, moto_s3: MotoS3, wroot: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    local = tmp_path_factory.mktemp("wlocal")
    origin = f"worigin-{uuid.uuid4().hex[:8]}"
    moto_s3.client().create_bucket(Bucket=origin)
    s3_options = {
        "endpoint": moto_s3.endpoint,
        "access_key": moto_s3.access_key,
        "secret_key": moto_s3.secret_key,
    }
    config = {
        "bucket_root": f"{hdfs.url}{wroot}/buckets",
        "mounts": [
            {"bucket": "lbkt", "uri": local.as_uri()},
            {"bucket": "obkt", "uri": f"s3://{origin}/data", "options": s3_options},
            {"bucket": "alicebkt", "uri": f"{hdfs.url}{wroot}/alice"},
            {"bucket": "rootonly", "uri": f"{hdfs.url}{wroot}/rootonly"},
        ],
        "keys": [
            {"access_key": ADMIN_KEY, "secret_key": ADMIN_SECRET, "admin": True},
            {
                "access_key": ALICE,
                "secret_key": ALICE_SECRET,
                "user": "alice",
                "grants": {"*": "write"},
            },
            {"access_key": WREADER, "secret_key": WREADER_SECRET, "grants": {"*": "read"}},
        ],
        "cache": {"metadata_ttl": "1h", "block_size": "1MiB"},
    }
    with GatewayProcess(config) as gw:
        yield gw
