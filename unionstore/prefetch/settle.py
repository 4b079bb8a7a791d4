"""Created files: complete once they stood still.

HDFS logs no close event, so a created (or appended) file counts as complete once its size and
mtime stayed the same for ``settle`` seconds; one still changing after ``max_wait`` is given
up. A file renamed into place is complete at once and never comes here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, Self, TypeVar

from unionstore.prefetch.hdfsstat import HdfsStat
from unionstore.prefetch.rules import Rule

log = logging.getLogger("unionstore.prefetch")


class Hold(Protocol):
    """Work that stays unfinished while something holds it (the daemon's Ticket)."""

    def hold(self) -> Self: ...

    def release(self) -> None: ...


H = TypeVar("H", bound=Hold)


@dataclass(eq=False)
class Candidate(Generic[H]):
    rule: Rule | None  # None: not to be warmed, only refreshed once complete
    holds: list[H]
    first: float
    seen: tuple[int, int] | None = None
    since: float = 0.0


class Settler(Generic[H]):
    def __init__(
        self,
        stat: HdfsStat,
        settle: float,
        max_wait: float,
        clock: Callable[[], float],
        on_complete: Callable[[str, Rule | None, list[H], int], None],
    ) -> None:
        self.stat, self.settle, self.max_wait, self.clock = stat, settle, max_wait, clock
        #: (path, its rule, the work waiting for it, its size) once the file stood still
        self.on_complete = on_complete
        self.candidates: dict[str, Candidate[H]] = {}

    def add(self, path: str, rule: Rule | None, work: H) -> None:
        cand = self.candidates.get(path)
        if cand is None:
            cand = self.candidates[path] = Candidate[H](rule, [], self.clock())
        cand.seen, cand.rule = None, rule  # written again: wait afresh
        cand.holds.append(work.hold())

    def drop(self, path: str) -> None:
        """Forget ``path`` and everything below it (deleted, renamed away)."""
        under = path.rstrip("/") + "/"
        for p in [p for p in self.candidates if p == path or p.startswith(under)]:
            for work in self.candidates.pop(p).holds:
                work.release()

    async def run(self) -> None:
        interval = min(2.0, max(0.2, self.settle / 4))
        sem = asyncio.Semaphore(16)

        async def stat(path: str) -> tuple[int, int] | str:
            async with sem:
                return await self._stat(path)

        while True:
            await asyncio.sleep(interval)
            paths = list(self.candidates)
            stats = await asyncio.gather(*(stat(p) for p in paths))
            now = self.clock()
            for p, st in zip(paths, stats, strict=True):
                cand = self.candidates.get(p)
                if cand is None or st == "unknown":
                    continue  # dropped meanwhile, or HDFS did not answer
                if isinstance(st, str) or now - cand.first > self.max_wait:
                    if not isinstance(st, str):
                        log.warning("%s did not stand still in time; not warmed", p)
                    self.drop(p)
                elif st != cand.seen:
                    cand.seen, cand.since = st, now
                elif now - cand.since >= self.settle:
                    del self.candidates[p]
                    self.on_complete(p, cand.rule, cand.holds, st[0])

    async def _stat(self, path: str) -> tuple[int, int] | str:
        """(size, mtime), or "gone" (nothing there, or a folder), or "unknown" (no answer)."""
        try:
            st = await self.stat.stat(path)
        except Exception as exc:
            log.debug("stat %s: %s", path, exc)
            return "unknown"
        return "gone" if st is None or st[2] else (st[0], st[1])
