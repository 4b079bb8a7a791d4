"""unionstore.ratelimit: token buckets, fairness, keyed limiters, in-flight cap, rate parsing.

Only simulated time: every limiter gets a FakeClock and the tests move it, so the assertions
are exact (no real sleeping, no timing thresholds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest

from unionstore.ratelimit import (
    BucketStatistics,
    Clock,
    FakeClock,
    InFlight,
    KeyedLimiter,
    MonotonicClock,
    RateLimited,
    TokenBucket,
    acquire_all,
    admit,
    format_rate,
    parse_rate,
    parse_size,
    try_acquire_all,
    wait_time_all,
)

MiB = 2**20
KiB = 2**10
RATE = 50e6  # 50 MB/s


async def spawn(clock: FakeClock, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    task = asyncio.create_task(coro)
    await clock.settle()
    return task


async def finish(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def jain(xs: Sequence[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


# -- clocks ---------------------------------------------------------------------------------


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = FakeClock(start=100.0)
    woke: list[tuple[str, float]] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [await spawn(clock, nap(n, s)) for n, s in [("c", 3), ("a", 1), ("b", 2), ("a2", 1)]]
    assert clock.sleepers == 4 and clock.next_deadline() == 101.0
    clock.advance(1.5)
    await clock.settle()
    assert woke == [("a", 101.5), ("a2", 101.5)]
    tasks[0].cancel()  # a cancelled sleeper is forgotten
    await clock.settle()
    assert clock.sleepers == 1 and clock.next_deadline() == 102.0
    await clock.run_for(10)
    assert woke[2:] == [("b", 102.0)] and clock.now() == 111.5
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    await finish(*tasks)


async def test_monotonic_clock_is_a_clock() -> None:
    clock = MonotonicClock()
    assert isinstance(clock, Clock) and isinstance(FakeClock(), Clock)
    before = clock.now()
    await clock.sleep(0)
    assert clock.now() >= before


# -- one bucket -----------------------------------------------------------------------------


async def test_rate_and_burst_accounting_is_exact() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, burst=10, clock=clock)
    assert bucket.try_acquire(10)  # starts full
    assert not bucket.try_acquire(1)
    assert bucket.wait_time(1) == pytest.approx(0.01)
    assert bucket.wait_time(5) == pytest.approx(0.05)
    clock.advance(0.05)
    assert bucket.statistics().tokens == pytest.approx(5)
    assert bucket.try_acquire(5) and not bucket.try_acquire(1)
    clock.advance(100)  # refills up to burst only
    assert bucket.statistics().tokens == pytest.approx(10)
    stats = bucket.statistics()
    assert (stats.granted_bytes, stats.refused, stats.waiters) == (15, 2, 0)
    # try_acquire above burst: allowed from a full bucket, leaves debt
    assert bucket.try_acquire(30)
    assert bucket.statistics().tokens == pytest.approx(-20)
    assert bucket.wait_time(1) == pytest.approx(0.21)


async def test_default_burst_is_a_tenth_of_a_second() -> None:
    assert TokenBucket(RATE).burst == RATE / 10
    assert TokenBucket(5).burst == 1  # never below one token
    with pytest.raises(ValueError, match="rate must be a positive"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(10, burst=0.5)


async def test_acquire_waits_exactly_as_long_as_needed() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock)
    await bucket.acquire(100)  # from the full bucket: no wait
    task = await spawn(clock, bucket.acquire(50))
    clock.advance(0.049)
    await clock.settle()
    assert not task.done() and bucket.statistics().waiters == 1
    clock.advance(0.001)
    await clock.settle()
    assert task.done()
    stats = bucket.statistics()
    assert stats.throttled == 1 and stats.throttled_seconds == pytest.approx(0.05)
    assert stats.granted_bytes == 150 and stats.tokens == pytest.approx(0)


async def test_acquire_larger_than_burst_is_granted_in_pieces() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock)
    task = await spawn(clock, bucket.acquire(1000))
    await clock.run_for(0.899)
    assert not task.done()
    await clock.run_for(0.001)
    assert task.done() and bucket.statistics().granted_bytes == 1000


async def test_waiters_are_served_first_come_first_served() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, burst=100, clock=clock)
    await bucket.acquire(100)
    done: list[tuple[int, float]] = []

    async def client(i: int) -> None:
        await bucket.acquire(100)
        done.append((i, clock.now()))

    tasks = [await spawn(clock, client(i)) for i in range(4)]
    assert bucket.statistics().waiters == 4
    await clock.run_for(10)
    assert [i for i, _ in done] == [0, 1, 2, 3]
    assert [t for _, t in done] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    await finish(*tasks)


async def test_cancelled_waiter_frees_its_place_at_once() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, burst=100, clock=clock)
    await bucket.acquire(100)
    first = await spawn(clock, bucket.acquire(100))
    second = await spawn(clock, bucket.acquire(100))
    await clock.run_for(0.5)
    first.cancel()  # the client went away
    await clock.settle()
    assert first.cancelled() and bucket.statistics().waiters == 1
    await clock.run_for(0.5)  # the second one is served when the first would have been
    assert second.done() and not second.cancelled() and clock.now() == 1.0


async def test_cancelled_waiter_gives_back_partial_grants() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, burst=100, clock=clock)
    await bucket.acquire(100)
    big = await spawn(clock, bucket.acquire(300))  # granted 100 at t=1, 100 at t=2
    await clock.run_for(2.0)
    small = await spawn(clock, bucket.acquire(100))
    await clock.run_for(0.5)
    assert not small.done()
    big.cancel()
    await clock.settle()
    # its 200 tokens came back: the small one is served now, the rest is capped at burst
    assert small.done() and not small.cancelled()
    stats = bucket.statistics()
    assert stats.waiters == 0 and stats.tokens == pytest.approx(100)
    assert stats.granted_bytes == 200  # the cancelled acquire is not counted
    await clock.run_for(1)
    assert clock.sleepers == 0  # the pump is gone too


async def test_cancelled_after_grant_before_resuming_refunds() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, burst=100, clock=clock)
    await bucket.acquire(100)
    task = await spawn(clock, bucket.acquire(50))
    clock.advance(0.5)
    await asyncio.sleep(0)  # the pump runs and grants; the waiter has not resumed yet
    assert bucket.statistics().waiters == 0 and not task.done()
    task.cancel()
    await clock.settle()
    assert task.cancelled()
    stats = bucket.statistics()
    assert stats.tokens == pytest.approx(50) and stats.granted_bytes == 100


async def test_set_rate_applies_to_current_waiters() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, burst=10, clock=clock)
    await bucket.acquire(10)
    faster = await spawn(clock, bucket.acquire(10))  # would take 1 s
    await clock.run_for(0.1)
    bucket.set_rate(1000, burst=10)  # 1 token saved, 9 more at 1000/s
    await clock.run_for(0.009)
    assert faster.done()

    bucket = TokenBucket(100, burst=100, clock=clock)
    await bucket.acquire(100)
    slower = await spawn(clock, bucket.acquire(100))
    await clock.run_for(0.5)
    bucket.set_rate(10, burst=100)  # 50 saved, 50 more at 10/s
    await clock.run_for(4.99)
    assert not slower.done()
    await clock.run_for(0.01)
    assert slower.done()

    waiting = await spawn(clock, bucket.acquire(1000))
    bucket.set_rate(None)  # unlimited releases everyone
    await clock.settle()
    assert waiting.done() and bucket.statistics().rate is None


async def test_unlimited_returns_at_once_and_still_counts() -> None:
    clock = FakeClock()
    bucket = TokenBucket(None, clock=clock)
    for _ in range(100):
        await bucket.acquire(4 * MiB)
    assert bucket.try_acquire(10**12) and bucket.wait_time(10**12) == 0
    stats = bucket.statistics()
    assert stats == BucketStatistics(
        rate=None,
        burst=0,
        tokens=0,
        waiters=0,
        granted_bytes=400 * MiB + 10**12,
        throttled_seconds=0,
        throttled=0,
        refused=0,
    )
    bucket.set_rate(100)  # limited again, starting full
    assert bucket.statistics().tokens == 10


async def test_statistics_count_waiting_time_as_it_goes() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, burst=100, clock=clock)
    await bucket.acquire(100)
    tasks = [await spawn(clock, bucket.acquire(100)) for _ in range(2)]
    await clock.run_for(0.5)
    assert bucket.statistics().throttled_seconds == pytest.approx(1.0)  # 2 x 0.5 s so far
    await clock.run_for(1.5)  # done at 1 s and 2 s
    stats = bucket.statistics()
    assert stats.throttled_seconds == pytest.approx(3.0) and stats.throttled == 2
    with pytest.raises(ValueError, match="amount"):
        await bucket.acquire(-1)
    await finish(*tasks)


async def test_small_request_slips_between_quanta_of_a_big_one() -> None:
    clock = FakeClock()
    bucket = TokenBucket(RATE, clock=clock)
    await bucket.acquire(bucket.burst)
    big = await spawn(clock, bucket.acquire(64 * MiB))  # ~1.34 s
    await clock.run_for(0.5)
    small = await spawn(clock, bucket.acquire(4 * KiB))
    await clock.run_for(0.005)  # a quantum is 1.3 ms at 50 MB/s
    assert small.done() and not big.done()
    await clock.run_for(1)
    assert big.done()


# -- fairness: streams under one bucket, simulated for 10 seconds ----------------------------


async def simulate(
    bucket: TokenBucket | None,
    clock: FakeClock,
    chunks: Sequence[int],
    seconds: float = 10.0,
    buckets: Sequence[Sequence[TokenBucket]] | None = None,
) -> list[int]:
    """One task per entry of ``chunks``, each looping acquire(chunk) and counting the bytes."""
    sent = [0] * len(chunks)

    async def stream(i: int, chunk: int) -> None:
        while True:
            if buckets is not None:
                await acquire_all(buckets[i], chunk)
            else:
                assert bucket is not None
                await bucket.acquire(chunk)
            sent[i] += chunk

    tasks = [asyncio.create_task(stream(i, c)) for i, c in enumerate(chunks)]
    await clock.run_for(seconds)
    await finish(*tasks)
    return sent


@pytest.mark.parametrize("streams", [1, 4, 16])
async def test_streams_share_the_rate_fairly(streams: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(RATE, clock=clock)
    sent = await simulate(bucket, clock, [4 * MiB] * streams)
    assert sum(sent) == pytest.approx(RATE * 10, rel=0.05)
    assert jain(sent) > 0.95
    assert bucket.statistics().waiters == 0  # the cancelled streams left nothing behind


@pytest.mark.parametrize(
    "chunks",
    [
        [4 * MiB, 1 * MiB, 256 * KiB, 64 * KiB],
        [4 * MiB, 16 * KiB],  # one below the quantum
        [4 * MiB, 1 * MiB, 256 * KiB, 64 * KiB, 16 * KiB, 1500, 3 * MiB, 100 * KiB] * 2,
    ],
    ids=["4", "2-tiny", "16"],
)
async def test_fairness_holds_with_unequal_chunk_sizes(chunks: list[int]) -> None:
    clock = FakeClock()
    bucket = TokenBucket(RATE, clock=clock)
    sent = await simulate(bucket, clock, chunks)
    assert sum(sent) == pytest.approx(RATE * 10, rel=0.05)
    assert jain(sent) > 0.95, [round(s / 1e6, 1) for s in sent]


async def test_late_stream_gets_its_share_and_no_credit_for_idling() -> None:
    clock = FakeClock()
    bucket = TokenBucket(RATE, clock=clock)
    sent = [0, 0]

    async def stream(i: int) -> None:
        while True:
            await bucket.acquire(1 * MiB)
            sent[i] += 1 * MiB

    early = asyncio.create_task(stream(0))
    await clock.run_for(5)
    before = sent[0]
    late = asyncio.create_task(stream(1))
    await clock.run_for(5)
    await finish(early, late)
    assert sent[0] - before == pytest.approx(sent[1], rel=0.05)  # halves from t=5 on


async def test_streams_that_leave_free_their_share_at_once() -> None:
    clock = FakeClock()
    bucket = TokenBucket(RATE, clock=clock)
    sent = [0, 0, 0]

    async def stream(i: int) -> None:
        while True:
            await bucket.acquire(4 * MiB)
            sent[i] += 4 * MiB

    tasks = [asyncio.create_task(stream(i)) for i in range(3)]
    await clock.run_for(5)
    tasks[0].cancel()  # its client disconnected, mid-wait
    before = list(sent)
    await clock.run_for(5)
    await finish(*tasks)
    assert sent[0] == before[0]
    for i in (1, 2):
        assert sent[i] - before[i] == pytest.approx(RATE * 5 / 2, rel=0.05)


# -- several buckets at once -----------------------------------------------------------------


async def test_acquire_all_charges_every_bucket_once() -> None:
    clock = FakeClock()
    wide = TokenBucket(1000, burst=1000, clock=clock)
    narrow = TokenBucket(100, burst=100, clock=clock)
    free = TokenBucket(None, clock=clock)
    task = await spawn(clock, acquire_all([narrow, None, wide, free, wide], 500))
    await clock.run_for(3.99)  # narrow: 100 now, 400 more at 100/s
    assert not task.done()
    await clock.run_for(0.01)
    assert task.done()
    for bucket in (wide, narrow, free):
        assert bucket.statistics().granted_bytes == 500


async def test_acquire_all_cancelled_refunds_the_buckets_already_charged() -> None:
    clock = FakeClock()
    first = TokenBucket(1000, burst=1000, clock=clock)
    second = TokenBucket(1, burst=1, clock=clock)
    task = await spawn(clock, acquire_all([first, second], 500))
    assert first.statistics().tokens == 500
    task.cancel()
    await clock.settle()
    assert first.statistics().tokens == 1000 and first.statistics().granted_bytes == 0
    assert second.statistics().waiters == 0


async def test_composite_stream_gets_the_narrowest_rate_without_double_waiting() -> None:
    clock = FakeClock()
    glob = TokenBucket(RATE, clock=clock)
    conns = [TokenBucket(10e6, clock=clock) for _ in range(3)]
    other = TokenBucket(10e6, clock=clock)  # same rate as the connection: no double wait
    chains = [[conns[0], glob], [conns[1], glob], [conns[2], other, glob]]
    sent = await simulate(None, clock, [1 * MiB] * 3, buckets=chains)
    for got in sent:
        assert got == pytest.approx(10e6 * 10, rel=0.05)
    assert glob.statistics().granted_bytes == sum(sent)


async def test_acquire_all_in_opposite_orders_does_not_deadlock() -> None:
    clock = FakeClock()
    a = TokenBucket(100, burst=100, clock=clock)
    b = TokenBucket(100, burst=100, clock=clock)
    await acquire_all([a, b], 100)
    tasks = [await spawn(clock, acquire_all(order, 100)) for order in ([a, b], [b, a]) * 2]
    await clock.run_for(10)
    assert all(t.done() and t.exception() is None for t in tasks)
    assert a.statistics().granted_bytes == b.statistics().granted_bytes == 500


async def test_try_acquire_does_not_jump_the_queue() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, burst=100, clock=clock)
    await bucket.acquire(100)
    waiting = await spawn(clock, bucket.acquire(50))
    await clock.run_for(0.4)
    assert not bucket.try_acquire(1)  # 40 saved, but they are the waiter's
    assert bucket.wait_time(10) == pytest.approx(0.2)  # the waiter's 10, then these 10
    await clock.run_for(0.3)
    assert waiting.done() and bucket.try_acquire(10)


async def test_try_acquire_all_is_all_or_nothing() -> None:
    clock = FakeClock()
    roomy = TokenBucket(10, burst=10, clock=clock)
    tight = TokenBucket(1, burst=1, clock=clock)
    assert try_acquire_all([roomy, tight])
    assert not try_acquire_all([roomy, tight])
    assert roomy.statistics().tokens == 9  # untouched by the refusal
    assert tight.statistics().refused == 1 and roomy.statistics().refused == 0
    assert wait_time_all([roomy, tight]) == pytest.approx(1.0)
    with pytest.raises(RateLimited) as refused:
        admit([roomy, tight])
    assert refused.value.retry_after == pytest.approx(1.0)
    clock.advance(1)
    admit([roomy, None, tight])
    assert wait_time_all([]) == 0


# -- keyed limiters --------------------------------------------------------------------------


async def test_keyed_limiter_makes_buckets_lazily_and_expires_idle_ones() -> None:
    clock = FakeClock()
    limiter: KeyedLimiter[str] = KeyedLimiter(100, burst=100, clock=clock, idle_timeout=60)
    assert len(limiter) == 0
    alice = limiter.bucket("alice")
    assert limiter.bucket("alice") is alice and len(limiter) == 1
    await limiter.acquire("alice", 100)
    await limiter.acquire("bob", 50)
    assert "bob" in limiter
    clock.advance(59)
    assert limiter.expire() == 0
    waiting = await spawn(clock, limiter.acquire("carol", 300))  # 100 now, 200 in 2 s
    await clock.run_for(1)
    assert limiter.expire() == 2 and list(limiter.statistics().per_key) == ["carol"]
    await clock.run_for(0.5)
    assert limiter.expire() == 0 and "carol" in limiter  # somebody waits
    await clock.run_for(0.5)
    assert waiting.done()
    clock.advance(60)
    limiter.bucket("dave")  # lookups sweep a little at a time
    assert "carol" not in limiter and len(limiter) == 1
    stats = limiter.statistics()
    assert stats.keys == 1 and stats.expired == 3
    assert stats.granted_bytes == 450  # totals keep what dropped buckets counted


async def test_keyed_limiter_is_bounded_by_max_keys() -> None:
    clock = FakeClock()
    limiter: KeyedLimiter[int] = KeyedLimiter(10, clock=clock, max_keys=3)
    for key in range(10):
        limiter.try_acquire(key)
        clock.advance(1)
    assert len(limiter) == 3 and list(limiter.statistics().per_key) == [7, 8, 9]
    assert limiter.statistics().granted_bytes == 10


async def test_keyed_set_rate_applies_to_existing_and_future_keys() -> None:
    clock = FakeClock()
    limiter: KeyedLimiter[str] = KeyedLimiter(100, clock=clock)
    old = limiter.bucket("old")
    limiter.set_rate(1000, burst=500)
    assert (old.rate, old.burst) == (1000, 500)
    assert (limiter.bucket("new").rate, limiter.bucket("new").burst) == (1000, 500)
    limiter.set_rate(None)
    assert limiter.try_acquire("new", 10**9) and limiter.wait_time("new") == 0
    stats = limiter.statistics(per_key=False)
    assert stats.rate is None and stats.keys == 2 and stats.per_key == {}


async def test_keyed_statistics_aggregate_and_per_key() -> None:
    clock = FakeClock()
    limiter: KeyedLimiter[str] = KeyedLimiter(10, burst=10, clock=clock)
    assert limiter.try_acquire("a", 10) and not limiter.try_acquire("a")
    assert limiter.try_acquire("b", 4)
    stats = limiter.statistics()
    assert (stats.keys, stats.granted_bytes, stats.refused, stats.tokens) == (2, 14, 1, 6)
    assert stats.per_key["a"].refused == 1 and stats.per_key["b"].tokens == 6
    assert limiter.wait_time("a") == pytest.approx(0.1) and limiter.wait_time("zed") == 0


# -- in-flight cap ---------------------------------------------------------------------------


async def test_in_flight_refuses_beyond_the_limit_and_recovers() -> None:
    cap = InFlight(2, retry_after=0.5)
    assert cap.try_enter() and cap.try_enter()
    assert not cap.try_enter()
    with pytest.raises(RateLimited) as refused:
        async with cap:
            pass
    assert refused.value.retry_after == 0.5
    cap.leave()
    with cap:
        assert cap.in_flight == 2
    assert cap.in_flight == 1
    cap.set_limit(1)
    assert not cap.try_enter()
    cap.leave()
    async with cap:
        pass
    stats = cap.statistics()
    assert (stats.in_flight, stats.peak, stats.admitted, stats.refused) == (0, 2, 4, 3)
    with pytest.raises(RuntimeError):
        cap.leave()
    unlimited = InFlight(None)
    assert all(unlimited.try_enter() for _ in range(1000))


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("50MB/s", 50e6),
        ("500MiB/s", 500 * 2**20),
        ("100/s", 100.0),
        ("1.5GB/s", 1.5e9),
        ("64 KiB/s", 65536.0),
        ("10k/s", 10000.0),
        ("2e3 B / sec", 2000.0),
        ("unlimited", None),
        ("Unlimited", None),
        ("0", None),
        ("0MB/s", None),
        (0, None),
        (None, None),
        (1234.5, 1234.5),
    ],
)
def test_parse_rate(text: str | float | None, rate: float | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("50Mb/s", "bits"),
        ("50MB", "per-second suffix"),
        ("fast", "per-second suffix"),
        ("-5MB/s", "negative"),
        ("5XB/s", "unknown unit 'XB'"),
        ("MB/s", "does not start with a number"),
        ("", "empty"),
        ("1e999/s", "too large"),
        (-1, "negative"),
        (True, "not True"),
    ],
)
def test_parse_rate_errors(text: str | float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(text)


def test_parse_size_and_format_rate() -> None:
    assert parse_size("4MiB") == 4 * MiB and parse_size("1.5MB") == 1_500_000
    assert parse_size(4096) == 4096 and parse_size("64k") == 64000
    with pytest.raises(ValueError, match="is a rate"):
        parse_size("4MiB/s")
    with pytest.raises(ValueError, match="unknown unit"):
        parse_size("4 parsecs")
    assert format_rate(50e6) == "50MB/s" and format_rate(500 * MiB) == "500MiB/s"
    assert format_rate(1.5e9) == "1.5GB/s" and format_rate(None) == "unlimited"
    assert format_rate(100, unit="") == "100/s"
    for text in ["50MB/s", "500MiB/s", "1.5GB/s", "64KiB/s"]:
        assert format_rate(parse_rate(text)) == text
