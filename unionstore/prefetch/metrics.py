"""The prefetch daemon's own ``/metrics`` and ``/health`` (a tiny HTTP server on loopback)."""

from __future__ import annotations

import asyncio

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """The daemon's own ``/metrics`` (names start with ``unionstore_prefetch_``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "unionstore_prefetch_"
        self.lines = Counter(p + "lines_read", "audit-log lines read", ["log"], registry=r)
        self.events = Counter(
            p + "events",
            "lines by outcome: parsed, garbage, denied, already_done",
            ["outcome"],
            registry=r,
        )
        self.matched = Counter(p + "events_matched", "events on watched paths", ["cmd"], registry=r)
        self.handled = Counter(
            p + "events_handled", "events whose work is done everywhere", ["cmd"], registry=r
        )
        self.warmed = Counter(p + "warmed", "objects warmed on every gateway", registry=r)
        self.invalidated = Counter(p + "invalidated", "invalidations delivered", registry=r)
        self.skipped = Counter(p + "warm_skipped", "warms not done", ["reason"], registry=r)
        self.calls = Counter(
            p + "gateway_calls", "admin calls", ["action", "result", "gateway"], registry=r
        )
        self.warm_lag = Histogram(
            p + "warm_lag_seconds", "audit-line time to warm done", buckets=LAG_BUCKETS, registry=r
        )
        self.invalidate_lag = Histogram(
            p + "invalidate_lag_seconds",
            "audit-line time to invalidation done",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(p + "lag_seconds", "age of the oldest unfinished event", registry=r)
        self.pending = Gauge(p + "pending_events", "events not finished", registry=r)
        self.rotations = Counter(p + "log_rotations", "rotations followed", ["log"], registry=r)
        self.truncations = Counter(p + "log_truncations", "truncations seen", ["log"], registry=r)

    def observe_call(self, action: str, result: str, gateway: str) -> None:
        self.calls.labels(action, result, gateway).inc()

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


async def serve_metrics(listen: str | None, metrics: Metrics) -> asyncio.Server | None:
    """GET /metrics and /health on ``HOST:PORT``."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            while await asyncio.wait_for(reader.readline(), 10) not in (b"\r\n", b"\n", b""):
                pass
            target = [*request.split(), b"", b""][1].decode("latin-1").partition("?")[0]
            status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            if target == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, metrics.render()
            elif target == "/health":
                status, body = "200 OK", b"ok\n"
            head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host.strip("[]") or "127.0.0.1", int(port))
