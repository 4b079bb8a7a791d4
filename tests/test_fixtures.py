"""The real-server fixtures are real: HDFS stores and serves bytes, writes its audit log,
counts reads, survives a NameNode restart; moto speaks S3."""

from __future__ import annotations

import os
import uuid

import hdfs_native

from tests.support.hdfs import HdfsCluster
from tests.support.moto import MotoS3
from tests.support.ports import LOOPBACK, poll_until, port_open


def _unique_dir(client: hdfs_native.Client) -> str:
    d = f"/test-fixtures/{uuid.uuid4().hex}"
    client.mkdirs(d, create_parent=True)
    return d


def _write(client: hdfs_native.Client, path: str, data: bytes) -> None:
    with client.create(path) as w:
        w.write(data)


def _read(client: hdfs_native.Client, path: str) -> bytes:
    with client.read(path) as r:
        data: bytes = r.read()
        return data


def test_hdfs_round_trip_and_audit_log(hdfs: HdfsCluster, hdfs_client: hdfs_native.Client) -> None:
    path = f"{_unique_dir(hdfs_client)}/hello.bin"
    data = os.urandom(1 << 20)
    _write(hdfs_client, path, data)
    assert _read(hdfs_client, path) == data
    st = hdfs_client.get_file_info(path)
    assert st.length == len(data)
    assert not st.isdir

    def create_line() -> str | None:
        if not hdfs.audit_log.exists():
            return None
        for line in hdfs.audit_log.read_text(errors="replace").splitlines():
            if "\tcmd=create\t" in line and f"\tsrc={path}\t" in line:
                return line
        return None

    line = poll_until(create_line, 30, f"audit log line for cmd=create src={path}")
    assert "FSNamesystem.audit: allowed=true" in line
    assert "proto=rpc" in line


def test_datanode_bytes_read_grows(hdfs: HdfsCluster, hdfs_client: hdfs_native.Client) -> None:
    path = f"{_unique_dir(hdfs_client)}/read-me.bin"
    data = os.urandom(3 << 20)
    _write(hdfs_client, path, data)
    before = hdfs.datanode_bytes_read()
    assert _read(hdfs_client, path) == data
    # JMX refreshes about once a second: poll for the new total.
    poll_until(
        lambda: hdfs.datanode_bytes_read() >= before + len(data),
        30,
        f"DataNode BytesRead to grow by {len(data)} from {before}",
    )


def test_namenode_restart_keeps_files(hdfs: HdfsCluster, hdfs_client: hdfs_native.Client) -> None:
    path = f"{_unique_dir(hdfs_client)}/survivor.bin"
    data = os.urandom(64 << 10)
    _write(hdfs_client, path, data)
    port = hdfs.namenode_port
    hdfs.stop_namenode()
    try:
        assert hdfs.namenode_proc is None
        assert not port_open(LOOPBACK, port)
    finally:
        hdfs.start_namenode()
    assert hdfs.namenode_port == port
    assert _read(hdfs_native.Client(hdfs.url), path) == data


def test_hdfs_list_status_order(hdfs_client: hdfs_native.Client) -> None:
    """HDFS keeps a directory's children sorted by their UTF-8 bytes compared as *signed*
    Java bytes, so names with non-ASCII bytes (>= 0x80) come before all-ASCII ones. S3
    listings want unsigned byte order, so the gateway must re-sort; this pins what HDFS does."""
    d = _unique_dir(hdfs_client)
    names = ["a", "a.b", "a0", "A", "é", "a b", "Z"]
    for n in names:
        _write(hdfs_client, f"{d}/{n}", b"x")
    got = [st.path.rsplit("/", 1)[-1] for st in hdfs_client.list_status(d)]
    signed = sorted(names, key=lambda n: [b - 256 if b > 127 else b for b in n.encode()])
    assert got == signed == ["é", "A", "Z", "a", "a b", "a.b", "a0"]
    assert got != sorted(names, key=str.encode)  # not S3 order


def test_moto_s3_put_get(moto_s3: MotoS3) -> None:
    assert moto_s3.endpoint.startswith("http://127.0.0.1:")
    s3 = moto_s3.client()
    bucket = f"fixture-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="dir/obj.txt", Body=b"hello moto")
    got = s3.get_object(Bucket=bucket, Key="dir/obj.txt")
    assert got["Body"].read() == b"hello moto"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["dir/obj.txt"]
