"""User-space metadata: what exists under the mount, with a TTL and a negative cache, fed by
ListObjectsV2 pages.

S3 has no directories, so this module decides what one is: ``d`` is a directory if any key
starts with ``d/`` (a zero-byte ``d/`` marker object counts), or if the endpoint reports
``d/`` as a common prefix (the unionstore gateway does this for an empty HDFS directory).
If both a file ``d`` and keys under ``d/`` exist, the directory wins and the file is hidden.

Sources, cheapest first:

1. a fresh, complete listing of the parent directory (a ``readdir`` fills it: a 10,000-entry
   directory costs 10 LIST pages and no HEADs; every later lookup and getattr of its
   children is answered from it);
2. a fresh entry (positive or negative) from an earlier lookup;
3. one delimited LIST with ``prefix=<name>``: it returns the object ``<name>`` and the common
   prefix ``<name>/`` in one request (paged only in the rare case that many siblings share
   the prefix and sort before ``<name>/``). After ``DIR_LIST_AFTER`` such misses in one
   directory, the whole directory is listed once instead.

Concurrent listings of the same directory are merged. Mutations made through this mount
update the cache at once (``put``/``remove``); changes made elsewhere show after the TTL, or
at once after a write to the mount's control file ``.unionstore/invalidate``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from unionstore.fuse.s3client import S3Client

DIR_LIST_AFTER = 16  # lookups that missed in one directory before it is listed whole
MAX_ENTRIES = 200_000  # cached single entries before expired ones are swept


@dataclass(frozen=True, slots=True)
class Stat:
    is_dir: bool
    size: int = 0
    mtime_ns: int = 0
    etag: str = ""

    @property
    def version(self) -> str:
        """What identifies these bytes: the ETag (and size), or size and mtime without one."""
        return f"{self.etag}:{self.size}" if self.etag else f":{self.size}:{self.mtime_ns}"


DIR = Stat(is_dir=True)


@dataclass(slots=True)
class Listing:
    entries: dict[str, Stat]
    expires: float


@dataclass(slots=True)
class MetadataStats:
    counts: Counter[str] = field(default_factory=Counter)


def _valid_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "\x00" not in name


class MetadataCache:
    """The cache alone (no I/O); time comes from ``clock`` so tests can move it."""

    def __init__(
        self, ttl: float, negative_ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.clock = clock
        self._dirs: dict[str, Listing] = {}
        self._entries: dict[str, tuple[float, Stat | None]] = {}

    def listing(self, path: str) -> dict[str, Stat] | None:
        found = self._dirs.get(path)
        if found is None or found.expires <= self.clock():
            return None
        return found.entries

    def put_listing(self, path: str, entries: dict[str, Stat]) -> None:
        if self.ttl > 0:
            self._dirs[path] = Listing(entries, self.clock() + self.ttl)

    def get(self, path: str) -> tuple[bool, Stat | None]:
        """(known, stat): stat None with known True means "does not exist"; known False means
        the cache cannot tell (ask the endpoint)."""
        if path == "":
            return True, DIR
        parent, _, name = path.rpartition("/")
        entries = self.listing(parent)
        if entries is not None:
            return True, entries.get(name)
        found = self._entries.get(path)
        if found is not None and found[0] > self.clock():
            return True, found[1]
        return False, None

    def put(self, path: str, stat: Stat | None) -> None:
        """Record one entry (None: it does not exist); keeps a cached parent listing in step."""
        ttl = self.ttl if stat is not None else self.negative_ttl
        if ttl > 0:
            if len(self._entries) >= MAX_ENTRIES:
                self._sweep()
            self._entries[path] = (self.clock() + ttl, stat)
        else:
            self._entries.pop(path, None)
        parent, _, name = path.rpartition("/")
        listing = self._dirs.get(parent)
        if listing is not None:
            if stat is None:
                listing.entries.pop(name, None)
            else:
                listing.entries[name] = stat

    def remove(self, path: str) -> None:
        self.put(path, None)
        self._dirs.pop(path, None)

    def invalidate(self, subtree: str = "") -> int:
        """Forget everything at or below ``subtree`` ("" = the whole mount), and the parent's
        listing (it names the subtree's root). Returns the number of records dropped."""

        def under(p: str) -> bool:
            return not subtree or p == subtree or p.startswith(subtree + "/")

        dropped = [p for p in self._dirs if under(p)]
        dropped_entries = [p for p in self._entries if under(p)]
        for p in dropped:
            del self._dirs[p]
        for p in dropped_entries:
            del self._entries[p]
        if subtree:
            parent = subtree.rpartition("/")[0]
            if self._dirs.pop(parent, None) is not None:
                dropped.append(parent)
        return len(dropped) + len(dropped_entries)

    def _sweep(self) -> None:
        now = self.clock()
        for p in [p for p, (exp, _) in self._entries.items() if exp <= now]:
            del self._entries[p]
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()


class Metadata:
    """Answers from :class:`MetadataCache`, asking the endpoint (LIST) on a miss."""

    def __init__(self, client: S3Client, prefix: str, cache: MetadataCache) -> None:
        self.client = client
        self.prefix = prefix  # "" or ends with "/"
        self.cache = cache
        self.stats = MetadataStats()
        self._listing_tasks: dict[str, asyncio.Future[dict[str, Stat]]] = {}
        self._misses: Counter[str] = Counter()

    def key(self, path: str) -> str:
        return self.prefix + path

    def dir_prefix(self, path: str) -> str:
        return self.prefix + path + "/" if path else self.prefix

    async def stat(self, path: str) -> Stat | None:
        known, cached = self.cache.get(path)
        if known:
            self.stats.counts["hits"] += 1
            return cached
        self.stats.counts["misses"] += 1
        parent = path.rpartition("/")[0]
        if len(self._misses) > 10_000:
            self._misses.clear()
        self._misses[parent] += 1
        if self._misses[parent] > DIR_LIST_AFTER:
            entries = await self.list_dir(parent)
            return entries.get(path.rpartition("/")[2])
        found = await self._lookup_one(path)
        self.cache.put(path, found)
        return found

    async def list_dir(self, path: str, *, fresh: bool = False) -> dict[str, Stat]:
        """Every entry of a directory (name -> Stat), from the cache or LIST pages."""
        if not fresh:
            cached = self.cache.listing(path)
            if cached is not None:
                self.stats.counts["hits"] += 1
                return cached
        running = self._listing_tasks.get(path)
        if running is not None:
            return await asyncio.shield(running)
        fut: asyncio.Future[dict[str, Stat]] = asyncio.get_running_loop().create_future()
        self._listing_tasks[path] = fut
        try:
            entries = await self._list_all(path)
            self.cache.put_listing(path, entries)
            self._misses.pop(path, None)
            fut.set_result(entries)
            return entries
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: merged waiters get it, nobody else needs to
            raise
        finally:
            del self._listing_tasks[path]

    async def has_children(self, path: str) -> bool:
        """True if anything but the directory's own marker lives under ``path/`` (uncached)."""
        page = await self.client.list_page(self.dir_prefix(path), delimiter="/", max_keys=2)
        marker = self.dir_prefix(path)
        return bool(page.prefixes) or any(o.key != marker for o in page.objects)

    async def _list_all(self, path: str) -> dict[str, Stat]:
        base = self.dir_prefix(path)
        files: dict[str, Stat] = {}
        dirs: set[str] = set()
        token: str | None = None
        while True:
            page = await self.client.list_page(base, delimiter="/", token=token)
            self.stats.counts["list_pages"] += 1
            for obj in page.objects:
                name = obj.key[len(base) :]
                if _valid_name(name) and "/" not in name:
                    files[name] = Stat(False, obj.size, obj.mtime_ns, obj.etag)
            for p in page.prefixes:
                name = p[len(base) :].rstrip("/")
                if _valid_name(name) and "/" not in name:
                    dirs.add(name)
            token = page.next_token
            if token is None:
                break
        for name in dirs:
            files[name] = DIR  # a directory hides a file of the same name
        return files

    async def _lookup_one(self, path: str) -> Stat | None:
        key = self.key(path)
        as_dir = key + "/"
        found: Stat | None = None
        token: str | None = None
        while True:
            page = await self.client.list_page(key, delimiter="/", token=token, max_keys=32)
            self.stats.counts["lookup_lists"] += 1
            if as_dir in page.prefixes:
                return DIR
            for obj in page.objects:
                if obj.key == key:
                    found = Stat(False, obj.size, obj.mtime_ns, obj.etag)
            seen = [o.key for o in page.objects] + page.prefixes
            token = page.next_token
            if token is None or (seen and max(seen) > as_dir):
                return found
