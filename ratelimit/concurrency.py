"""The in-flight cap, which refuses instead of queueing, and :class:`RateLimited`.

A gateway under overload should answer at once (503 SlowDown with Retry-After) rather than
pile up waiting requests. :class:`InFlight` and :func:`~.composite.admit` (request rates) raise
:class:`RateLimited`, the one error of this library; the gateway turns it into its wire format
in its single error handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

__all__ = ["InFlight", "InFlightStatistics", "RateLimited"]


class RateLimited(Exception):
    """Refused by a limit; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: float, reason: str = "rate limited") -> None:
        super().__init__(f"{reason}; retry after {retry_after:.3g}s")
        self.retry_after = retry_after
        self.reason = reason


@dataclass(frozen=True, slots=True)
class InFlightStatistics:
    limit: int | None
    in_flight: int
    peak: int  # highest in_flight seen
    admitted: int
    refused: int


class InFlight:
    """At most ``limit`` requests in flight (None: no cap); one more is refused, not queued.

    ``try_enter()`` / ``leave()``, or ``with in_flight:`` (also ``async with``) which raises
    :class:`RateLimited` (``retry_after`` seconds) when full. Lowering the limit lets the
    requests already in flight finish; only new ones are refused until under it.
    """

    def __init__(self, limit: int | None, *, retry_after: float = 1.0) -> None:
        self._limit = self._check(limit)
        self.retry_after = retry_after
        self._in_flight = self._peak = self._admitted = self._refused = 0

    @staticmethod
    def _check(limit: int | None) -> int | None:
        if limit is not None and limit < 0:
            raise ValueError(f"in-flight limit must be >= 0 or None, not {limit!r}")
        return limit

    @property
    def limit(self) -> int | None:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def set_limit(self, limit: int | None) -> None:
        self._limit = self._check(limit)

    def try_enter(self) -> bool:
        if self._limit is not None and self._in_flight >= self._limit:
            self._refused += 1
            return False
        self._in_flight += 1
        self._admitted += 1
        self._peak = max(self._peak, self._in_flight)
        return True

    def leave(self) -> None:
        if self._in_flight <= 0:
            raise RuntimeError("InFlight.leave() without a matching enter")
        self._in_flight -= 1

    def enter(self) -> None:
        """``try_enter()`` or raise :class:`RateLimited`."""
        if not self.try_enter():
            raise RateLimited(self.retry_after, f"{self._limit} requests in flight")

    def __enter__(self) -> InFlight:
        self.enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.leave()

    async def __aenter__(self) -> InFlight:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.leave()

    def statistics(self) -> InFlightStatistics:
        return InFlightStatistics(
            limit=self._limit,
            in_flight=self._in_flight,
            peak=self._peak,
            admitted=self._admitted,
            refused=self._refused,
        )

    def __repr__(self) -> str:
        return f"InFlight(limit={self._limit!r}, in_flight={self._in_flight})"
