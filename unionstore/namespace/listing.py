"""Listing a bucket in S3 key order, at a cost that grows with the page, not the subtree.

S3 returns keys sorted by their UTF-8 bytes (the same as code-point order of ``str``). A UFS
returns the children of one directory sorted by *name* (drivers fix backends that order
otherwise, like HDFS's signed bytes), and a naive depth-first walk is still wrong: directory
``a`` holds key ``a/x``, which must come after file ``a.b`` (``.`` < ``/``).
:func:`_in_key_order` fixes this while streaming: a directory sorts as ``name + "/"``, so it
is held back in a small heap until the stream passes that point. Only directories whose name
is a prefix of the current name are ever held, so memory stays small.

The walk is lazy at every level: with ``max-keys=1`` only the first child of each directory on
the way down is fetched, and with delimiter ``/`` sub-directories are reported as common
prefixes without being opened (Alluxio's proxy walks them).

A bucket may hold several mounts. Each mount's walk is mapped into key space (its prefix in
front), prefixes of longer mounts are pruned from shorter ones (longest prefix wins), and the
walks are merged lazily. Continuation tokens carry the last key returned, so they stay valid
across pages, mounts, restarts and gateway workers; a small in-process table also keeps the
live merged iterator of recent pages so the next page resumes without re-reading.
"""

from __future__ import annotations

import base64
import heapq
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field

from unionstore.cache.metadata import Clock, TtlCache
from unionstore.errors import InvalidArgument, NotFound
from unionstore.namespace.mounts import Mount
from unionstore.ufs.base import FileStatus, UnderFileSystem

#: names the gateway keeps for itself (multipart staging); never listed, never a key
RESERVED_PREFIX = ".unionstore-"


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    is_prefix: bool  # a CommonPrefixes entry (a directory with delimiter "/")
    status: FileStatus | None = None


@dataclass(slots=True)
class Page:
    entries: list[Entry]
    is_truncated: bool
    next_token: str | None = None
    last_key: str | None = None
    #: key -> ETag stored by the gateway (None until the gateway looked them up)
    etags: dict[str, str] | None = None
    #: when the walk that produced the page began (``Lister.clock``): its data is no older
    listed_at: float = 0.0

    @property
    def contents(self) -> list[Entry]:
        return [e for e in self.entries if not e.is_prefix]

    @property
    def prefixes(self) -> list[str]:
        return [e.key for e in self.entries if e.is_prefix]


async def _in_key_order(
    ufs: UnderFileSystem, rel_dir: str, name_prefix: str
) -> AsyncIterator[tuple[str, FileStatus]]:
    """Children of ``rel_dir`` whose name starts with ``name_prefix``, as (sort name, status)
    in key order, where a directory's sort name is ``name + "/"``.

    Children arrive in name order, so each arriving name bounds from below the key of
    everything still to come; held children at or below it are released."""
    held: list[tuple[str, int, FileStatus]] = []
    n = 0
    seen_group = False
    async for st in ufs.list_dir(rel_dir):
        name = st.name
        if not name.startswith(name_prefix):
            if seen_group:
                break  # names sharing a prefix are contiguous in any lexicographic order
            continue
        seen_group = True
        n += 1
        heapq.heappush(held, (name + "/" if st.is_dir else name, n, st))
        while held and held[0][0] <= name:
            sort_name, _, held_st = heapq.heappop(held)
            yield sort_name, held_st
    while held:
        sort_name, _, held_st = heapq.heappop(held)
        yield sort_name, held_st


