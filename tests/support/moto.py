"""moto's S3 server on a loopback port, for tests that need a real S3 endpoint.

    with MotoS3() as s3:
        s3.client().create_bucket(Bucket="b")

All MotoS3 servers in one Python process share moto's in-memory state; `reset()` clears it.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from tests.support.ports import LOOPBACK, http_get, port_open, wait_for_port


class MotoS3:
    """moto's ThreadedMotoServer bound to 127.0.0.1."""

    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self, port: int | None = None) -> None:
        # Port 0 lets the kernel pick a free port at bind time (no race with other binders);
        # moto's start() would hang forever if its bind failed.
        self._requested_port = 0 if port is None else port
        self.port = 0
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        if not self.port:
            raise RuntimeError("MotoS3 not started")
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        if self._requested_port and port_open(LOOPBACK, self._requested_port):
            raise RuntimeError(f"port {self._requested_port} is already in use")
        server = ThreadedMotoServer(ip_address=LOOPBACK, port=self._requested_port, verbose=False)
        server.start()
        self._server = server
        self.port = int(server.get_host_and_port()[1])
        wait_for_port(LOOPBACK, self.port, timeout=30)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reset(self) -> None:
        """Forget every bucket and object (moto's state is per process)."""
        http_get(f"{self.endpoint}/moto-api/reset", timeout=10, method="POST")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for boto3.client("s3", ...) / session.client pointing here."""
        return {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 2, "mode": "standard"},
                proxies={},
            ),
            **self.client_kwargs(),
        )

    def __enter__(self) -> MotoS3:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
