"""Who fills a block: the seam between one node and a cluster.

Within a process, concurrent readers of a cold block are merged by the block cache itself
(one in-flight future per block). Across processes, a :class:`FillCoordinator` decides: the
caller that :meth:`~FillCoordinator.claim`\\ s a block fetches it; the others
:meth:`~FillCoordinator.wait` until it is published or the claim lapses.

- :class:`EmbeddedCoordinator`: leases in the node's block store (diskcache's atomic ``add``
  with an expiry), so several worker processes of one gateway share fills, and a lease of a
  process that died expires by itself.
- a MySQL task table (the cluster issue) implements the same two calls for many nodes.
"""

from __future__ import annotations

import asyncio
import os
import time
from abc import ABC, abstractmethod

from unionstore.cache.store import BlockStore


class FillCoordinator(ABC):
    @abstractmethod
    async def claim(self, key: str) -> bool:
        """True if the caller should fill ``key`` now; False if another process is on it."""

    @abstractmethod
    async def done(self, key: str) -> None:
        """The caller finished (or gave up) filling ``key``."""

    @abstractmethod
    async def wait(self, key: str, within: float) -> bool:
        """Wait up to ``within`` seconds until ``key`` is published (True), or until nobody
        holds its claim any more (False)."""


class EmbeddedCoordinator(FillCoordinator):
    def __init__(self, store: BlockStore, lease_seconds: float = 30.0) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.owner = f"{os.getpid()}"

    async def claim(self, key: str) -> bool:
        return await asyncio.to_thread(self.store.try_lease, key, self.owner, self.lease_seconds)

    async def done(self, key: str) -> None:
        await asyncio.to_thread(self.store.release_lease, key)

    async def wait(self, key: str, within: float) -> bool:
        deadline = time.monotonic() + within
        delay = 0.005
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self.store.contains, key):
                return True
            if not await asyncio.to_thread(self.store.lease_held, key):
                return await asyncio.to_thread(self.store.contains, key)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        return False


class SoloCoordinator(FillCoordinator):
    """One process only: every claim succeeds (in-process merging is enough)."""

    async def claim(self, key: str) -> bool:
        return True

    async def done(self, key: str) -> None:
        return None

    async def wait(self, key: str, within: float) -> bool:
        return False
