"""Several buckets at once: a chunk is charged to its connection, access key and the global
bucket; a request to its key's and the global request rate.

- :func:`acquire_all` waits (egress): the buckets one after the other, narrowest first.
- :func:`try_acquire_all` / :func:`admit` never wait (request rates): all or nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from .bucket import TokenBucket
from .concurrency import RateLimited

__all__ = ["acquire_all", "admit", "try_acquire_all", "wait_time_all"]


def _distinct(buckets: Iterable[TokenBucket | None]) -> list[TokenBucket]:
    return list(dict.fromkeys(b for b in buckets if b is not None))


async def acquire_all(buckets: Iterable[TokenBucket | None], amount: float) -> None:
    """Charge ``amount`` to every bucket (None entries skipped, duplicates charged once).

    The buckets are waited for one after the other, in the order given: list the narrowest
    first (connection, access key, S3 bucket, then global), so that a shared bucket is charged
    last, just before the bytes go out, and never while this caller still waits elsewhere.
    There is no deadlock (nothing is held that another waiter needs) and in steady state no
    double waiting (a bucket refills while its caller waits on another). Cancelled halfway,
    the buckets already charged are refunded.
    """
    charged: list[TokenBucket] = []
    try:
        for bucket in _distinct(buckets):
            await bucket.acquire(amount)
            charged.append(bucket)
    except BaseException:
        for bucket in charged:
            bucket.refund(amount)
        raise


def try_acquire_all(buckets: Iterable[TokenBucket | None], amount: float = 1) -> bool:
    """Take ``amount`` from every bucket if none of them needs waiting; else take nothing
    (and count a refusal on the buckets that said no)."""
    chosen = _distinct(buckets)
    busy = [b for b in chosen if b.wait_time(amount) > 0]
    for bucket in busy or chosen:
        bucket.try_acquire(amount)  # refuses on the busy ones: nothing taken, refusal counted
    return not busy


def wait_time_all(buckets: Iterable[TokenBucket | None], amount: float = 1) -> float:
    """Seconds until :func:`try_acquire_all` would succeed (the slowest bucket's wait)."""
    return max((b.wait_time(amount) for b in _distinct(buckets)), default=0.0)


def admit(buckets: Iterable[TokenBucket | None], amount: float = 1) -> None:
    """Take ``amount`` from every bucket (all or nothing), or raise :class:`RateLimited`
    with the wait of the slowest one. For request-rate limits: one call per request."""
    chosen = _distinct(buckets)
    if not try_acquire_all(chosen, amount):
        raise RateLimited(wait_time_all(chosen, amount), "request rate limit")
