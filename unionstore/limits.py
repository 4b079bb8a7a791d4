"""The gateway's rate limits, built from ``[limits]`` on :mod:`unionstore.ratelimit`.

- egress: every response body byte is charged, just before it is sent, to the connection's
  bucket, the access key's bucket and the process-wide bucket (narrowest first), whatever the
  operation and whether the bytes came from the cache or the origin;
- requests: a per-key request rate and a cap on requests in flight; beyond either the answer
  is 503 SlowDown with Retry-After, never a queue;
- origin: bytes read from each UFS origin (an HDFS NameNode, an object store) by fills and
  pass-through reads alike, through :class:`OriginLimitedUfs`, a wrapper around the driver.

Limits change live (:meth:`Limits.apply`, from the admin API or SIGHUP); waiters see the new
rates at once.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable
from urllib.parse import urlsplit

from unionstore.config import LimitsConfig
from unionstore.errors import SlowDown
from unionstore.metrics import Sample
from unionstore.ratelimit import (
    InFlight,
    KeyedLimiter,
    RateLimited,
    TokenBucket,
    acquire_all,
    admit,
)
from unionstore.ufs.base import FileStatus, UfsWriter, UnderFileSystem

ANONYMOUS_KEY = "-"


def origin_of(uri: str) -> str:
    """The origin a UFS URI reads from: ``hdfs://nn:9000`` for every path on that NameNode."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}"


class Limits:
    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self.global_egress = TokenBucket(config.global_egress)
        self.per_connection: KeyedLimiter[tuple[str, int]] = KeyedLimiter(config.per_connection)
        self.per_key: KeyedLimiter[str] = KeyedLimiter(config.per_key)
        self.requests: KeyedLimiter[str] = KeyedLimiter(config.requests_per_key)
        self.in_flight = InFlight(config.max_in_flight)
        self.origins: dict[str, TokenBucket] = {}
        self._origin_overrides: dict[str, float | None] = {}

    @property
    def egress_limited(self) -> bool:
        c = self.config
        return any(r is not None for r in (c.global_egress, c.per_connection, c.per_key))

    def apply(self, config: LimitsConfig) -> None:
        """Change every limit now; current waiters see the new rates at once."""
        self.config = config
        self.global_egress.set_rate(config.global_egress)
        self.per_connection.set_rate(config.per_connection)
        self.per_key.set_rate(config.per_key)
        self.requests.set_rate(config.requests_per_key)
        self.in_flight.set_limit(config.max_in_flight)
        for origin, bucket in self.origins.items():
            override = self._origin_overrides.get(origin)
            bucket.set_rate(override if override is not None else config.origin)

    def origin(self, uri: str, override: float | None = None) -> TokenBucket:
        """The shared bucket of ``uri``'s origin (``override`` from a mount's origin_limit)."""
        key = origin_of(uri)
        if override is not None:
            self._origin_overrides[key] = override
        bucket = self.origins.get(key)
        if bucket is None:
            rate = self._origin_overrides.get(key) or self.config.origin
            bucket = self.origins[key] = TokenBucket(rate)
        elif override is not None:
            bucket.set_rate(override)
        return bucket

    async def egress(self, connection: tuple[str, int] | None, key: str | None, n: int) -> None:
        buckets = [
            self.per_connection.bucket(connection) if connection is not None else None,
            self.per_key.bucket(key or ANONYMOUS_KEY),
            self.global_egress,
        ]
        await acquire_all(buckets, n)

    def admit(self, key: str | None) -> None:
        """Count one request of ``key``; SlowDown if it is over its rate."""
        if self.config.requests_per_key is None:
            return
        try:
            admit([self.requests.bucket(key or ANONYMOUS_KEY)])
        except RateLimited as exc:
            raise SlowDown(retry_after=max(1, math.ceil(exc.retry_after))) from None

    def enter(self) -> None:
        if not self.in_flight.try_enter():
            raise SlowDown("Too many requests in flight; please retry.")

    def leave(self) -> None:
        self.in_flight.leave()

    def samples(self) -> Iterable[Sample]:
        def bucket(name: str, stats_rate: float | None, labels: dict[str, str]) -> Iterable[Sample]:
            yield (
                "gauge",
                "unionstore_limit_rate",
                "configured limit (bytes/s or requests/s; -1 = unlimited)",
                {"limit": name, **labels},
                -1 if stats_rate is None else stats_rate,
            )

        g = self.global_egress.statistics()
        yield from bucket("global", g.rate, {})
        yield (
            "counter",
            "unionstore_limit_throttled_seconds",
            "time spent waiting for tokens",
            {"limit": "global"},
            g.throttled_seconds,
        )
        yield (
            "gauge",
            "unionstore_limit_waiters",
            "callers waiting for tokens",
            {"limit": "global"},
            g.waiters,
        )
        for name, keyed in (
            ("per_connection", self.per_connection),
            ("per_key", self.per_key),
            ("requests_per_key", self.requests),
        ):
            s = keyed.statistics(per_key=False)
            yield from bucket(name, keyed.rate, {})
            yield (
                "counter",
                "unionstore_limit_throttled_seconds",
                "time spent waiting for tokens",
                {"limit": name},
                s.throttled_seconds,
            )
            yield (
                "gauge",
                "unionstore_limit_waiters",
                "callers waiting for tokens",
                {"limit": name},
                s.waiters,
            )
        yield (
            "counter",
            "unionstore_limit_refused",
            "requests answered 503 SlowDown",
            {"limit": "requests_per_key"},
            self.requests.statistics(per_key=False).refused,
        )
        f = self.in_flight.statistics()
        yield ("gauge", "unionstore_requests_in_flight", "requests being served", {}, f.in_flight)
        yield (
            "counter",
            "unionstore_limit_refused",
            "requests answered 503 SlowDown",
            {"limit": "max_in_flight"},
            f.refused,
        )
        for origin, b in self.origins.items():
            o = b.statistics()
            yield from bucket("origin", o.rate, {"origin": origin})
            yield (
                "counter",
                "unionstore_origin_throttled_seconds",
                "time fills waited for the origin cap",
                {"origin": origin},
                o.throttled_seconds,
            )


class OriginLimitedUfs(UnderFileSystem):
    """A UFS whose reads are charged to its origin's bucket (a wrapper, not a flag)."""

    def __init__(self, inner: UnderFileSystem, bucket: TokenBucket) -> None:
        super().__init__(inner.uri)
        self.inner = inner
        self.bucket = bucket
        self.scheme = inner.scheme  # type: ignore[misc]
        self.chunk_size = inner.chunk_size  # type: ignore[misc]

    async def stat(self, path: str) -> FileStatus:
        return await self.inner.stat(path)

    def list_dir(self, path: str) -> AsyncIterator[FileStatus]:
        return self.inner.list_dir(path)

    async def read_range(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        async for chunk in self.inner.read_range(path, offset, length):
            await self.bucket.acquire(len(chunk))
            yield chunk

    async def read_block(self, path: str, offset: int, length: int) -> bytes:
        await self.bucket.acquire(length)
        return await self.inner.read_block(path, offset, length)

    async def open_writer(self, path: str) -> UfsWriter:
        return await self.inner.open_writer(path)

    async def mkdir(self, path: str) -> None:
        await self.inner.mkdir(path)

    async def rename(self, src: str, dst: str) -> None:
        await self.inner.rename(src, dst)

    async def delete(self, path: str, recursive: bool = False) -> None:
        await self.inner.delete(path, recursive)

    async def close(self) -> None:
        await self.inner.close()
