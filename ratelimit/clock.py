"""Clocks: where the limiters read the time and how they wait for it.

Every limiter takes a :class:`Clock` so that tests never sleep for real:

- :class:`MonotonicClock` is the production clock (``time.monotonic`` + ``asyncio.sleep``).
- :class:`FakeClock` stands still until a test moves it. ``advance(seconds)`` moves it at once
  and wakes every sleeper whose deadline has passed, earliest deadline first (ties in the order
  they went to sleep), so a test is deterministic. ``run_for(seconds)`` is the "autojump" of
  trio's ``MockClock``: it jumps from one deadline to the next and lets the woken tasks run in
  between, which is how the fairness simulations drive many streams through simulated time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "MonotonicClock"]


@runtime_checkable
class Clock(Protocol):
    """The time source of a limiter: seconds on a monotonic scale, and a way to wait."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences are meaningful)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``now()`` has moved on by at least ``seconds`` (cancellable)."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic()`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "MonotonicClock()"


class FakeClock:
    """A clock for tests that only moves when told to.

    ``sleep(seconds)`` parks the caller until :meth:`advance` (or :meth:`run_for`) takes the
    clock past its deadline; ``sleep(0)`` (or a negative delay) only yields to the event loop.
    A cancelled sleeper is forgotten. The clock is not thread-safe, like the event loop.
    """

    #: Event loop turns that :meth:`settle` gives woken tasks to run and go back to sleep.
    SETTLE_STEPS = 12

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        try:
            await fut
        finally:
            fut.cancel()  # no-op once woken; otherwise advance() skips the entry

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def next_deadline(self) -> float | None:
        """The earliest deadline of a live sleeper, or None if nobody sleeps."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    def advance(self, seconds: float) -> None:
        """Move the clock forward and wake every sleeper whose deadline is now due.

        Sleepers are woken earliest deadline first; they resume the next time the event loop
        runs (``await asyncio.sleep(0)`` or :meth:`settle`), all seeing the new ``now()``.
        """
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance({seconds}))")
        self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> None:
        """Set the clock to ``when`` (if later than now) and wake the sleepers due by then."""
        self._now = max(self._now, when)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    async def settle(self) -> None:
        """Let the event loop run until woken tasks have done their work and slept again."""
        for _ in range(self.SETTLE_STEPS):
            await asyncio.sleep(0)

    async def run_for(self, seconds: float) -> None:
        """Advance ``seconds`` in jumps to each sleeper's deadline, settling after each jump.

        This is simulated time: a 10-second scenario of many streams runs in milliseconds, and
        every task observes the exact deadlines it asked for.
        """
        end = self._now + seconds
        await self.settle()
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > end:
                break
            self.advance_to(deadline)
            await self.settle()
        self.advance_to(end)
        await self.settle()

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, sleepers={self.sleepers})"
