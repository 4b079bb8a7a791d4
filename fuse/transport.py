"""HTTP for the bridge's S3 client: one aiohttp session per endpoint (keep-alive connection
pool, whole bodies in and out), behind the two calls the client needs and one error type.

Why aiohttp: a cold 100 KB file is one GET, so the HTTP client's CPU per request decides how
many cold files per second a mount reads on a busy node. Measured against the gateway on this
kind of machine: httpx ~2.1 ms of CPU per GET, aiohttp ~0.14 ms (its parser is C).

Requests go out exactly as signed: the target is sent as given (already encoded), and aiohttp
adds no Content-Type of its own (S3 would store it with a PUT) and asks for no compression
(a block is cached as it arrives). A failure without a complete
HTTP reply is an :class:`HttpError` (:class:`HttpTimeout` for timeouts); retrying is the
caller's job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from yarl import URL


class HttpError(Exception):
    """No (complete) HTTP reply: connection refused, reset, cut short, malformed."""


class HttpTimeout(HttpError):
    pass


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    content: bytes


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
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.max_connections = max_connections
        # per socket read and connect, as before, not for a whole transfer; the wait for a
        # free pooled connection gets the read timeout too
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=connect_timeout, sock_read=timeout
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        """The session, made on first use (it belongs to the running event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # idle connections go before a server's usual 5 s keep-alive ends them
                connector=aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=4),
                timeout=self.timeout,
                auto_decompress=False,
                # identity bodies only: a block is cached as it arrives
                skip_auto_headers=("Content-Type", "Accept-Encoding"),
            )
        return self._session

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Response:
        """Send ``method target`` (path and query, already encoded) and read the reply."""
        sent = {k: v for k, v in (headers or {}).items() if k.lower() != "host"}
        url = URL(self.base + target, encoded=True)
        try:
            async with self._open().request(
                method, url, headers=sent, data=body or None, allow_redirects=False
            ) as resp:
                content = await resp.read()
                got: dict[str, str] = {}
                for name, value in resp.headers.items():
                    name = name.lower()
                    got[name] = f"{got[name]}, {value}" if name in got else value
                return Response(resp.status, got, content)
        except TimeoutError:
            raise HttpTimeout(f"{method} {target}: timed out") from None
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            raise HttpError(f"{method} {target}: {type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
