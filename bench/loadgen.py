"""A lean HTTP/1.1 load generator for the side-by-side runner (loopback only).

Two tools, the same for every gateway in a run:

- :func:`run_load`: N keep-alive connections, one request in flight on each, cycling through a
  list of pre-built request byte strings (pre-signed URLs, so the client signs nothing while it
  measures), for a fixed time. Backends: ``python`` (asyncio protocols on uvloop; parses only
  the status line, Content-Length / chunked framing and ``Connection: close``) and ``wrk``
  (Debian's wrk with a Lua script that cycles the same paths), when it is installed.
- :func:`stream_get`: one GET on a blocking socket that ``recv_into``s a 1 MiB buffer and
  throws the bytes away, timing first byte and last byte.

Every response's status is counted; a run that got anything but the expected status is
reported as errors, never as throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "LoadResult",
    "StreamResult",
    "build_request",
    "loopback_address",
    "new_loop",
    "percentile",
    "run_load",
    "set_nodelay",
    "stream_get",
    "wrk_available",
]


def loopback_address(url: str) -> tuple[str, int]:
    """(host, port) of `url`; a ValueError unless it is a loopback address."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    assert host is not None and port is not None
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"refusing to load a non-loopback address: {host}")
    return host, port


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Send small writes (requests) at once: no Nagle delay."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def build_request(url: str, method: str = "GET") -> bytes:
    """The raw bytes of one HTTP/1.1 request for a (pre-signed) URL.

    The Host header is exactly the URL's ``host:port``, as SigV4 signed it."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode("latin-1")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[idx]


@dataclass
class LoadResult:
    backend: str
    connections: int
    seconds: float
    requests: int  # responses with the expected status, completed inside the window
    errors: int  # any other status, broken framing, connect/read errors
    statuses: dict[int, int] = field(default_factory=dict)
    body_bytes: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    reconnects: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds (python only)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "connections": self.connections,
            "seconds": self.seconds,
            "requests": self.requests,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "body_bytes": self.body_bytes,
            "rps": self.rps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "reconnects": self.reconnects,
        }


# ---- python backend ----------------------------------------------------------------------

_HEADERS, _BODY, _CHUNKED = 0, 1, 2


class _Run:
    """Shared state of one timed run."""

    def __init__(self, requests: Sequence[bytes], head: bool, expect: int) -> None:
        self.requests = requests
        self.head = head
        self.expect = expect
        self.deadline = float("inf")
        self.stopping = False
        self.max_requests: int | None = None  # stop sending after this many (warm-up passes)
        self.sent = 0
        self.ok = 0
        self.errors = 0
        self.statuses: dict[int, int] = {}
        self.body_bytes = 0
        self.latencies: list[float] = []
        self.reconnects = 0
        self.in_flight = 0
        self.drained: asyncio.Event | None = None


class _Conn(asyncio.Protocol):
    def __init__(self, run: _Run, start: int, stride: int, done: asyncio.Future[None]) -> None:
        self.run = run
        self.i = start
        self.stride = stride
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = _HEADERS
        self.remaining = 0
        self.status = 0
        self.close_after = False
        self.t0 = 0.0
        self.busy = False

    # -- lifecycle
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:  # the server hung up mid-response
            self.busy = False
            self.run.in_flight -= 1
            self.run.errors += 1
            self._maybe_drained()
        if not self.done.done():
            self.done.set_result(None)

    def _send(self) -> None:
        run = self.run
        assert self.transport is not None
        if run.stopping or (run.max_requests is not None and run.sent >= run.max_requests):
            self.transport.close()
            return
        run.sent += 1
        reqs = run.requests
        req = reqs[self.i % len(reqs)]
        self.i += self.stride
        self.state = _HEADERS
        self.buf.clear()
        self.busy = True
        run.in_flight += 1
        self.t0 = time.perf_counter()
        self.transport.write(req)

    def _maybe_drained(self) -> None:
        run = self.run
        if run.stopping and run.in_flight == 0 and run.drained is not None:
            run.drained.set()

    def _fail(self) -> None:
        self.run.errors += 1
        self.busy = False
        self.run.in_flight -= 1
        self._maybe_drained()
        assert self.transport is not None
        self.transport.close()

    def _complete(self) -> None:
        run = self.run
        now = time.perf_counter()
        self.busy = False
        run.in_flight -= 1
        if now <= run.deadline:
            run.statuses[self.status] = run.statuses.get(self.status, 0) + 1
            if self.status == run.expect:
                run.ok += 1
                run.latencies.append(now - self.t0)
            else:
                run.errors += 1
        self._maybe_drained()
        assert self.transport is not None
        if self.close_after:
            self.transport.close()
        else:
            self._send()

    # -- parsing
    def data_received(self, data: bytes) -> None:
        if self.state == _BODY:
            n = len(data)
            if n < self.remaining:
                self.remaining -= n
                self.run.body_bytes += n
                return
            self.run.body_bytes += self.remaining
            if n > self.remaining:  # bytes after the body: no pipelining here, so a bug
                self._fail()
                return
            self._complete()
            return
        self.buf += data
        if self.state == _HEADERS:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self._fail()
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            lines = head.split("\r\n")
            try:
                self.status = int(lines[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                self._fail()
                return
            length = -1
            chunked = False
            self.close_after = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
                elif name == "connection" and "close" in value.lower():
                    self.close_after = True
            if self.run.head or self.status in (204, 304) or 100 <= self.status < 200:
                length = 0
                chunked = False
            if chunked:
                self.state = _CHUNKED
            elif length < 0:
                self._fail()  # read-to-close bodies are not supported (no server here does it)
                return
            else:
                have = len(self.buf)
                if have > length:
                    self._fail()
                    return
                self.run.body_bytes += have
                if have == length:
                    self._complete()
                    return
                self.remaining = length - have
                self.buf.clear()
                self.state = _BODY
                return
        if self.state == _CHUNKED:
            self._parse_chunks()

    def _parse_chunks(self) -> None:
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            try:
                size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
            except ValueError:
                self._fail()
                return
            if size == 0:
                # last chunk; no trailers expected: "0\r\n\r\n"
                if len(buf) < eol + 4:
                    return
                del buf[: eol + 4]
                self._complete()
                return
            if len(buf) < eol + 2 + size + 2:
                return
            self.run.body_bytes += size
            del buf[: eol + 2 + size + 2]


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of the gateway
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


async def _python_load(
    host: str,
    port: int,
    requests: Sequence[bytes],
    connections: int,
    seconds: float,
    head: bool,
    expect: int,
    max_requests: int | None,
) -> LoadResult:
    loop = asyncio.get_running_loop()
    run = _Run(requests, head, expect)
    run.max_requests = max_requests
    run.drained = asyncio.Event()
    conns: list[tuple[asyncio.Transport, _Conn]] = []
    t_start = time.perf_counter()
    run.deadline = t_start + seconds
    stride = connections
    live: list[asyncio.Future[None]] = []
    for c in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        transport, proto = await loop.create_connection(
            lambda c=c, done=done: _Conn(run, c, stride, done), host, port
        )
        conns.append((transport, proto))  # type: ignore[arg-type]
        live.append(done)
    # Reconnect connections the server closed (Connection: close) until time is up.
    while True:
        now = time.perf_counter()
        if now >= run.deadline:
            break
        if max_requests is not None and run.sent >= max_requests:
            break
        wait = run.deadline - now if max_requests is None else min(0.05, run.deadline - now)
        finished, _ = await asyncio.wait(live, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        for fut in finished:
            idx = live.index(fut)
            if time.perf_counter() >= run.deadline or run.stopping:
                break
            if max_requests is not None and run.sent >= max_requests:
                break
            done = loop.create_future()
            proto = conns[idx][1]
            try:
                transport, proto2 = await loop.create_connection(
                    lambda p=proto, d=done: _Conn(run, p.i, stride, d), host, port
                )
            except OSError:
                run.errors += 1
                done.set_result(None)
                transport, proto2 = conns[idx]
                await asyncio.sleep(0.05)  # do not spin on a refused port
            else:
                run.reconnects += 1
            conns[idx] = (transport, proto2)  # type: ignore[assignment]
            live[idx] = done
    run.stopping = True
    elapsed = time.perf_counter() - t_start
    if run.in_flight > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.drained.wait(), timeout=30)
    if max_requests is not None:  # a counted pass lasts until its last response
        elapsed = time.perf_counter() - t_start
    for transport, _ in conns:
        transport.close()
    lat = sorted(run.latencies)
    return LoadResult(
        backend="python",
        connections=connections,
        seconds=min(elapsed, seconds) if max_requests is None else elapsed,
        requests=run.ok,
        errors=run.errors,
        statuses=dict(sorted(run.statuses.items())),
        body_bytes=run.body_bytes,
        p50_ms=percentile(lat, 50) * 1000,
        p99_ms=percentile(lat, 99) * 1000,
        reconnects=run.reconnects,
        latencies=lat,
    )


# ---- wrk backend -------------------------------------------------------------------------

_WRK_LUA = r"""
local paths_file = os.getenv("BENCH_PATHS")
local method = os.getenv("BENCH_METHOD")
local reqs = {}
local n = 0
local i = 0
local thread_no = 0
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("thread_no", counter)
end

