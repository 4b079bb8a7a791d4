"""Writes through a real ``unionstore mount``: write-close-read back, fsync, O_TRUNC, append,
rename, unlink, mkdir/rmdir, and the clear errnos for what S3 cannot do well.

Every test of :class:`TestWrites` runs once per write *target* (the ``target`` fixture's
params): moto's S3 server, and the gateway over a scratch folder of the real HDFS (its write
path, issue 4). ``FUSE_WRITE_TARGETS=moto`` runs only one of them.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hdfs_native
import pytest

from tests.support.fusemount import FuseMount
from tests.support.gateway import ADMIN_KEY, ADMIN_SECRET, READER_KEY, READER_SECRET, GatewayProcess
from tests.support.hdfs import HdfsCluster
from tests.support.moto import MotoS3

RUN = uuid.uuid4().hex[:8]
MiB = 1 << 20


@dataclass
class Target:
    name: str
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    s3: Any  # boto3 client

    def get(self, key: str) -> bytes:
        body: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except self.s3.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise


#: where writes go (FUSE_WRITE_TARGETS=moto runs one)
TARGETS = os.environ.get("FUSE_WRITE_TARGETS", "moto,gateway").split(",")


@pytest.fixture(scope="module", params=TARGETS)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    if request.param == "moto":
        moto: MotoS3 = request.getfixturevalue("moto_s3")
        bucket = f"fuse-write-{RUN}"
        s3 = moto.client()
        s3.create_bucket(Bucket=bucket)
        yield Target("moto", moto.endpoint, bucket, moto.access_key, moto.secret_key, s3)
        return
    # the gateway over a scratch folder of the real HDFS
    hdfs: HdfsCluster = request.getfixturevalue("hdfs")
    root = f"/fuse-write-{RUN}"
    hdfs_native.Client(hdfs.url).mkdirs(root, create_parent=True)
    with GatewayProcess(
        {"mounts": [{"bucket": "scratch", "uri": hdfs.url + root}], "cache": {"metadata_ttl": "0"}}
    ) as gw:
        yield Target("gateway", gw.endpoint, "scratch", ADMIN_KEY, ADMIN_SECRET, gw.client())


@pytest.fixture(scope="module")
def wmnt(target: Target) -> Iterator[FuseMount]:
    with FuseMount(
        target.endpoint,
        target.bucket,
        access_key=target.access_key,
        secret_key=target.secret_key,
        part_size="5MiB",
    ) as m:
        yield m
        assert m.alive(), m.log_tail()


@pytest.fixture
def d(wmnt: FuseMount, request: pytest.FixtureRequest) -> Path:
    """A fresh directory of the mount for one test (its name is the test's)."""
    path = wmnt.path / request.node.name.replace("[", "-").replace("]", "")
    path.mkdir()
    return path


def _key(m: FuseMount, path: Path) -> str:
    return str(path.relative_to(m.path))


def _errno(action: Any) -> int:
    with pytest.raises(OSError) as info:
        action()
    return int(info.value.errno or 0)


class TestWrites:
    def test_write_close_read_back(self, wmnt: FuseMount, target: Target, d: Path) -> None:
        (d / "hello.txt").write_bytes(b"hello world")
        assert target.get(_key(wmnt, d / "hello.txt")) == b"hello world"
        assert (d / "hello.txt").read_bytes() == b"hello world"
        assert (d / "hello.txt").stat().st_size == 11
        (d / "empty").touch()
        assert target.get(_key(wmnt, d / "empty")) == b""
        assert sorted(os.listdir(d)) == ["empty", "hello.txt"]

    def test_large_file_streams_as_multipart(
        self, wmnt: FuseMount, target: Target, d: Path
    ) -> None:
        body = random.Random(1).randbytes(23 * MiB + 12345)
        before = wmnt.stats()["s3"]
        with open(d / "big.bin", "wb") as f:
            for off in range(0, len(body), MiB):
                f.write(body[off : off + MiB])
        after = wmnt.stats()["s3"]
        assert after.get("requests.UploadPart", 0) - before.get("requests.UploadPart", 0) >= 4
        assert target.get(_key(wmnt, d / "big.bin")) == body
        assert (d / "big.bin").read_bytes() == body
        assert (d / "big.bin").stat().st_size == len(body)

    def test_fsync_publishes_before_close(self, wmnt: FuseMount, target: Target, d: Path) -> None:
        key = _key(wmnt, d / "log.txt")
        with open(d / "log.txt", "wb") as f:
            f.write(b"first;")
            f.flush()
            os.fsync(f.fileno())
            assert target.get(key) == b"first;"
            f.write(b"second;")
            f.flush()
            os.fsync(f.fileno())
            assert target.get(key) == b"first;second;"
            f.write(b"third")
        assert target.get(key) == b"first;second;third"
        assert (d / "log.txt").read_bytes() == b"first;second;third"

    def test_o_trunc_rewrites_and_truncate_to_zero(
        self, wmnt: FuseMount, target: Target, d: Path
    ) -> None:
        p = d / "model.bin"
        p.write_bytes(b"version one, quite long")
        assert p.read_bytes() == b"version one, quite long"  # in the kernel's page cache now
        with open(p, "wb") as f:  # O_TRUNC
            f.write(b"v2")
        assert p.read_bytes() == b"v2"
        assert target.get(_key(wmnt, p)) == b"v2"
        os.truncate(p, 0)
        assert p.read_bytes() == b""
        assert target.get(_key(wmnt, p)) == b""

    def test_append_to_an_existing_object(self, wmnt: FuseMount, target: Target, d: Path) -> None:
        small, large = d / "small.log", d / "large.bin"
        small.write_bytes(b"a" * 100)
        with open(small, "ab") as f:
            f.write(b"b" * 10)
        assert target.get(_key(wmnt, small)) == b"a" * 100 + b"b" * 10
        body = random.Random(2).randbytes(6 * MiB)
        large.write_bytes(body)
        with open(large, "ab") as f:  # >= 5 MiB: the old bytes are copied server-side
            f.write(b"tail")
        assert target.get(_key(wmnt, large)) == body + b"tail"
        assert large.read_bytes() == body + b"tail"

    def test_random_write_into_an_object_is_eopnotsupp(
        self, wmnt: FuseMount, target: Target, d: Path
    ) -> None:
        p = d / "data.bin"
        p.write_bytes(b"0123456789")
        fd = os.open(p, os.O_WRONLY)
        try:
            assert _errno(lambda: os.pwrite(fd, b"X", 3)) == errno.EOPNOTSUPP
        finally:
            os.close(fd)
        assert target.get(_key(wmnt, p)) == b"0123456789"  # untouched
        # a new file: rewriting bytes already uploaded as a part is refused too
        body = random.Random(3).randbytes(13 * MiB)
        fd = os.open(d / "new.bin", os.O_WRONLY | os.O_CREAT)
        try:
            os.write(fd, body)
            assert _errno(lambda: os.pwrite(fd, b"X", 0)) == errno.EOPNOTSUPP
        finally:
            os.close(fd)
        assert target.get(_key(wmnt, d / "new.bin")) == body

    def test_rewrites_in_memory_and_holes_behave_like_posix(
        self, wmnt: FuseMount, target: Target, d: Path
    ) -> None:
        fd = os.open(d / "patched", os.O_WRONLY | os.O_CREAT)
        try:
            os.write(fd, b"hello world")
            os.pwrite(fd, b"W", 6)  # still in memory: fine
            os.pwrite(fd, b"!", 20)  # past the end: a hole of zeros
        finally:
            os.close(fd)
        expected = b"hello World" + bytes(9) + b"!"
        assert target.get(_key(wmnt, d / "patched")) == expected
        assert (d / "patched").read_bytes() == expected

    def test_rename_files(self, wmnt: FuseMount, target: Target, d: Path) -> None:
        (d / "sub").mkdir()
        (d / "a").write_bytes(b"A")
        (d / "b").write_bytes(b"B")
        os.rename(d / "a", d / "a2")
        os.rename(d / "a2", d / "sub" / "a3")
        assert (d / "sub" / "a3").read_bytes() == b"A"
        assert _errno(lambda: os.stat(d / "a")) == errno.ENOENT
        assert not target.exists(_key(wmnt, d / "a"))
        assert not target.exists(_key(wmnt, d / "a2"))
        os.replace(d / "b", d / "sub" / "a3")  # over an existing file
        assert (d / "sub" / "a3").read_bytes() == b"B"
        assert target.get(_key(wmnt, d / "sub" / "a3")) == b"B"
        assert sorted(os.listdir(d)) == ["sub"]
        assert os.listdir(d / "sub") == ["a3"]

    def test_rename_directory_is_exdev_and_mv_falls_back(
        self, wmnt: FuseMount, target: Target, d: Path
    ) -> None:
        (d / "src" / "inner").mkdir(parents=True)
        (d / "src" / "inner" / "f").write_bytes(b"f")
        assert _errno(lambda: os.rename(d / "src", d / "dst")) == errno.EXDEV
        shutil.move(str(d / "src"), str(d / "dst"))  # copies file by file, then deletes
        assert (d / "dst" / "inner" / "f").read_bytes() == b"f"
        assert not (d / "src").exists()
        assert target.get(_key(wmnt, d / "dst" / "inner" / "f")) == b"f"

    def test_unlink(self, wmnt: FuseMount, target: Target, d: Path) -> None:
        (d / "gone").write_bytes(b"x")
        os.unlink(d / "gone")
        assert _errno(lambda: os.stat(d / "gone")) == errno.ENOENT
        assert not target.exists(_key(wmnt, d / "gone"))
        assert os.listdir(d) == []
        assert _errno(lambda: os.unlink(d / "gone")) == errno.ENOENT

    def test_unlink_while_writing_publishes_nothing(
        self, wmnt: FuseMount, target: Target, d: Path
    ) -> None:
        with open(d / "tmp", "wb") as f:
            f.write(b"partial")
            os.unlink(d / "tmp")
            f.write(b" more")
        assert not target.exists(_key(wmnt, d / "tmp"))
        assert os.listdir(d) == []

    def test_visible_while_being_written(self, wmnt: FuseMount, d: Path) -> None:
        with open(d / "growing", "wb") as f:
            f.write(b"x" * 1000)
            f.flush()
            assert os.listdir(d) == ["growing"]
            assert os.stat(d / "growing").st_size == 1000

    def test_mkdir_rmdir(self, wmnt: FuseMount, target: Target, d: Path) -> None:
        os.mkdir(d / "new")
        assert target.exists(_key(wmnt, d / "new") + "/")  # the directory marker
        assert os.path.isdir(d / "new") and os.listdir(d / "new") == []
        assert _errno(lambda: os.mkdir(d / "new")) == errno.EEXIST
        (d / "new" / "f").write_bytes(b"f")
        assert _errno(lambda: os.rmdir(d / "new")) == errno.ENOTEMPTY
        assert _errno(lambda: os.rmdir(d / "new" / "f")) == errno.ENOTDIR
        assert _errno(lambda: os.unlink(d / "new")) in (errno.EISDIR, errno.EPERM)
        os.unlink(d / "new" / "f")
        os.rmdir(d / "new")
        assert not os.path.exists(d / "new")
        assert not target.exists(_key(wmnt, d / "new") + "/")

    def test_links_permissions_and_times(self, wmnt: FuseMount, d: Path) -> None:
        (d / "f").write_bytes(b"f")
        assert _errno(lambda: os.link(d / "f", d / "hard")) == errno.EPERM
        assert _errno(lambda: os.symlink("f", d / "soft")) == errno.EPERM
        assert _errno(lambda: os.chmod(d / "f", 0o600)) == errno.EPERM
        assert _errno(lambda: os.chown(d / "f", 1234, 1234)) == errno.EPERM
        os.chmod(d / "f", 0o644)  # no change: fine
        os.utime(d / "f", (1_000_000, 1_000_000))  # accepted, not stored
        assert (d / "f").read_bytes() == b"f"


def test_writes_refused_by_the_endpoint_fail_with_an_errno(hdfs: HdfsCluster) -> None:
    """A key allowed to read only: the write fails at close() with EACCES (AccessDenied), mkdir
    at once; nothing is left behind and the daemon carries on."""
    root = f"/fuse-readonly-{RUN}"
    hdfs_native.Client(hdfs.url).mkdirs(root, create_parent=True)
    config = {
        "mounts": [{"bucket": "readonly", "uri": hdfs.url + root}],
        "keys": [
            {"access_key": ADMIN_KEY, "secret_key": ADMIN_SECRET, "admin": True},
            {"access_key": READER_KEY, "secret_key": READER_SECRET, "grants": {"readonly": "read"}},
        ],
    }
    with (
        GatewayProcess(config) as gw,
        FuseMount(gw.endpoint, "readonly", access_key=READER_KEY, secret_key=READER_SECRET) as m,
    ):
        with pytest.raises(OSError) as info:
            (m.path / "x.txt").write_bytes(b"x")
        assert info.value.errno == errno.EACCES, info.value
        with pytest.raises(OSError) as info:
            os.mkdir(m.path / "dir")
        assert info.value.errno == errno.EACCES, info.value
        assert os.listdir(m.path) == []
        assert m.alive()
