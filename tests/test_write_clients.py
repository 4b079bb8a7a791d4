"""Real tools writing through the gateway: awscli (cp, sync, 8 MiB multipart, rm), rclone
(copy, check, purge) and s3fs-fuse (a real mount: write, read back, rename, delete), against
HDFS, the object-store driver and local files."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import ADMIN_KEY, ADMIN_SECRET, GatewayProcess
from tests.test_clients import aws, rclone

MiB = 1 << 20
BUCKETS = ["hbkt", "lbkt", "obkt"]


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha",
        "dir/b.bin": os.urandom(100_000),
        "dir/sub/c with space.txt": b"gamma",
        "big.bin": os.urandom(20 * MiB + 7),  # multipart with 8 MiB parts
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


@pytest.mark.parametrize("bucket", BUCKETS)
def test_awscli_cp_sync_multipart_rm(wgw: GatewayProcess, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    prefix = f"aws-{uuid.uuid4().hex[:6]}"
    cfg = tmp_path / "aws.cfg"
    cfg.write_text("[default]\ns3 =\n  multipart_threshold = 8MB\n  multipart_chunksize = 8MB\n")
    r = aws(wgw, "s3", "cp", str(src / "big.bin"), f"s3://{bucket}/{prefix}/big.bin", config=cfg)
    assert r.returncode == 0, r.stderr
    r = aws(wgw, "s3api", "head-object", "--bucket", bucket, "--key", f"{prefix}/big.bin")
    assert r.returncode == 0 and b'-3\\"' in r.stdout  # 20 MiB in 8 MiB parts: a 3-part ETag
    r = aws(wgw, "s3", "sync", str(src), f"s3://{bucket}/{prefix}", config=cfg)
    assert r.returncode == 0, r.stderr
    down = tmp_path / "down"
    r = aws(wgw, "s3", "sync", f"s3://{bucket}/{prefix}", str(down))
    assert r.returncode == 0, r.stderr
    for name, data in files.items():
        assert (down / name).read_bytes() == data, name
    r = aws(wgw, "s3", "sync", str(src), f"s3://{bucket}/{prefix}", config=cfg)
    assert r.returncode == 0 and r.stdout == b""  # nothing changed: nothing uploaded again
    r = aws(wgw, "s3", "rm", f"s3://{bucket}/{prefix}", "--recursive")
    assert r.returncode == 0, r.stderr
    r = aws(wgw, "s3", "ls", f"s3://{bucket}/{prefix}/", "--recursive")
    assert r.stdout == b""


@pytest.mark.parametrize("bucket", BUCKETS)
def test_rclone_copy_check_purge(wgw: GatewayProcess, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    prefix = f"rc-{uuid.uuid4().hex[:6]}"
    r = rclone(wgw, "copy", str(src), f"gw:{bucket}/{prefix}")
    assert r.returncode == 0, r.stderr
    r = rclone(wgw, "check", str(src), f"gw:{bucket}/{prefix}")  # MD5 ETags: hashes compared
    assert r.returncode == 0, r.stderr
    assert b"0 differences found" in r.stderr
    r = rclone(wgw, "purge", f"gw:{bucket}/{prefix}")
    assert r.returncode == 0, r.stderr
    r = rclone(wgw, "lsf", "-R", f"gw:{bucket}/{prefix}")
    assert r.stdout.strip() == b""


@pytest.fixture
def s3fs_mount(wgw: GatewayProcess, tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    passwd = tmp_path / "passwd"
    passwd.write_text(f"{ADMIN_KEY}:{ADMIN_SECRET}\n")
    passwd.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.run(
        [
            "s3fs",
            "hbkt",
            str(mnt),
            "-o",
            f"url={wgw.endpoint}",
            "-o",
            "use_path_request_style",
            "-o",
            f"passwd_file={passwd}",
            "-o",
            "stat_cache_expire=1",
            "-o",
            "enable_noobj_cache",
            "-o",
            "nomixupload",
            "-o",
            "dbglevel=warn",
        ],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    try:
        deadline = time.monotonic() + 30
        while str(mnt) not in Path("/proc/mounts").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert str(mnt) in Path("/proc/mounts").read_text()
        yield mnt
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True, check=False)
        if str(mnt) in Path("/proc/mounts").read_text():
            subprocess.run(["fusermount", "-uz", str(mnt)], capture_output=True, check=False)


def test_s3fs_fuse_write_read_rename_delete(s3fs_mount: Path, wgw: GatewayProcess) -> None:
    d = s3fs_mount / f"s3fs-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    data = os.urandom(3 * MiB)
    (d / "model.bin").write_bytes(data)
    assert (d / "model.bin").read_bytes() == data
    s3 = wgw.client()
    key = f"{d.name}/model.bin"
    assert s3.get_object(Bucket="hbkt", Key=key)["Body"].read() == data
    (d / "model.bin").rename(d / "renamed.bin")
    assert (d / "renamed.bin").read_bytes() == data
    assert sorted(os.listdir(d)) == ["renamed.bin"]
    (d / "renamed.bin").unlink()
    assert os.listdir(d) == []
    d.rmdir()
    assert shutil.which("s3fs")
    assert s3.list_objects_v2(Bucket="hbkt", Prefix=d.name + "/")["KeyCount"] == 0
