"""A minimal HTTP/1.1 client for one endpoint: a pool of keep-alive connections on asyncio
streams, whole bodies in and out, nothing else (no redirects, cookies, proxies, compression).

Why not httpx: measured on this kind of machine, one small GET against the gateway cost the
daemon ~1.1 ms of CPU through httpx and ~0.27 ms here (signing included), and a cold
100 KB file is one GET, so the client's CPU decided how many cold files per second a mount
read on two busy cores.

Replies are framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or the end of the
connection; HEAD, 1xx, 204 and 304 replies have no body. A connection goes back to the pool
only after its reply was read whole and neither side asked to close it. A request that
fails on a reused connection before any byte of the reply arrived (the server closed an
idle connection) is sent once more on a new one; every other failure is an
:class:`HttpError` (:class:`HttpTimeout` for timeouts), and retrying is the caller's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

HEAD_LIMIT = 1 << 20  # status line and headers


class HttpError(Exception):
    """No (complete) HTTP reply: connection refused, reset, cut short, malformed."""


class HttpTimeout(HttpError):
    pass


class _Stale(Exception):
    """A reused connection was closed by the server before it replied."""


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    content: bytes


@dataclass(slots=True, eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class HttpClient:
    def __init__(
        self,
        endpoint: str,
        *,
        max_connections: int = 64,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default_port = parts.port is None or parts.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._ssl = ssl.create_default_context() if self.tls else None
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Conn] = []
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Response:
        """Send ``method target`` (path and query, already encoded) and read the reply."""
        head = self._head(method, target, headers or {}, body)
        async with self._slots:
            for _ in range(2):
                conn = await self._connection()
                try:
                    async with asyncio.timeout(self.timeout):
                        resp, keep = await self._exchange(conn, method, head, body)
                except _Stale:
                    conn.close()
                    continue
                except TimeoutError:
                    conn.close()
                    raise HttpTimeout(f"{method} {target}: no reply in {self.timeout:g}s") from None
                except (
                    OSError,
                    ValueError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                ) as exc:
                    conn.close()
                    raise HttpError(f"{method} {target}: {type(exc).__name__}: {exc}") from None
                except BaseException:
                    conn.close()
                    raise
                if keep and not self._closed:
                    conn.reused = True
                    self._idle.append(conn)
                else:
                    conn.close()
                return resp
        raise HttpError(f"{method} {target}: the server closed the connection twice")

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()

    # -- internals ---------------------------------------------------------------------------
    def _head(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
        if body or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    async def _connection(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self.tls else None,
                    limit=HEAD_LIMIT,
                )
        except TimeoutError:
            raise HttpTimeout(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise HttpError(f"connect to {self.host}:{self.port}: {exc}") from None
        return _Conn(reader, writer)

    async def _exchange(
        self, conn: _Conn, method: str, head: bytes, body: bytes
    ) -> tuple[Response, bool]:
        w, r = conn.writer, conn.reader
        try:
            if len(body) <= 1 << 16:
                w.write(head + body)
            else:
                w.write(head)
                w.write(body)
            await w.drain()
            raw = await r.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError) as exc:
            if conn.reused and not (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise _Stale from None
            raise
        while True:
            status, version, headers = _parse_head(raw)
            if not 100 <= status < 200:
                break
            raw = await r.readuntil(b"\r\n\r\n")  # 100 Continue and friends: skip
        keep = version == "HTTP/1.1"
        conn_hdr = headers.get("connection", "").lower()
        if "close" in conn_hdr:
            keep = False
        elif "keep-alive" in conn_hdr:
            keep = True
        if method == "HEAD" or status in (204, 304):
            content = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            content = await _read_chunked(r)
        elif "content-length" in headers:
            content = await r.readexactly(int(headers["content-length"]))
        else:
            content, keep = await r.read(), False
        return Response(status, headers, content), keep


def _parse_head(raw: bytes) -> tuple[int, str, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/") or not code.isdigit():
        raise HttpError(f"not an HTTP reply: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(f"malformed header line: {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(code), version, headers


async def _read_chunked(r: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await r.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while await r.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await r.readexactly(size))
        if await r.readexactly(2) != b"\r\n":
            raise HttpError("malformed chunked body")
