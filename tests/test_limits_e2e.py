"""Rate limits in a real gateway process: egress throttling, per-key request rate and the
in-flight cap answering 503 SlowDown, the origin cap, live changes (admin API, SIGHUP).

No timing thresholds: throttling is witnessed by the gateway's own counters; achieved rates
and fairness are measured in bench/ (python -m bench.ratelimit)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from tests.support.gateway import GatewayProcess, to_toml
from tests.support.ports import poll_until
from tests.test_cache_e2e import metric

MiB = 1 << 20


def admin(gw: GatewayProcess, method: str, action: str, **params: str) -> dict[str, Any]:
    return gw.admin(method, action, **params)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "lim"
    root.mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(6 * MiB))
    (root / "small.txt").write_bytes(b"small")
    return tmp_path


def gateway(data: Path, **limits: Any) -> GatewayProcess:
    config = {
        "mounts": [{"bucket": "lim", "uri": (data / "data" / "lim").as_uri()}],
        "limits": limits,
    }
    return GatewayProcess(config, workdir=data)


def test_egress_limit_throttles_and_changes_live(data: Path) -> None:
    with gateway(data, per_connection="8MB/s") as gw:
        s3 = gw.client()
        assert (
            s3.get_object(Bucket="lim", Key="big.bin")["Body"].read()
            == (data / "data" / "lim" / "big.bin").read_bytes()
        )
        assert metric(gw, "unionstore_limit_throttled_seconds_total", limit="per_connection") > 0
        assert metric(gw, "unionstore_limit_rate", limit="per_connection") == 8e6
        assert admin(gw, "GET", "limits")["per_connection"] == "8MB/s"
        changed = admin(gw, "POST", "limits", per_connection="unlimited", **{"global": "1GB/s"})
        assert changed["per_connection"] == "unlimited" and changed["global"] == "1GB/s"
        assert metric(gw, "unionstore_limit_rate", limit="per_connection") == -1


def test_disconnected_waiter_frees_its_share(data: Path) -> None:
    with gateway(data, **{"global": "1MB/s"}) as gw:
        url = gw.client().generate_presigned_url(
            "get_object", Params={"Bucket": "lim", "Key": "big.bin"}
        )
        path = url.split(str(gw.port), 1)[1]
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode())
            assert sock.recv(65536)  # the response has started; it now waits for tokens
            poll_until(
                lambda: metric(gw, "unionstore_limit_waiters", limit="global") >= 1,
                timeout=30,
                what="the download to wait for tokens",
            )
        poll_until(
            lambda: metric(gw, "unionstore_limit_waiters", limit="global") == 0,
            timeout=30,
            what="the closed connection to leave the queue",
        )
        # and the next client gets the whole rate: its small object comes through
        assert gw.client().get_object(Bucket="lim", Key="small.txt")["Body"].read() == b"small"


def test_request_rate_per_key_answers_slowdown(data: Path) -> None:
    with gateway(data, requests_per_key="2/s") as gw:
        s3 = gw.client()
        codes = []
        for _ in range(10):
            try:
                s3.head_object(Bucket="lim", Key="small.txt")
                codes.append(200)
            except ClientError as err:
                codes.append(err.response["ResponseMetadata"]["HTTPStatusCode"])
                assert err.response["ResponseMetadata"]["HTTPHeaders"].get("retry-after")
        assert 200 in codes and 503 in codes
        r = httpx.get(s3.generate_presigned_url("list_objects_v2", Params={"Bucket": "lim"}))
        if r.status_code == 503:
            assert b"<Code>SlowDown</Code>" in r.content
        assert metric(gw, "unionstore_limit_refused_total", limit="requests_per_key") >= 1


def test_in_flight_cap_refuses_instead_of_queueing(data: Path) -> None:
    with gateway(data, max_in_flight=1, per_connection="1MB/s") as gw:
        url = gw.client().generate_presigned_url(
            "get_object", Params={"Bucket": "lim", "Key": "big.bin"}
        )
        started, finish = threading.Event(), threading.Event()

        def slow_download() -> None:
            with httpx.stream("GET", url, timeout=60) as r:
                for _ in r.iter_bytes():
                    started.set()
                    finish.wait(60)  # hold the request open while the test probes
                    break

        t = threading.Thread(target=slow_download)
        t.start()
        try:
            assert started.wait(30)
            with pytest.raises(ClientError) as err:
                gw.client().head_object(Bucket="lim", Key="small.txt")
            assert err.value.response["Error"]["Code"] in ("SlowDown", "503")
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        finally:
            finish.set()
            t.join(60)


def test_origin_cap_throttles_fills(data: Path) -> None:
    with gateway(data, origin="4MB/s") as gw:
        assert len(gw.client().get_object(Bucket="lim", Key="big.bin")["Body"].read()) == 6 * MiB
        text = httpx.get(gw.endpoint + "/metrics").text
        line = next(
            x
            for x in text.splitlines()
            if x.startswith("unionstore_origin_throttled_seconds_total")
        )
        assert float(line.rsplit(" ", 1)[1]) > 0


def test_sighup_reloads_limits(data: Path) -> None:
    gw = gateway(data, per_connection="8MB/s")
    with gw:
        assert admin(gw, "GET", "limits")["per_connection"] == "8MB/s"
        config = dict(gw.config)
        config["limits"] = {"per_connection": "3MB/s", "requests_per_key": "100/s"}
        gw.config_path.write_text(to_toml(config))
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGHUP)
        poll_until(
            lambda: admin(gw, "GET", "limits")["per_connection"] == "3MB/s",
            timeout=30,
            what="SIGHUP to reload the limits",
        )
        assert admin(gw, "GET", "limits")["requests_per_key"] == "100/s"
