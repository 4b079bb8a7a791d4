"""Rate limiting for the gateway: fair async token buckets, keyed buckets, an in-flight cap.

This package imports nothing from the rest of unionstore (stdlib only), so the S3 edge, the
FUSE bridge and the prefetcher can all use it.

Pieces, top to bottom::

    rates.py        "50MB/s", "500MiB/s", "100/s", "unlimited" -> float | None; "4MiB" -> int
    clock.py        Clock protocol (now, sleep); MonotonicClock; FakeClock for tests
    bucket.py       TokenBucket: fair-queued async token bucket
    composite.py    acquire_all / admit (try_acquire_all, wait_time_all): several buckets at once
    keyed.py        KeyedLimiter: one bucket per key, made lazily, dropped when idle
    concurrency.py  InFlight, a cap that refuses; RateLimited, the one error

How the gateway uses it:

- egress, per chunk of a response body, just before sending it::

      await acquire_all([conn_bucket, per_key.bucket(access_key), global_egress], len(chunk))

  Each bucket is charged the bytes actually about to be sent, narrowest bucket first. Waiters
  are fair-queued by bytes (see bucket.py), so N streams under one bucket get about 1/N each
  whatever their chunk sizes, and a client that disconnects (its task cancelled while waiting)
  gives back its grants at once.
- request rate, once per request, before any work::

      admit([per_key_requests.bucket(access_key), global_requests])  # or raises RateLimited

  and ``with in_flight:`` around the whole request for the concurrency cap. RateLimited
  carries ``retry_after`` for the Retry-After of a 503 SlowDown.
- live changes (admin API, SIGHUP): ``bucket.set_rate(rate, burst)`` or
  ``limiter.set_rate(...)``; current waiters see the new rate at once. A rate of None means
  unlimited: calls return at once and only count.
- metrics: ``statistics()`` on every limiter (tokens, waiters, granted bytes, throttled time).

Everything takes a ``clock``; tests pass a :class:`FakeClock` and never sleep for real.
Nothing here is thread-safe: each event loop (worker process) has its own limiters, so a
"global" limit is per process.
"""

from .bucket import DEFAULT_BURST_SECONDS, DEFAULT_QUANTUM, BucketStatistics, TokenBucket
from .clock import Clock, FakeClock, MonotonicClock
from .composite import acquire_all, admit, try_acquire_all, wait_time_all
from .concurrency import InFlight, InFlightStatistics, RateLimited
from .keyed import KeyedLimiter, KeyedStatistics
from .rates import format_rate, parse_rate, parse_size

__all__ = [
    "DEFAULT_BURST_SECONDS",
    "DEFAULT_QUANTUM",
    "BucketStatistics",
    "Clock",
    "FakeClock",
    "InFlight",
    "InFlightStatistics",
    "KeyedLimiter",
    "KeyedStatistics",
    "MonotonicClock",
    "RateLimited",
    "TokenBucket",
    "acquire_all",
    "admit",
    "format_rate",
    "parse_rate",
    "parse_size",
    "try_acquire_all",
    "wait_time_all",
]
