"""Read-ahead across files: a directory read in name order gets its next small files fetched
ahead, the way a sequential reader of one file gets its next blocks.

A cold small file is one GET, and a process that reads one file after another waits for
each GET in turn, so one reader keeps the endpoint and the daemon busy only one request at
a time. Readers that walk a directory in order are common: ``tar``, ``cp -r``, ``rsync``,
a data loader without shuffling, or N workers each taking every N-th file of one list.

Detection, per directory: the positions (in the listing's name order) of the last ``RECENT``
files opened for reading. A file opened after each of its ``PRECEDING`` predecessors makes a
scan; the next ``window`` small files (one large block or less) after it are handed to the
block cache's read-ahead queue, which is bounded, drops when full and skips blocks cached or
in flight. Each file is handed once per scan: the directory remembers how far ahead it has
handed files (``ahead``), so an open usually hands one new file, not ``window`` of them (a
jump back by more than two windows starts over; a file the queue refused is handed again at
the next open). Shuffled readers almost never open three neighbours before a file (with 32
recent files of 10,000: about one open in 30 million), so they get nothing fetched that they
do not read. With two neighbours it was one open in 100,000: four shuffled readers of 1,500
files each, the data-loader test, had a scan detected in about one run of twenty, and a warm
epoch fetched files nobody read. Needs a cached listing of the directory (``readdir`` fills
it); without one, nothing is predicted.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from unionstore.fuse.metadata import Stat

RECENT = 32  # opened positions remembered per directory
MAX_DIRS = 64  # directories followed at once (least recently used forgotten)
PRECEDING = 3  # a file opened after this many predecessors (all among the recent) continues a scan


@dataclass(slots=True, eq=False)
class _Dir:
    listing: dict[str, Stat]  # the cached listing the positions below come from
    names: list[str]
    position: dict[str, int]
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT))
    ahead: int = 0  # files before this position were handed to ``prefetch`` in this scan


class DirectoryScans:
    """Which files to fetch ahead when a file is opened; ``prefetch(name, stat)`` is called
    for each of them, and returns False if it could not take it (the queue is full)."""

    def __init__(self) -> None:
        self._dirs: OrderedDict[str, _Dir] = OrderedDict()
        self.detected = 0  # opens that continued a scan

    def opened(
        self,
        parent: str,
        name: str,
        listing: dict[str, Stat] | None,
        window: int,
        max_size: int,
        prefetch: Callable[[str, Stat], bool],
    ) -> None:
        if listing is None or window <= 0:
            return
        d = self._dir(parent, listing)
        i = d.position.get(name)
        if i is None:
            return
        scanning = all(i - k in d.recent for k in range(1, PRECEDING + 1))
        d.recent.append(i)
        if not scanning:
            return
        self.detected += 1
        start = i + 1
        if start < d.ahead <= start + 2 * window:  # this scan handed files up to there
            start = d.ahead
        end = min(len(d.names), i + 1 + window)
        for j in range(start, end):
            if j in d.recent:
                continue
            ahead = d.names[j]
            stat = listing.get(ahead)
            if stat is None or stat.is_dir or not 0 < stat.size <= max_size:
                continue
            if not prefetch(ahead, stat):
                end = j  # refused: offered again at the next open
                break
        d.ahead = max(d.ahead, end) if start > i + 1 else end

    def _dir(self, parent: str, listing: dict[str, Stat]) -> _Dir:
        d = self._dirs.get(parent)
        if d is None or d.listing is not listing:  # new, or listed again since
            names = sorted(n for n, st in listing.items() if not st.is_dir)
            d = _Dir(listing, names, {n: i for i, n in enumerate(names)})
            self._dirs[parent] = d
            while len(self._dirs) > MAX_DIRS:
                self._dirs.popitem(last=False)
        self._dirs.move_to_end(parent)
        return d
