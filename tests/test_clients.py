"""Real S3 tools against the gateway over HDFS: awscli, rclone and pyarrow's S3FileSystem."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.support.gateway import ADMIN_KEY, ADMIN_SECRET, FILES, GatewayProcess

BUCKET = "hdfsb"  # the HDFS-backed bucket of the shared gateway fixture


def aws(
    gateway: GatewayProcess, *args: str, config: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("aws", path=os.path.dirname(sys.executable)) or shutil.which("aws")
    assert exe, "awscli is part of the test extra"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ADMIN_KEY,
        "AWS_SECRET_ACCESS_KEY": ADMIN_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(config) if config else "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    return subprocess.run(
        [exe, "--endpoint-url", gateway.endpoint, *args],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )


def rclone(gateway: GatewayProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    # rclone's S3 backend reads AWS_* variables too (AWS_CA_BUNDLE breaks its HTTP client)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "RCLONE_CONFIG": "/dev/null",
        "RCLONE_CONFIG_GW_TYPE": "s3",
        "RCLONE_CONFIG_GW_PROVIDER": "Other",
        "RCLONE_CONFIG_GW_ENDPOINT": gateway.endpoint,
        "RCLONE_CONFIG_GW_ACCESS_KEY_ID": ADMIN_KEY,
        "RCLONE_CONFIG_GW_SECRET_ACCESS_KEY": ADMIN_SECRET,
        "RCLONE_CONFIG_GW_REGION": "us-east-1",
        "RCLONE_CONFIG_GW_FORCE_PATH_STYLE": "true",
    }
    return subprocess.run(["rclone", *args], capture_output=True, env=env, timeout=120, check=False)


def assert_tree(root: Path) -> None:
    for key, data in FILES.items():
        assert (root / key).read_bytes() == data, key


def test_awscli_ls_cp_sync(gateway: GatewayProcess, tmp_path: Path) -> None:
    r = aws(gateway, "s3", "ls")
    assert r.returncode == 0, r.stderr
    assert b" hdfsb\n" in r.stdout
    r = aws(gateway, "s3", "ls", f"s3://{BUCKET}/", "--recursive")
    assert r.returncode == 0, r.stderr
    listed = [line.split(maxsplit=3)[3] for line in r.stdout.decode().splitlines()]
    assert listed == sorted(FILES, key=str.encode)
    r = aws(gateway, "s3", "cp", f"s3://{BUCKET}/big.bin", str(tmp_path / "big.bin"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "big.bin").read_bytes() == FILES["big.bin"]
    r = aws(gateway, "s3", "sync", f"s3://{BUCKET}", str(tmp_path / "sync"))
    assert r.returncode == 0, r.stderr
    assert_tree(tmp_path / "sync")
    r = aws(gateway, "s3api", "head-object", "--bucket", BUCKET, "--key", "nope")
    assert r.returncode != 0 and b"404" in r.stderr


def test_rclone_lsf_copy_check_cat(gateway: GatewayProcess, tmp_path: Path) -> None:
    r = rclone(gateway, "lsf", "-R", "--files-only", f"gw:{BUCKET}")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.decode().splitlines()) == sorted(FILES)
    dest = tmp_path / "copy"
    # rclone verifies downloads against MD5-shaped ETags: ours must not look like one
    r = rclone(gateway, "copy", f"gw:{BUCKET}", str(dest))
    assert r.returncode == 0, r.stderr
    assert_tree(dest)
    r = rclone(gateway, "check", "--download", f"gw:{BUCKET}", str(dest))
    assert r.returncode == 0, r.stderr
    r = rclone(gateway, "cat", f"gw:{BUCKET}/a0")
    assert r.returncode == 0 and r.stdout == b"zero"


def test_pyarrow_s3filesystem(gateway: GatewayProcess) -> None:
    fs = pafs.S3FileSystem(
        access_key=ADMIN_KEY,
        secret_key=ADMIN_SECRET,
        endpoint_override=gateway.endpoint.removeprefix("http://"),
        scheme="http",
        region="us-east-1",
        allow_bucket_creation=False,
    )
    infos = fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True))
    files = {
        i.path.removeprefix(BUCKET + "/"): i.size for i in infos if i.type == pafs.FileType.File
    }
    assert files == {k: len(v) for k, v in FILES.items()}
    with fs.open_input_file(f"{BUCKET}/big.bin") as fh:
        assert fh.size() == len(FILES["big.bin"])
        assert fh.read_at(1000, 5000) == FILES["big.bin"][5000:6000]
        fh.seek(0)
        assert fh.read() == FILES["big.bin"]
    with pytest.raises(FileNotFoundError):
        fs.open_input_file(f"{BUCKET}/missing")
