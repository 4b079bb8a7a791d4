"""HTTP for the bridge's S3 client: a pool of keep-alive HTTP/1.1 connections to one
endpoint, whole bodies in and out, behind the two calls the client needs and one error type.

Why not a general client: a cold 100 KB file is one GET, so the client's CPU per request
decides how many cold files per second a mount reads on a busy node, and the mount's event
loop is the busiest thread of the node's read path. What costs in a general client is not
the parsing (C in aiohttp too) but the machinery around each request: request and response
objects, URL objects, header multidicts, timers, tracing, cookies. Here a request is one
``transport.write`` of bytes built by one ``join`` and one future, answered by ``httptools``
(llhttp, the parser of uvicorn and of Node.js). Measured on this kind of machine, user CPU
of the whole S3 client per 100 KB GET from the gateway (signing included, 8 in flight):
aiohttp ~0.45 ms, this module ~0.25 ms (httpx cost ~2.1 ms without signing, earlier). End
to end (``bench/fuse_ab.py``, 4 alternating rounds), cold 100 KB files with 4 readers went
from 513 to 645 files/s, and the daemon's CPU from 1.63 to 1.25 ms per file.

Requests go out exactly as signed: the target as given (already encoded), the caller's
headers, ``Host`` as ``sigv4.host_header`` signs it, ``Content-Length`` for a body (and for
PUT and POST always, so an empty PUT is announced); no compression is asked for. A reply comes
back whole: Content-Length, chunked, or close-delimited; interim 1xx replies are skipped; a
HEAD reply has no body whatever its Content-Length. ``Connection: close`` is honoured. A
request sent on a reused connection that the server had closed meanwhile (its keep-alive
ended) is sent once more on a new one, as aiohttp and urllib3 do. A reply that comes before
the server took the whole body (an upload refused at once) ends the upload; that connection
is not used again.

A failure without a complete HTTP reply is an :class:`HttpError` (:class:`HttpTimeout` for a
connect or read timeout: no byte of the reply for ``timeout`` seconds, or none of a body's
next MiB taken by the server); retrying is the caller's job.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from unionstore.fuse.sigv4 import host_header

#: idle connections are closed before a server's usual 5 s keep-alive ends them
IDLE_SECONDS = 4.0
_BODY_METHODS = ("PUT", "POST", "PATCH")
_CHUNK = 1 << 20  # bodies from this size on are written a chunk at a time


class HttpError(Exception):
    """No (complete) HTTP reply: connection refused, reset, cut short, malformed."""


class HttpTimeout(HttpError):
    pass


class _Reused(HttpError):
    """A reused connection closed before any byte of the reply: send again on a new one."""


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    content: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._reply: asyncio.Future[Response] | None = None
        self._head = False
        self._got_bytes = False
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_done = False
        self._length_known = False
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._drained.set()
        reply = self._reply
        if reply is None or reply.done():
            return
        if self._headers_done and not self._length_known:  # (a HEAD reply is done by now)
            self._finish(keep=False)  # a close-delimited body ends here
        elif self.reused and not self._got_bytes:
            self._fail(_Reused("the server closed the idle connection"))
        else:
            self._fail(HttpError(f"connection closed mid-reply ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        if self._reply is None:  # nothing asked: the connection is out of step
            self.close()
            return
        self._got_bytes = True
        self._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"malformed reply: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost ends the reply

    def pause_writing(self) -> None:
        self._drained.clear()

    def resume_writing(self) -> None:
        self._drained.set()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = []
        self._headers_done = False
        self._length_known = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            return  # interim (100 Continue): the real reply follows
        self._headers_done = True
        h = self._headers
        self._length_known = (
            status in (204, 304) or "content-length" in h or "transfer-encoding" in h
        )
        if self._head:
            # no body follows a HEAD reply, whatever it announces; the parser would wait
            # for one, so the next reply gets a fresh parser
            self._finish(keep=self._parser.should_keep_alive())
            self._parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200 or self._head:
            return
        self._finish(keep=self._parser.should_keep_alive())

    # -- requests ----------------------------------------------------------------------------
    async def send(self, request: bytes, body: bytes, head: bool) -> Response:
        assert self._transport is not None
        reply: asyncio.Future[Response] = self._loop.create_future()
        self._reply = reply
        self._head, self._got_bytes, self._headers_done = head, False, False
        whole = True  # the whole body went out
        if len(body) < _CHUNK:
            self._transport.write(request + body)
        else:  # a part of an upload: in chunks, so a slow link is not taken for a dead one
            self._transport.write(request)
            view = memoryview(body)
            for lo in range(0, len(body), _CHUNK):
                if self.closed or reply.done():  # the server answered early (an error)
                    whole = False
                    break
                self._transport.write(view[lo : lo + _CHUNK])
                if not self._drained.is_set():  # the server must take some every timeout s
                    await asyncio.wait_for(self._drained.wait(), self._timeout)
        self._last_data = self._loop.time()
        self._timer = self._loop.call_at(self._last_data + self._timeout, self._check_idle)
        try:
            resp = await reply
        finally:
            self._timer.cancel()
            self._reply = None
        if not whole:  # the rest of the body would be read as the next request
            self.close()
        return resp

    def _check_idle(self) -> None:
        due = self._last_data + self._timeout
        if self._loop.time() >= due:
            self._fail(HttpTimeout(f"no reply for {self._timeout:g} s"))
            self.close()
        else:
            self._timer = self._loop.call_at(due, self._check_idle)

    def _finish(self, keep: bool) -> None:
        self._drained.set()  # a writer blocked on a body stops: the reply is in
        reply = self._reply
        if reply is not None and not reply.done():
            status = self._parser.get_status_code()
            reply.set_result(Response(status, self._headers, b"".join(self._body)))
        if not keep:
            self.close()

    def _fail(self, exc: HttpError) -> None:
        self._drained.set()
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


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
        self._host, self._port = (
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
        )
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._host_line = f"Host: {host_header(endpoint)}\r\n"
        self.max_connections = max_connections
        # per socket read and connect, not for a whole transfer
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._slots: asyncio.Semaphore | None = None  # made on first use, in the loop
        self._idle: list[_Connection] = []  # most recently used last
        self._open: set[_Connection] = set()

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Response:
        """Send ``method target`` (path and query, already encoded) and read the reply."""
        lines = [f"{method} {target} HTTP/1.1\r\n", self._host_line]
        for name, value in (headers or {}).items():
            if name.lower() in ("host", "content-length"):
                continue
            lines.append(f"{name}: {value}\r\n")
        if body or method in _BODY_METHODS:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        head = "".join(lines)
        if head.count("\n") != len(lines) or head.count("\r") != len(lines):
            raise HttpError(f"{method} {target}: a line break in the request line or a header")
        request = head.encode("latin-1")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        try:
            async with self._slots:
                for attempt in range(2):
                    conn = await self._connection(fresh=attempt > 0)
                    try:
                        resp = await conn.send(request, body, method == "HEAD")
                    except _Reused:
                        self._drop(conn)
                        continue
                    except BaseException:  # cancelled mid-reply too: its state is unknown
                        self._drop(conn)
                        raise
                    self._release(conn)
                    return resp
                raise HttpError("the server closed two connections before replying")
        except HttpTimeout as exc:
            raise HttpTimeout(f"{method} {target}: timed out ({exc})") from None
        except TimeoutError:
            raise HttpTimeout(f"{method} {target}: timed out") from None
        except (HttpError, OSError, UnicodeError) as exc:
            raise HttpError(f"{method} {target}: {type(exc).__name__}: {exc}") from None

    async def _connection(self, fresh: bool = False) -> _Connection:
        """An idle connection (unless ``fresh``: the one reused before was found closed, and
        others idle as long may be too), or a new one."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                conn.reused = True
                return conn
            self._drop(conn)
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Connection(self.timeout),
                self._host,
                self._port,
                ssl=self._ssl,
            ),
            self.connect_timeout,
        )
        self._open.add(conn)
        return conn

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    def _release(self, conn: _Connection) -> None:
        if conn.closed:
            self._drop(conn)
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)

    async def aclose(self) -> None:
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()