function init(args)
  for line in io.lines(paths_file) do
    n = n + 1
    reqs[n] = wrk.format(method, line)
  end
  i = (thread_no or 0) * 7919 % n
end

function request()
  i = i % n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _wrk_load(
    host: str,
    port: int,
    urls: Sequence[str],
    method: str,
    connections: int,
    seconds: float,
) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        paths = Path(tmp) / "paths.txt"
        lines = []
        for url in urls:
            parts = urlsplit(url)
            lines.append(parts.path + ("?" + parts.query if parts.query else ""))
        paths.write_text("\n".join(lines) + "\n")
        script = Path(tmp) / "bench.lua"
        script.write_text(_WRK_LUA)
        env = {**os.environ, "BENCH_PATHS": str(paths), "BENCH_METHOD": method}
        cmd = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            f"http://{host}:{port}/",
        ]
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr}\n{proc.stdout}")
    d = json.loads(line.removeprefix("BENCHJSON "))
    errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
    ok = d["requests"] - d["status"]
    return LoadResult(
        backend="wrk",
        connections=connections,
        seconds=d["duration_us"] / 1e6,
        requests=ok,
        errors=errors,
        statuses={},
        body_bytes=d["bytes"],
        p50_ms=d["p50_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
    )


# ---- public entry points -------------------------------------------------------------------


def run_load(
    urls: Sequence[str],
    *,
    method: str = "GET",
    connections: int = 16,
    seconds: float = 10.0,
    backend: str = "python",
    expect: int = 200,
    max_requests: int | None = None,
) -> LoadResult:
    """Drive `connections` keep-alive connections through `urls` (all on one host:port) for
    `seconds`; return what completed inside the window. With `max_requests`, stop after
    sending that many (e.g. one warm-up pass over every URL); `seconds` is then a time cap."""
    host, port = loopback_address(urls[0])
    if backend == "wrk":
        if max_requests is not None:
            raise ValueError("max_requests needs the python backend")
        return _wrk_load(host, port, urls, method, connections, seconds)
    if backend != "python":
        raise ValueError(f"unknown load generator backend {backend!r}")
    requests = [build_request(u, method) for u in urls]
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(
            _python_load(
                host, port, requests, connections, seconds, method == "HEAD", expect, max_requests
            )
        )


@dataclass
class StreamResult:
    status: int
    content_length: int
    received: int
    seconds: float  # request sent -> last byte
    ttfb_seconds: float  # request sent -> end of response headers
    first_mib: bytes
    last_mib: bytes

    @property
    def gbps(self) -> float:
        return self.received / self.seconds / 1e9 if self.seconds > 0 else 0.0


def stream_get(url: str, bufsize: int = 1 << 20, timeout: float = 120.0) -> StreamResult:
    """GET `url` on a fresh connection and discard the body; keep its first and last MiB."""
    host, port = loopback_address(url)
    req = build_request(url, "GET")
    buf = bytearray(bufsize)
    view = memoryview(buf)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        t0 = time.perf_counter()
        sock.sendall(req)
        head = bytearray()
        while b"\r\n\r\n" not in head:
            n = sock.recv_into(view)
            if n == 0:
                raise ConnectionError("server closed before the response headers")
            head += view[:n]
        t_head = time.perf_counter()
        end = head.find(b"\r\n\r\n")
        lines = bytes(head[:end]).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = -1
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length < 0:
            raise ConnectionError(f"response without Content-Length (status {status})")
        body_start = bytes(head[end + 4 :])
        received = len(body_start)
        first = bytearray(body_start[: 1 << 20])
        tail = bytearray(body_start[-(1 << 20) :])
        while received < length:
            n = sock.recv_into(view, min(bufsize, length - received))
            if n == 0:
                break
            received += n
            if len(first) < 1 << 20:
                first += view[: min(n, (1 << 20) - len(first))]
            # keep the last MiB without copying every chunk: only near the end
            if received > length - (2 << 20):
                tail += view[:n]
                if len(tail) > 2 << 20:
                    del tail[: len(tail) - (1 << 20)]
        t1 = time.perf_counter()
    return StreamResult(
        status=status,
        content_length=length,
        received=received,
        seconds=t1 - t0,
        ttfb_seconds=t_head - t0,
        first_mib=bytes(first),
        last_mib=bytes(tail[-(1 << 20) :]),
    )