async def walk(
    ufs: UnderFileSystem,
    rel_dir: str,
    key_base: str,
    *,
    name_prefix: str = "",
    after: str = "",
    recursive: bool,
    pruned: tuple[str, ...] = (),
) -> AsyncGenerator[Entry, None]:
    """Entries under ``rel_dir`` (keys ``key_base + name...``) greater than ``after``, in key
    order. Without ``recursive``, sub-directories are yielded as prefixes and not opened.
    Directories whose key starts with one of ``pruned`` are skipped (another mount owns them)."""
    try:
        children = _in_key_order(ufs, rel_dir, name_prefix)
        async for sort_name, st in children:
            if st.name.startswith(RESERVED_PREFIX):
                continue  # the gateway's own staging folders
            key = key_base + sort_name
            if not st.is_dir:
                if key > after:
                    yield Entry(key, False, st)
                continue
            if key.startswith(pruned) if pruned else False:
                continue
            child_dir = f"{rel_dir}/{st.name}" if rel_dir else st.name
            if not recursive:
                if key > after:
                    yield Entry(key, True, st)
                elif after.startswith(key) and after != key:
                    # start-after points inside this prefix: S3 reports the prefix only if
                    # some key under it sorts after start-after
                    below = walk(ufs, child_dir, key, after=after, recursive=True, pruned=pruned)
                    if await anext(below, None) is not None:
                        yield Entry(key, True, st)
                    await below.aclose()
                continue
            if after >= key and not after.startswith(key):
                continue  # every key below is <= after
            async for entry in walk(
                ufs, child_dir, key, after=after, recursive=True, pruned=pruned
            ):
                yield entry
    except NotFound:
        return  # the directory vanished or is a file: nothing under it


def _mount_walk(
    mount: Mount, shadows: tuple[str, ...], prefix: str, delimiter: str, after: str
) -> AsyncIterator[Entry] | None:
    """The walk of one mount restricted to ``prefix``, or None if it holds nothing there."""
    if shadows and prefix.startswith(shadows):
        return None  # a longer mount owns everything under this prefix
    if prefix.startswith(mount.prefix):
        rel = prefix[len(mount.prefix) :]
        rel_dir, _, name_prefix = rel.rpartition("/")
        key_base = mount.prefix + (rel_dir + "/" if rel_dir else "")
        return walk(
            mount.ufs,
            rel_dir,
            key_base,
            name_prefix=name_prefix,
            after=after,
            recursive=delimiter != "/",
            pruned=shadows,
        )
    if mount.prefix.startswith(prefix):
        rest = mount.prefix[len(prefix) :]
        if delimiter and delimiter in rest:
            common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
            return _single(Entry(common, True)) if common > after else None
        return walk(mount.ufs, "", mount.prefix, after=after, recursive=True, pruned=shadows)
    return None


async def _single(entry: Entry) -> AsyncIterator[Entry]:
    yield entry


async def _merge(streams: Sequence[AsyncIterator[Entry]]) -> AsyncIterator[Entry]:
    """Merge sorted streams lazily; equal keys (a prefix seen from two mounts) come once."""
    heap: list[tuple[str, int, Entry]] = []
    for i, stream in enumerate(streams):
        first = await anext(stream, None)
        if first is not None:
            heap.append((first.key, i, first))
    heapq.heapify(heap)
    last: str | None = None
    while heap:
        key, i, entry = heap[0]
        nxt = await anext(streams[i], None)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt.key, i, nxt))
        if key != last:
            last = key
            yield entry


async def _group(
    entries: AsyncIterator[Entry], prefix: str, delimiter: str, skip_under: str | None
) -> AsyncGenerator[Entry, None]:
    """Roll keys up into common prefixes for any delimiter; drop keys under ``skip_under``
    (the common prefix a continuation token stopped at)."""
    last_common: str | None = skip_under
    async for entry in entries:
        if last_common is not None and entry.key.startswith(last_common):
            continue
        if entry.is_prefix:
            last_common = entry.key
            yield entry
            continue
        if delimiter:
            rest = entry.key[len(prefix) :]
            idx = rest.find(delimiter)
            if idx >= 0:
                last_common = prefix + rest[: idx + len(delimiter)]
                yield Entry(last_common, True)
                continue
        yield entry


