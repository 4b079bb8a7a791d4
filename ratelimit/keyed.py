"""One token bucket per key (connection, access key, S3 bucket, UFS), made on first use.

Every key's bucket follows one template (rate, burst); :meth:`KeyedLimiter.set_rate` changes
the template and every existing bucket at once. Memory stays bounded two ways:

- idle expiry: a bucket unused for ``idle_timeout`` seconds, with nobody waiting and full again,
  is dropped (a new one would be identical, so nothing is forgiven);
- ``max_keys``: beyond it the least recently used buckets without waiters are dropped even if
  not idle (a hard bound, at the price of forgiving their debt).

Both happen a little at a time on each lookup (amortised O(1)); :meth:`expire` sweeps all.
Counters of dropped buckets are kept, so the totals in :meth:`statistics` never go backwards.

Look a bucket up per use (``limiter.bucket(key)``, a dict hit) rather than caching it for long:
a bucket held past its expiry still works but is no longer the one shared by its key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .bucket import DEFAULT_QUANTUM, BucketStatistics, TokenBucket, _limits
from .clock import Clock, MonotonicClock

__all__ = ["KeyedLimiter", "KeyedStatistics"]

K = TypeVar("K", bound=Hashable)

_SWEEP_STEPS = 2  # entries looked at per lookup


@dataclass(slots=True)
class _Entry:
    bucket: TokenBucket
    seen: float


@dataclass(frozen=True)
class KeyedStatistics(Generic[K]):
    rate: float | None  # the template, per key
    burst: float
    keys: int  # buckets alive now
    expired: int  # buckets dropped so far
    tokens: float  # sums over the live buckets ...
    waiters: int
    granted_bytes: float  # ... and, for totals, over dropped ones too
    throttled_seconds: float
    throttled: int
    refused: int
    per_key: dict[K, BucketStatistics] = field(default_factory=dict)


class KeyedLimiter(Generic[K]):
    """Lazily made per-key :class:`TokenBucket` s sharing a template rate."""

    def __init__(
        self,
        rate: float | None,
        burst: float | None = None,
        *,
        clock: Clock | None = None,
        quantum: float = DEFAULT_QUANTUM,
        idle_timeout: float = 60.0,
        max_keys: int = 10_000,
    ) -> None:
        if idle_timeout < 0 or max_keys < 1:
            raise ValueError("idle_timeout must be >= 0 and max_keys >= 1")
        _limits(rate, burst)  # validate now, not at the first key
        self._rate, self._burst = rate, burst
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._quantum = quantum
        self._idle_timeout = idle_timeout
        self._max_keys = max_keys
        # key -> [bucket, clock time of its latest lookup], least recently looked up first
        self._buckets: OrderedDict[K, _Entry] = OrderedDict()
        self._expired = 0
        self._retired_granted = self._retired_throttled_seconds = 0.0
        self._retired_throttled = self._retired_refused = 0

    @property
    def rate(self) -> float | None:
        return self._rate

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def bucket(self, key: K) -> TokenBucket:
        """The bucket of ``key``, made from the template if there is none (or it expired)."""
        now = self._clock.now()
        self._sweep(now)  # may drop this key's bucket too, if idle: no matter
        entry = self._buckets.get(key)
        if entry is not None:
            entry.seen = now
            self._buckets.move_to_end(key)
            return entry.bucket
        made = TokenBucket(self._rate, self._burst, clock=self._clock, quantum=self._quantum)
        self._buckets[key] = _Entry(made, now)
        while len(self._buckets) > self._max_keys and self._evict_one(protect=key):
            pass
        return made

    async def acquire(self, key: K, amount: float) -> None:
        await self.bucket(key).acquire(amount)

    def try_acquire(self, key: K, amount: float = 1) -> bool:
        return self.bucket(key).try_acquire(amount)

    def wait_time(self, key: K, amount: float = 1) -> float:
        entry = self._buckets.get(key)
        return entry.bucket.wait_time(amount) if entry is not None else 0.0

    def set_rate(self, rate: float | None, burst: float | None = None) -> None:
        """New template for future keys, applied to every existing key now."""
        _limits(rate, burst)
        self._rate, self._burst = rate, burst
        for entry in self._buckets.values():
            entry.bucket.set_rate(rate, burst)

    def expire(self) -> int:
        """Drop every idle bucket now; returns how many went."""
        now = self._clock.now()
        idle = [key for key, entry in self._buckets.items() if self._idle(entry, now)]
        for key in idle:
            self._retire(key)
        return len(idle)

    def statistics(self, *, per_key: bool = True) -> KeyedStatistics[K]:
        each = {key: entry.bucket.statistics() for key, entry in self._buckets.items()}
        live = each.values()
        return KeyedStatistics(
            rate=self._rate,
            burst=_limits(self._rate, self._burst)[1],
            keys=len(each),
            expired=self._expired,
            tokens=sum(s.tokens for s in live),
            waiters=sum(s.waiters for s in live),
            granted_bytes=self._retired_granted + sum(s.granted_bytes for s in live),
            throttled_seconds=self._retired_throttled_seconds
            + sum(s.throttled_seconds for s in live),
            throttled=self._retired_throttled + sum(s.throttled for s in live),
            refused=self._retired_refused + sum(s.refused for s in live),
            per_key=each if per_key else {},
        )

    def __repr__(self) -> str:
        return f"KeyedLimiter(rate={self._rate!r}, keys={len(self._buckets)})"

    # -- internals ---------------------------------------------------------------------------

    def _idle(self, entry: _Entry, now: float) -> bool:
        return now - entry.seen >= self._idle_timeout and entry.bucket.is_idle(self._idle_timeout)

    def _sweep(self, now: float) -> None:
        """Expire from the least recently looked-up end, a few buckets per call."""
        for _ in range(min(_SWEEP_STEPS, len(self._buckets))):
            key, entry = next(iter(self._buckets.items()))
            if self._idle(entry, now):
                self._retire(key)
            elif entry.bucket.waiters or entry.bucket.last_used > entry.seen:
                entry.seen = entry.bucket.last_used  # used since (held by a caller): requeue
                self._buckets.move_to_end(key)
            else:
                return  # the least recently used is not idle yet: nothing else is

    def _evict_one(self, protect: K) -> bool:
        """Drop the least recently used bucket nobody waits on (not ``protect``)."""
        for key, entry in self._buckets.items():
            if key != protect and not entry.bucket.waiters:
                self._retire(key)
                return True
        return False

    def _retire(self, key: K) -> None:
        stats = self._buckets.pop(key).bucket.statistics()
        self._expired += 1
        self._retired_granted += stats.granted_bytes
        self._retired_throttled_seconds += stats.throttled_seconds
        self._retired_throttled += stats.throttled
        self._retired_refused += stats.refused
