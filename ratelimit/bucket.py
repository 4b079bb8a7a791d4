"""An async token bucket that queues its waiters fairly.

Tokens are bytes (egress) or requests; they refill at ``rate`` per second up to ``burst``.

Two ways in:

- ``await acquire(n)`` waits for ``n`` tokens (``n`` may exceed ``burst``). Streaming egress
  calls it before every chunk it sends.
- ``try_acquire(n)`` / ``wait_time(n)`` never wait; request-rate limits answer 503 SlowDown
  with ``Retry-After: wait_time(n)`` instead of queueing.

Fair queueing. Waiters are served in order of a *finish tag*, as in fair queueing of network
packets: a flow (the asyncio task that calls ``acquire``: one response stream) starts its request
at ``max(V, where the flow's last request finished)`` and finishes ``n`` tokens later; ``V`` is
the start tag of the latest request served. Tokens go to the smallest finish tag (ties: first
come), at most one *quantum* (64 KiB) per grant, so

- streams under one bucket get equal bytes over time whatever their chunk sizes (a stream of
  64 KiB chunks is not out-queued by one of 4 MiB chunks), and nothing starves;
- a small request slips in between the quanta of a big one instead of waiting for all of it;
- equal streams complete their chunks one after another rather than all at the same moment
  (as plain round-robin would), so the egress stays smooth.

After each completed acquire the dispatcher lets the event loop run once before handing out
the rest, so a stream that asks again right away (small chunks) is not out-run by the others.

Grants of a waiter that is cancelled (its client went away) go back to the bucket at once, and
the next waiter is served in the same step. No task runs unless someone waits: a "pump" task
sleeps on the clock until the head waiter's next quantum is due, at least ``resolution`` seconds
(so a fast bucket grants several quanta per wakeup rather than waking thousands of times a
second); tokens saved up meanwhile are kept, up to ``burst``, so the rate is exact.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import weakref
from dataclasses import dataclass
from typing import Any

from .clock import Clock, MonotonicClock

__all__ = [
    "DEFAULT_BURST_SECONDS",
    "DEFAULT_QUANTUM",
    "BucketStatistics",
    "TokenBucket",
]

DEFAULT_QUANTUM = 64 * 1024
"""Largest grant in one turn of the queue (tokens; bytes for egress buckets)."""
DEFAULT_BURST_SECONDS = 0.1
"""Without an explicit burst, a bucket holds this many seconds of its rate (at least 1 token)."""
DEFAULT_RESOLUTION = 0.002
"""Shortest sleep of the pump, seconds."""

_WAITING, _DONE, _GONE = 0, 1, 2


def default_burst(rate: float) -> float:
    return max(rate * DEFAULT_BURST_SECONDS, 1.0)


def _limits(rate: float | None, burst: float | None) -> tuple[float | None, float]:
    if rate is None:
        return None, 0.0
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive number or None (unlimited), not {rate!r}")
    if burst is None:
        return float(rate), default_burst(rate)
    if not (math.isfinite(burst) and burst >= 1):
        raise ValueError(f"burst must be a number >= 1, not {burst!r}")
    return float(rate), float(burst)


def _amount(n: float) -> float:
    if not (math.isfinite(n) and n >= 0):
        raise ValueError(f"amount must be a finite number >= 0, not {n!r}")
    return float(n)


@dataclass(frozen=True, slots=True)
class BucketStatistics:
    rate: float | None  # tokens per second; None = unlimited
    burst: float  # 0 when unlimited
    tokens: float  # available now (negative: debt from a try_acquire larger than burst)
    waiters: int  # acquires waiting now
    granted_bytes: float  # tokens granted, ever (refunds subtracted)
    throttled_seconds: float  # time acquires spent waiting, ever (including waits going on)
    throttled: int  # acquires that had to wait
    refused: int  # try_acquire calls that said no


class _Waiter:
    __slots__ = ("amount", "finish", "flow", "future", "granted", "remaining", "since", "state")

    def __init__(
        self, amount: float, finish: float, flow: Any, future: asyncio.Future[None], now: float
    ) -> None:
        self.amount = amount
        self.remaining = amount
        self.granted = 0.0
        self.finish = finish
        self.flow = flow
        self.future = future
        self.since = now
        self.state = _WAITING


class TokenBucket:
    """``rate`` tokens per second (None: unlimited), holding at most ``burst`` (default: 0.1 s
    of the rate). Not thread-safe: use it from one event loop."""

    def __init__(
        self,
        rate: float | None,
        burst: float | None = None,
        *,
        clock: Clock | None = None,
        quantum: float = DEFAULT_QUANTUM,
        resolution: float = DEFAULT_RESOLUTION,
    ) -> None:
        if not (math.isfinite(quantum) and quantum >= 1):
            raise ValueError(f"quantum must be >= 1, not {quantum!r}")
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._rate, self._burst = _limits(rate, burst)
        self._quantum = float(quantum)
        self._resolution = max(0.0, resolution)
        self._tokens = self._burst
        self._stamp = self._last_used = self._clock.now()
        self._heap: list[tuple[float, int, _Waiter]] = []  # (finish tag, arrival, waiter)
        self._seq = itertools.count()
        self._waiting = 0  # live waiters (the heap may also hold abandoned ones)
        self._backlog = 0.0  # tokens still owed to live waiters
        self._vtime = 0.0
        self._flows: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._pump: asyncio.Task[None] | None = None
        self._pump_wake = math.inf
        self._granted = self._throttled_seconds = 0.0
        self._throttled = self._refused = 0

    @property
    def rate(self) -> float | None:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def last_used(self) -> float:
        """Clock time of the latest acquire, try_acquire or grant."""
        return self._last_used

    @property
    def waiters(self) -> int:
        return self._waiting

    def is_idle(self, seconds: float) -> bool:
        """Unused for ``seconds``, nobody waiting, and full: dropping it changes nothing."""
        now = self._clock.now()
        self._refill(now)
        return (
            not self._waiting
            and now - self._last_used >= seconds
            and (self._rate is None or self._tokens >= self._burst)
        )

    def set_rate(self, rate: float | None, burst: float | None = None) -> None:
        """Change the limits now, for current waiters too. ``burst`` None: the default for
        ``rate``. Tokens saved so far are kept (up to the new burst); unlimited -> limited
        starts full; limited -> unlimited releases every waiter."""
        rate, burst = _limits(rate, burst)
        self._refill(self._clock.now())
        was_unlimited = self._rate is None
        self._rate, self._burst = rate, burst
        self._tokens = burst if was_unlimited or rate is None else min(self._tokens, burst)
        self._release()

    async def acquire(self, amount: float) -> None:
        """Wait until ``amount`` tokens are granted (in quanta, fairly; may exceed burst).

        If cancelled while waiting, whatever was granted so far goes back to the bucket.
        """
        amount = _amount(amount)
        now = self._last_used = self._clock.now()
        if self._rate is None:
            self._granted += amount
            return
        if amount == 0:
            return
        flow = asyncio.current_task()
        start = max(self._vtime, self._flows.get(flow, 0.0)) if flow is not None else self._vtime
        self._refill(now)
        if not self._waiting and self._tokens >= amount * (1 - 1e-9):
            self._tokens -= amount
            self._granted += amount
            self._vtime = start
            if flow is not None:
                self._flows[flow] = start + amount
            return
        future = asyncio.get_running_loop().create_future()
        waiter = _Waiter(amount, start + amount, flow, future, now)
        heapq.heappush(self._heap, (waiter.finish, next(self._seq), waiter))
        self._waiting += 1
        self._backlog += amount
        self._dispatch()
        self._schedule()
        if waiter.state == _DONE:  # served at once: it went ahead of bigger requests
            return
        try:
            await waiter.future
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        self._throttled += 1

    def try_acquire(self, amount: float = 1) -> bool:
        """Take ``amount`` tokens if that needs no waiting (see :meth:`wait_time`), else refuse.

        An amount above ``burst`` is taken once the bucket is full and leaves it in debt.
        """
        amount = _amount(amount)
        self._last_used = self._clock.now()
        if self._rate is not None and not self._ready(amount):
            self._refused += 1
            return False
        if self._rate is not None:
            self._tokens -= amount
        self._granted += amount
        return True

    def wait_time(self, amount: float = 1) -> float:
        """Seconds until ``try_acquire(amount)`` would succeed, if nobody else takes tokens
        (current waiters are served first). 0 when it would succeed now."""
        amount = _amount(amount)
        if self._rate is None or self._ready(amount):
            return 0.0
        need = self._backlog + min(amount, self._burst) - self._tokens
        return max(0.0, need / self._rate)

    def refund(self, amount: float) -> None:
        """Give back tokens acquired but not used (e.g. the send failed); capped at burst."""
        amount = _amount(amount)
        self._granted -= amount
        if self._rate is not None:
            self._refill(self._clock.now())
            self._tokens += amount
            self._release()

    def statistics(self) -> BucketStatistics:
        now = self._clock.now()
        self._refill(now)
        waiting = sum(now - w.since for _, _, w in self._heap if w.state == _WAITING)
        return BucketStatistics(
            rate=self._rate,
            burst=self._burst,
            tokens=self._tokens,
            waiters=self._waiting,
            granted_bytes=self._granted,
            throttled_seconds=self._throttled_seconds + waiting,
            throttled=self._throttled,
            refused=self._refused,
        )

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate!r}, burst={self._burst!r}, waiters={self._waiting})"

    # -- internals ---------------------------------------------------------------------------

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            if self._rate is not None:
                gained = (now - self._stamp) * self._rate
                self._tokens = min(self._burst, self._tokens + gained)
            self._stamp = now

    def _ready(self, amount: float) -> bool:
        self._refill(self._clock.now())
        need = self._backlog + min(amount, self._burst)
        return self._tokens >= need * (1 - 1e-9)

    def _piece(self, waiter: _Waiter) -> float:
        return min(waiter.remaining, self._quantum, self._burst)

    def _dispatch(self) -> None:
        """Grant tokens to waiters, smallest finish tag first, a quantum at a time, until the
        tokens run out or one acquire completes (the pump comes back at once for the rest)."""
        now = self._clock.now()
        self._refill(now)
        heap = self._heap
        while heap:
            waiter = heap[0][2]
            if waiter.state != _WAITING:  # abandoned earlier
                heapq.heappop(heap)
                continue
            if waiter.future.cancelled():  # its task is cancelled but has not run yet
                heapq.heappop(heap)
                self._drop(waiter, now)
                continue
            if self._rate is None:
                piece = waiter.remaining
            else:
                piece = self._piece(waiter)
                if self._tokens < piece * (1 - 1e-9):
                    break
                self._tokens -= piece
            self._vtime = max(self._vtime, waiter.finish - waiter.amount)
            self._backlog -= piece
            waiter.granted += piece
            if piece < waiter.remaining:
                waiter.remaining -= piece
                continue
            heapq.heappop(heap)
            waiter.remaining = 0.0
            waiter.state = _DONE
            self._waiting -= 1
            self._granted += waiter.amount
            self._throttled_seconds += now - waiter.since
            self._last_used = now
            if waiter.flow is not None:
                self._flows[waiter.flow] = waiter.finish
            waiter.future.set_result(None)
            if self._rate is not None:
                break  # let it run first: it may ask again before the others take the rest
        if not self._waiting:
            self._backlog = 0.0  # no float dust
        self._tokens = min(self._tokens, self._burst)  # refunds may have overfilled it

    def _drop(self, waiter: _Waiter, now: float) -> None:
        """Forget a live waiter and give its partial grants back (the caller dispatches)."""
        waiter.state = _GONE
        self._waiting -= 1
        self._backlog -= waiter.remaining
        self._tokens += waiter.granted
        self._throttled_seconds += now - waiter.since
        waiter.granted = 0.0

    def _abandon(self, waiter: _Waiter) -> None:
        """The task of ``waiter`` was cancelled: nothing it was granted stays taken."""
        if waiter.state == _WAITING:
            self._refill(self._clock.now())
            self._drop(waiter, self._clock.now())  # its heap entry is skipped later
            if len(self._heap) > 64 and self._waiting < len(self._heap) // 2:
                self._heap = [e for e in self._heap if e[2].state == _WAITING]
                heapq.heapify(self._heap)
        elif waiter.state == _DONE:  # granted in full, but cancelled before it could resume
            self._refill(self._clock.now())
            self._granted -= waiter.amount
            self._tokens += waiter.amount
        self._release()

    def _release(self) -> None:
        """After tokens came back or the limits changed: serve waiters, re-arm the pump."""
        self._dispatch()
        self._schedule()

    def _next_wake(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].state != _WAITING:
            heapq.heappop(heap)
        if not heap or self._rate is None:
            return None
        piece = self._piece(heap[0][2])
        deficit = piece - self._tokens
        if deficit <= piece * 1e-9:
            return self._stamp  # due now (dispatch stopped after a completion)
        # a hair early rather than late: _dispatch accepts being short by that much
        return self._stamp + max(deficit / self._rate * (1 - 1e-10), self._resolution, 1e-6)

    def _schedule(self) -> None:
        """Make sure the pump wakes when the head waiter's next quantum is due."""
        wake = self._next_wake()
        pump = self._pump
        if pump is not None and wake is not None and self._pump_wake <= wake:
            return  # it wakes early enough (and then looks again)
        if pump is not None:
            pump.cancel()
            self._pump, self._pump_wake = None, math.inf
        if wake is not None:
            self._pump_wake = wake
            self._pump = asyncio.get_running_loop().create_task(self._run_pump(wake))

    async def _run_pump(self, wake: float) -> None:
        me = asyncio.current_task()
        try:
            while True:
                await self._clock.sleep(wake - self._clock.now())
                self._dispatch()
                next_wake = self._next_wake()
                if next_wake is None:
                    return
                wake = self._pump_wake = next_wake
        except Exception as exc:  # a bug: fail the waiters rather than leave them hanging
            for _, _, waiter in self._heap:
                if waiter.state == _WAITING and not waiter.future.done():
                    waiter.future.set_exception(exc)
            raise
        finally:
            if self._pump is me:
                self._pump, self._pump_wake = None, math.inf
