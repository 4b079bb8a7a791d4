"""`unionstore serve` with no arguments: the embedded default a newcomer tries first."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3

from tests.support.ports import free_port, wait_for_port


def test_serve_with_no_arguments_serves_data_folder(tmp_path: Path) -> None:
    (tmp_path / "data" / "demo").mkdir(parents=True)
    (tmp_path / "data" / "demo" / "hello.txt").write_bytes(b"hello")
    port = free_port()
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "UNIONSTORE_LISTEN": f"127.0.0.1:{port}",  # a free port; the default is 9900
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "unionstore.cli", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
        assert proc.stdout is not None
        banner = b""
        deadline = time.monotonic() + 10
        while b"secret key:" not in banner and time.monotonic() < deadline:
            banner += proc.stdout.readline()
        text = banner.decode()
        assert f"http://127.0.0.1:{port}" in text
        access = re.search(r"access key: (\S+)", text)
        secret = re.search(r"secret key: (\S+)", text)
        assert access and secret, text
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id=access.group(1),
            aws_secret_access_key=secret.group(1),
            region_name="us-east-1",
        )
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["demo"]
        assert s3.get_object(Bucket="demo", Key="hello.txt")["Body"].read() == b"hello"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0


def test_bad_flags_exit_2_with_a_message(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "unionstore.cli", "serve", "--mount", "nonsense"],
        cwd=tmp_path,
        capture_output=True,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)},
        timeout=60,
    )
    assert r.returncode == 2
    assert b"--mount takes BUCKET[/PREFIX]=URI" in r.stderr
