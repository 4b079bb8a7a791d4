"""Per-key locks that hold across the worker processes of a node.

A key is locked by an asyncio lock inside the process, then by ``flock`` on one of
``STRIPES`` lock files in a folder the workers share (the gateway's state folder), chosen by
a hash of the key: keys that share a stripe wait for each other, which only costs when two
of them are published in the same instant. The ``flock`` is tried without blocking and
retried after a short sleep: a blocking one would hold a thread per waiter, and waiters could
take every thread the lock's holder needs to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

STRIPES = 64


@dataclass(slots=True)
class _Entry:
    lock: asyncio.Lock
    users: int = 0


class KeyLocks:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._entries: dict[str, _Entry] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(asyncio.Lock())
        entry.users += 1
        try:
            async with entry.lock:
                fd = await self._lock_stripe(key)
                try:
                    yield
                finally:
                    os.close(fd)  # closing the descriptor releases the flock
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    async def _lock_stripe(self, key: str) -> int:
        stripe = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=2).digest()) % STRIPES
        fd = os.open(self.folder / f"{stripe:02d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        delay = 0.001
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise
