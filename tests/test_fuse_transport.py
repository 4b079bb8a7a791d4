"""The bridge's HTTP layer (``unionstore.fuse.transport``, on httptools) against a scripted
server on loopback: requests go out as signed (target as given, our headers, the Host the
signer signs, no Content-Type or compression of the client's own), replies of every framing
come back whole with lower-case headers, keep-alive connections are reused (and a request
on one the server closed meanwhile is sent again), the read timeout is per read, not per
transfer, and every failure without a complete reply is an HttpError (timeouts an
HttpTimeout). The whole S3 path over it runs in the FUSE
suites against the real gateway and moto."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from unionstore.fuse.transport import HttpClient, HttpError, HttpTimeout

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


class Server:
    """Answers each request with ``script(reader, writer, n)``; False closes the connection.
    With ``read_body=False`` the script runs once the head is in, the body left unread."""

    def __init__(self, script: Script, read_body: bool = True) -> None:
        self.script = script
        self.read_body = read_body
        self.requests: list[bytes] = []
        self.connections = 0
        self.endpoint = ""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.endpoint = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = 0
                for line in head.split(b"\r\n") if self.read_body else ():
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                if not await self.script(reader, writer, len(self.requests)):
                    return
                await writer.drain()
        finally:
            self._handlers.discard(task)
            writer.close()


def reply(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode() + body


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[str], HttpClient]]:
    made: list[HttpClient] = []

    def make(endpoint: str, **kw: float) -> HttpClient:
        c = HttpClient(endpoint, **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


async def test_content_length_keep_alive_and_request_framing(
    client_for: Callable[..., HttpClient],
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(reply("200 OK", {"Content-Length": "5", "ETag": '"x"'}, b"hello"))
        return True

    async with Server(script) as srv:
        c = client_for(srv.endpoint)
        for _ in range(3):
            resp = await c.request("GET", "/b/k%20ey?x=1", {"Range": "bytes=0-4"})
            assert (resp.status, resp.content, resp.headers["etag"]) == (200, b"hello", '"x"')
        put = await c.request("PUT", "/b/k", {"Host": "ignored"}, b"body!")
        assert put.content == b"hello"
        assert srv.connections == 1  # one keep-alive connection for all four
        first, last = srv.requests[0], srv.requests[-1]
        port = srv.endpoint.rsplit(":", 1)[1]
        assert first.startswith(b"GET /b/k%20ey?x=1 HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{port}\r\n".encode() in first
        assert b"Range: bytes=0-4\r\n" in first
        assert b"Content-Length: 5\r\n" in last and last.endswith(b"\r\n\r\nbody!")
        assert b"ignored" not in last and b"Content-Type" not in last
        assert all(b"gzip" not in r for r in srv.requests)  # identity bodies only
        await c.request("PUT", "/b/dir/")  # mkdir: an empty body, announced
        assert b"Content-Length: 0\r\n" in srv.requests[-1]


async def test_a_multi_mib_body_is_sent_whole_and_the_reply_read(
    client_for: Callable[..., HttpClient],
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(reply("200 OK", {"Content-Length": "2", "ETag": '"p"'}, b"ok"))
        return True

    body = os.urandom(3 * (1 << 20) + 5)  # written a chunk at a time
    async with Server(script) as srv:
        c = client_for(srv.endpoint)
        resp = await c.request("PUT", "/b/k?partNumber=1&uploadId=u", {"X-A": "1"}, body)
        assert (resp.status, resp.content, resp.headers["etag"]) == (200, b"ok", '"p"')
        assert srv.requests[0].endswith(b"\r\n\r\n" + body)
        assert f"Content-Length: {len(body)}\r\n".encode() in srv.requests[0]


async def test_a_reply_before_the_whole_body_is_taken_ends_the_upload_and_its_connection(
    client_for: Callable[..., HttpClient],
) -> None:
    """A server that refuses an upload at once (403) and reads none of its body: the reply
    comes back without waiting for the body to go out, and the connection is not used
    again (the body's rest would be read as the next request)."""

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(reply("403 Forbidden", {"Content-Length": "6"}, b"denied"))
        await w.drain()
        if n == 1:
            await asyncio.sleep(30)  # never reads the body (cancelled when the test ends)
        return True

    async with Server(script, read_body=False) as srv:
        c = client_for(srv.endpoint, timeout=10.0)
        resp = await c.request("PUT", "/b/k", {}, bytes(64 << 20))  # no HttpTimeout
        assert (resp.status, resp.content) == (403, b"denied")
        assert (await c.request("GET", "/b/k")).status == 403
        assert srv.connections == 2


async def test_chunked_head_204_and_close_delimited_bodies(
    client_for: Callable[..., HttpClient],
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            w.write(reply("200 OK", {"Transfer-Encoding": "chunked"}))
            w.write(b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: t\r\n\r\n")
        elif n == 2:  # HEAD: a Content-Length, but no body follows
            w.write(reply("200 OK", {"Content-Length": "12345"}))
        elif n == 3:
            w.write(reply("100 Continue", {}) + reply("204 No Content", {}))
        else:
            w.write(reply("200 OK", {"Connection": "close"}, b"until the end"))
            return False
        return True

    async with Server(script) as srv:
        c = client_for(srv.endpoint)
        assert (await c.request("GET", "/a")).content == b"abcdefg"
        head = await c.request("HEAD", "/a")
        assert head.content == b"" and head.headers["content-length"] == "12345"
        assert (await c.request("DELETE", "/a")).status == 204
        assert (await c.request("GET", "/a")).content == b"until the end"
        assert srv.connections == 1
        assert (await c.request("GET", "/a")).content == b"until the end"
        assert srv.connections == 2  # "Connection: close" is honoured


async def test_an_idle_connection_closed_by_the_server_is_replaced(
    client_for: Callable[..., HttpClient],
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(reply("200 OK", {"Content-Length": "2"}, b"ok"))
        await w.drain()
        return False  # close without saying so: the client finds out on the next request

    async with Server(script) as srv:
        c = client_for(srv.endpoint)
        for _ in range(3):
            assert (await c.request("GET", "/k")).content == b"ok"
        assert srv.connections == 3 and len(srv.requests) == 3


async def test_a_request_on_a_connection_the_server_closed_unanswered_is_sent_again(
    client_for: Callable[..., HttpClient],
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        if n == 2:
            return False  # its keep-alive ended as the request arrived: closed, no reply
        w.write(reply("200 OK", {"Content-Length": "2"}, f"{n}".encode().rjust(2)))
        return True

    async with Server(script) as srv:
        c = client_for(srv.endpoint)
        assert (await c.request("GET", "/k")).content == b" 1"
        assert (await c.request("GET", "/k")).content == b" 3"
        assert srv.connections == 2 and len(srv.requests) == 3


async def test_the_read_timeout_is_per_read_not_per_transfer(
    client_for: Callable[..., HttpClient],
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(reply("200 OK", {"Content-Length": "5"}))
        for byte in b"slow!":  # 1 s in all, each byte 0.2 s after the one before
            await w.drain()
            await asyncio.sleep(0.2)
            w.write(bytes([byte]))
        return True

    async with Server(script) as srv:
        c = client_for(srv.endpoint, timeout=0.5)
        assert (await c.request("GET", "/k")).content == b"slow!"


async def test_a_line_break_in_a_header_is_refused_before_sending(
    client_for: Callable[..., HttpClient],
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(reply("200 OK", {"Content-Length": "0"}))
        return True

    async with Server(script) as srv:
        c = client_for(srv.endpoint)
        for bad in ({"X-A": "v\r\nX-Injected: 1"}, {"X-A": "v\rw"}, {"X-A\nB": "v"}):
            with pytest.raises(HttpError, match="line break"):
                await c.request("GET", "/k", bad)
        assert srv.requests == []


async def test_failures_are_http_errors(client_for: Callable[..., HttpClient]) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            w.write(b"SSH-2.0-nope\r\n\r\n")
        elif n == 2:
            w.write(reply("200 OK", {"Content-Length": "10"}, b"short"))
        else:
            await asyncio.sleep(5)  # never answers in time
        return False

    async with Server(script) as srv:
        c = client_for(srv.endpoint, timeout=0.5)
        with pytest.raises(HttpError, match="GET /k"):
            await c.request("GET", "/k")
        with pytest.raises(HttpError, match="GET /k"):
            await c.request("GET", "/k")
        with pytest.raises(HttpTimeout):
            await c.request("GET", "/k")
    closed = client_for(srv.endpoint)  # nothing listens there any more
    with pytest.raises(HttpError, match="GET /k"):
        await closed.request("GET", "/k")
    with pytest.raises(ValueError):
        HttpClient("ftp://example.invalid")