@dataclass(frozen=True, slots=True)
class Cursor:
    """What a continuation token says: list after ``key``; if ``is_prefix`` also skip keys
    under it."""

    key: str
    is_prefix: bool
    nonce: str = ""

    def encode(self) -> str:
        raw = json.dumps({"k": self.key, "p": self.is_prefix, "n": self.nonce}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(raw)
            return cls(str(data["k"]), bool(data["p"]), str(data.get("n", "")))
        except (ValueError, KeyError, TypeError):
            raise InvalidArgument("The continuation token provided is incorrect") from None


@dataclass
class _Resumable:
    stream: AsyncGenerator[Entry, None]
    peeked: Entry
    listed_at: float


PageKey = tuple[str, str, str, str, str, bool, int]


@dataclass
class Lister:
    """Pages through bucket listings, keeping recent live iterators for the next page, and
    (with ``page_ttl`` > 0) whole pages for that long, per bucket."""

    max_open: int = 256
    page_ttl: float = 0.0
    max_pages: int = 10_000
    clock: Clock = time.monotonic
    _open: OrderedDict[tuple[str, str, str, str], _Resumable] = field(default_factory=OrderedDict)
    _pages: TtlCache[PageKey, Page] = field(init=False)

    def __post_init__(self) -> None:
        self._pages = TtlCache(self.page_ttl, self.max_pages, stale_if_error=0.0)

    async def page(
        self,
        bucket: str,
        mounts: Sequence[Mount],
        *,
        prefix: str = "",
        delimiter: str = "",
        start_after: str = "",
        token: str | None = None,
        max_keys: int = 1000,
        cached: bool = True,
    ) -> Page:
        cursor = Cursor.decode(token) if token else None
        if max_keys <= 0:
            return Page([], False)
        page_key: PageKey = (
            bucket,
            prefix,
            delimiter,
            start_after,
            cursor.key if cursor else "",
            cursor.is_prefix if cursor else False,
            max_keys,
        )
        if self.page_ttl > 0 and cached:
            hit = self._pages.get(page_key)
            if hit is not None and hit[1]:
                return hit[0]
        page = await self._page(
            bucket, mounts, prefix, delimiter, start_after, token, cursor, max_keys
        )
        if self.page_ttl > 0:
            self._pages.put(page_key, page)
        return page

    async def _page(
        self,
        bucket: str,
        mounts: Sequence[Mount],
        prefix: str,
        delimiter: str,
        start_after: str,
        token: str | None,
        cursor: Cursor | None,
        max_keys: int,
    ) -> Page:
        slot = (bucket, prefix, delimiter, token or "")
        resumed = self._open.pop(slot, None) if token else None
        first: Entry | None
        stream: AsyncGenerator[Entry, None]
        if resumed is not None:
            stream, first, listed_at = resumed.stream, resumed.peeked, resumed.listed_at
        else:
            listed_at = self.clock()
            after = start_after
            if cursor is not None and cursor.key > after:
                after = cursor.key
            skip = cursor.key if cursor is not None and cursor.is_prefix else None
            stream = self._stream(mounts, prefix, delimiter, after, skip)
            first = await anext(stream, None)
        entries: list[Entry] = []
        nxt = first
        while nxt is not None and len(entries) < max_keys:
            entries.append(nxt)
            nxt = await anext(stream, None)
        if nxt is None:
            await stream.aclose()
            last_key = entries[-1].key if entries else None
            return Page(entries, False, last_key=last_key, listed_at=listed_at)
        last = entries[-1]
        next_token = Cursor(last.key, last.is_prefix, secrets.token_hex(4)).encode()
        self._remember((bucket, prefix, delimiter, next_token), _Resumable(stream, nxt, listed_at))
        return Page(entries, True, next_token=next_token, last_key=last.key, listed_at=listed_at)

    def _stream(
        self,
        mounts: Sequence[Mount],
        prefix: str,
        delimiter: str,
        after: str,
        skip: str | None,
    ) -> AsyncGenerator[Entry, None]:
        streams = []
        for mount in mounts:
            stream = _mount_walk(mount, mount.shadows(mounts), prefix, delimiter, after)
            if stream is not None:
                streams.append(stream)
        return _group(_merge(streams), prefix, delimiter, skip)

    def _remember(self, slot: tuple[str, str, str, str], item: _Resumable) -> None:
        self._open[slot] = item
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)  # the event loop's asyncgen hook closes it

    def forget(self, bucket: str) -> None:
        """Drop cached pages and resumable iterators of ``bucket`` (after writes, or an
        explicit invalidation, they may be stale)."""
        for slot in [s for s in self._open if s[0] == bucket]:
            del self._open[slot]
        self._pages.drop_where(lambda k: k[0] == bucket)
