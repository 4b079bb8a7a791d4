"""Per-key publish locks: exclusive per key within a process and across processes sharing the
lock folder, independent across keys, and nothing left behind."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

from unionstore.keylocks import KeyLocks


async def test_one_holder_per_key_and_keys_do_not_wait_for_each_other(tmp_path: Path) -> None:
    locks = KeyLocks(tmp_path)
    order: list[str] = []
    first_in = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> None:
        async with locks.hold("a/key"):
            order.append("first in")
            first_in.set()
            await release_first.wait()
            order.append("first out")

    async def second() -> None:
        await first_in.wait()
        async with locks.hold("a/key"):
            order.append("second in")

    async def other_key() -> None:
        await first_in.wait()
        async with locks.hold("b/other"):
            order.append("other in")

    tasks = [asyncio.create_task(c()) for c in (first, second, other_key)]
    await first_in.wait()
    for _ in range(50):
        await asyncio.sleep(0.01)
        if "other in" in order:
            break
    assert order == ["first in", "other in"]  # a different key went ahead; the same one waits
    release_first.set()
    await asyncio.gather(*tasks)
    assert order == ["first in", "other in", "first out", "second in"]
    assert not locks._entries  # nothing kept once nobody holds or waits


def _hold_in_child(folder: str, key: str, held: object, release: object) -> None:
    async def main() -> None:
        async with KeyLocks(Path(folder)).hold(key):
            held.set()  # type: ignore[attr-defined]
            await asyncio.to_thread(release.wait, 30)  # type: ignore[attr-defined]

    asyncio.run(main())


async def test_a_key_held_by_another_process_waits(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_in_child, args=(str(tmp_path), "k", held, release))
    child.start()
    try:
        assert await asyncio.to_thread(held.wait, 30)
        locks = KeyLocks(tmp_path)
        attempt = asyncio.create_task(_enter(locks, "k"))
        await asyncio.sleep(0.3)
        assert not attempt.done()  # the other worker holds the key
        release.set()
        await asyncio.wait_for(attempt, 10)
    finally:
        release.set()
        child.join(10)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0


async def _enter(locks: KeyLocks, key: str) -> None:
    async with locks.hold(key):
        pass
