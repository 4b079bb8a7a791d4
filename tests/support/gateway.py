"""Run ``unionstore serve`` as a real process on a free loopback port, for tests and bench."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

ADMIN_KEY = "AKIAUNIONSTOREADMIN"
ADMIN_SECRET = "admin-secret-key-for-tests"
READER_KEY, READER_SECRET = "AKIAREADER", "reader-secret"
ALICE, ALICE_SECRET = "AKIAALICE", "alice-secret"  # acts on HDFS as user "alice"
WREADER, WREADER_SECRET = "AKIAWREADER", "reader-secret"  # read-only on every bucket
FILES = {
    "a.b": b"file a.b",
    "a/x": b"x" * 10,
    "a/y/z.txt": b"deep",
    "a0": b"zero",
    "sp ace+plus=eq&amp.txt": b"special",
    "é/ünï.bin": bytes(range(256)) * 4,
    "big.bin": bytes(i % 251 for i in range(3 * 1024 * 1024 + 17)),
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return (
            "{ "
            + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items())
            + " }"
        )
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(cfg: dict[str, Any]) -> str:
    """Enough TOML for gateway configs: scalars, inline tables, arrays of tables."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in cfg.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tables.append(f"[[{key}]]")
                tables += [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in item.items()]
        elif isinstance(value, dict) and key == "buckets":
            for name, policy in value.items():
                tables.append(f"[buckets.{_toml_value(name)}]")
                tables += [f"{k} = {_toml_value(v)}" for k, v in policy.items()]
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"


class GatewayProcess:
    """``unionstore serve --config FILE`` in its own process group."""

    def __init__(self, config: dict[str, Any], *, workdir: Path | None = None) -> None:
        self.port = free_port()
        self._own_workdir = workdir is None  # made here: removed by close()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="unionstore-gw-"))
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "cache_dir": str(self.workdir / "cache"),
            "keys": [{"access_key": ADMIN_KEY, "secret_key": ADMIN_SECRET, "admin": True}],
            **config,
        }
        self.config = config
        self.config_path = self.workdir / "unionstore.toml"
        self.config_path.write_text(to_toml(config))
        self.log_path = self.workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        if self.proc is not None and self.proc.poll() is None:
            return self  # already running (``with gw.start():`` must not start a second one)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unionstore.cli", "serve", "--config", str(self.config_path)],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.close()
                raise RuntimeError(f"gateway exited at start:\n{tail}")
            try:
                with urllib.request.urlopen(self.endpoint + "/_unionstore/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        tail = self.log_tail()
        self.close()
        raise RuntimeError(f"gateway not ready in {timeout}s:\n{tail}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def peak_rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    def client(
        self, access_key: str = ADMIN_KEY, secret_key: str = ADMIN_SECRET, **config: Any
    ) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, **config),
        )

    def admin(self, method: str, action: str, **params: str) -> dict[str, Any]:
        """Call the admin API (``/_unionstore/v1/ACTION``) with the admin key."""
        import asyncio

        from unionstore.admin_client import AdminClient

        async def call() -> dict[str, Any]:
            async with AdminClient(self.endpoint, ADMIN_KEY, ADMIN_SECRET) as client:
                return await client.call(method, action, **params)

        return asyncio.run(call())

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the gateway and remove the folder made for it (its cache, config and log);
        ``stop()`` alone keeps them for a restart."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
