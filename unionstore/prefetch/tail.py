"""Follow a log file the way log4j writes it, and remember where we are.

Identity. A file is known by :class:`FileId`: its inode plus a hash of its first line, so a
recycled inode number is not taken for the file we were reading. A :class:`Position` is a
FileId plus a byte offset just after a complete line; only complete lines are handed out.

Rotation by rename (log4j's RollingFileAppender: ``log`` -> ``log.1`` -> ``log.2`` ...; the
daily appender's ``log.2026-11-23`` works the same). The follower keeps the file open, so it
reads the renamed file to its end before moving on, even if it was deleted meanwhile. When
the path names another inode, the next file is found in the *chain* (the path and every
``path.*``, newest first by mtime, numbered suffixes breaking ties): the file just newer than
ours. If several rotations happened between two polls, the follower walks them one by one.

Truncation (copytruncate, or an operator's ``> log``): same inode but shorter than our offset,
or a different first line: start again at 0.

Restart. :meth:`LogFollower.start` takes the persisted position, looks for its file in the
chain (by inode and first line, then by first line alone) and continues from the offset,
then walks the newer files. If the file is gone, it starts at the oldest file written after
it (``gaps`` counts that). Without a position it starts at the end of the current file.

:class:`Ledger` decides what may be persisted: the start of the oldest line still being
worked on (never past an event not yet delivered), plus the ids of lines finished after it,
so a restart neither replays those nor skips the unfinished ones. :func:`write_atomic`
writes the state file (tmp + fsync + rename + fsync of the folder).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the first line is hashed up to this many bytes
HEAD_BYTES = 4096
#: a "line" longer than this without a newline is cut and handed out (as garbage, usually)
MAX_LINE = 1 << 20
#: backups of RollingFileAppender (log.3) and DailyRollingFileAppender (log.2026-11-23[-13])
ROTATED_SUFFIX = re.compile(r"\.(\d+|\d{4}-\d\d(-\d\d)?(-\d\d)?(-\d\d)?)")


@dataclass(frozen=True, slots=True)
class FileId:
    inode: int
    head: str  # hash of the first line; "" while the file has no complete line

    @property
    def tag(self) -> str:
        return f"{self.inode}:{self.head[:8]}"


@dataclass(frozen=True, slots=True)
class Position:
    file: FileId
    offset: int
    mtime_ns: int = 0  # of the file when the position was taken (orders files if it is gone)

    def to_json(self) -> dict[str, Any]:
        return {
            "inode": self.file.inode,
            "head": self.file.head,
            "offset": self.offset,
            "mtime_ns": self.mtime_ns,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Position:
        return cls(
            FileId(int(raw["inode"]), str(raw["head"])), int(raw["offset"]), int(raw["mtime_ns"])
        )


@dataclass(frozen=True, slots=True)
class Line:
    data: bytes  # without the newline
    file: FileId
    start: int
    end: int  # just after the newline

    @property
    def id(self) -> str:
        return f"{self.file.tag}:{self.end}"


def _head_hash(first_line: bytes) -> str:
    return hashlib.sha1(first_line[:HEAD_BYTES], usedforsecurity=False).hexdigest()[:16]


def head_of(fd: int) -> str:
    data = os.pread(fd, HEAD_BYTES + 1, 0)
    nl = data.find(b"\n")
    if nl >= 0:
        return _head_hash(data[:nl])
    return _head_hash(data) if len(data) > HEAD_BYTES else ""


def _suffix_rank(path: Path, name: str) -> int:
    """Among files with equal mtimes: the path itself is newest, then log.1, log.2 ..."""
    if name == path.name:
        return 1 << 30
    m = re.fullmatch(re.escape(path.name) + r"\.(\d+)", name)
    return -int(m.group(1)) if m else 0


class LogFollower:
    """Hands out the complete lines of one log, across rotations and truncations."""

    def __init__(self, path: Path, *, chunk: int = 1 << 20) -> None:
        self.path = path
        self.chunk = chunk
        self._fd: int | None = None
        self._id = FileId(0, "")
        self._offset = 0  # just after the last line handed out
        self._buf = b""  # read past _offset, no newline yet
        self._started = False
        self.rotations = 0
        self.truncations = 0
        self.gaps = 0

    # ---- start and position ----------------------------------------------------------------
    def start(self, at: Position | None = None, *, from_start: bool = False) -> None:
        self._started = True
        if at is None:
            if self._open(self.path) and not from_start:
                self._offset = self._last_line_end()
            return
        if at.file.inode == 0:  # the log did not exist yet: all of it is new
            self._open(self.path)
            return
        chain = self._chain()
        found = [
            c
            for c in chain
            if c[1] == at.file.inode
            and (not at.file.head or self._head(c[0]) in (at.file.head, ""))
        ]
        found = found or [c for c in chain if at.file.head and self._head(c[0]) == at.file.head]
        if found and self._open(found[0][0], found[0][1]):
            if os.fstat(self._fd_or_fail()).st_size < at.offset:
                self.truncations += 1
            else:
                self._offset = at.offset
            return
        self.gaps += 1
        newer = [c for c in chain if c[2] >= at.mtime_ns]
        if newer:
            self._open(newer[-1][0], newer[-1][1])

    @property
    def position(self) -> Position:
        """Just after the last line handed out (inode 0: the log does not exist yet)."""
        mtime = os.fstat(self._fd).st_mtime_ns if self._fd is not None else 0
        return Position(self._id, self._offset, mtime)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ---- reading ---------------------------------------------------------------------------
    def poll(self, max_lines: int = 10_000) -> list[Line]:
        """The complete lines written since the last call (at most ``max_lines``)."""
        if not self._started:
            self.start()
        if self._fd is not None and self._id.head and head_of(self._fd) not in (self._id.head, ""):
            self.truncations += 1  # truncated and written past our offset since the last poll
            self._reset(self._fd, self._id.inode)
        lines: list[Line] = []
        while len(lines) < max_lines:
            if self._fd is None and not self._open(self.path):
                break
            if self._read(lines, max_lines):
                continue
            if not self._switch(lines):
                break
        return lines

    def _read(self, lines: list[Line], max_lines: int) -> bool:
        """Hand out buffered lines, else read on; True if anything came."""
        if self._take(lines, max_lines):
            return True
        data = os.pread(self._fd_or_fail(), self.chunk, self._offset + len(self._buf))
        if not data:
            return False
        self._buf += data
        self._take(lines, max_lines)
        return True

    def _take(self, lines: list[Line], max_lines: int) -> bool:
        n = len(lines)
        while len(lines) < max_lines:
            nl = self._buf.find(b"\n")
            if nl < 0 and len(self._buf) < MAX_LINE:
                break
            cut = nl if nl >= 0 else MAX_LINE - 1
            self._emit(lines, self._buf[:cut], cut + 1)
        return len(lines) > n

    def _emit(self, lines: list[Line], data: bytes, used: int) -> None:
        if self._offset == 0 and not self._id.head:
            self._id = FileId(self._id.inode, _head_hash(data))
        lines.append(Line(data, self._id, self._offset, self._offset + used))
        self._offset += used
        self._buf = self._buf[used:]

    def _switch(self, lines: list[Line]) -> bool:
        """At the end of our file: follow a rotation or a truncation. True if we moved."""
        fd = self._fd_or_fail()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # between log4j's rename and its create
        cur = os.fstat(fd)
        if st.st_ino == cur.st_ino:
            if cur.st_size < self._offset + len(self._buf):
                self.truncations += 1
                self._reset(fd, self._id.inode)
                return True
            return False
        if self._read(lines, len(lines) + 10_000):  # written just before the rename
            return True
        if self._buf:  # a last line without its newline: the file is final, hand it out
            self._emit(lines, self._buf, len(self._buf))
        for _ in range(5):
            nxt = self._successor(cur.st_ino, cur.st_mtime_ns)
            if nxt is None:
                return False
            if self._open(*nxt):
                self.rotations += 1
                return True
        return False

    def _successor(self, inode: int, mtime_ns: int) -> tuple[Path, int] | None:
        chain = self._chain()
        for i, (_, ino, _m) in enumerate(chain):
            if ino == inode:
                return (chain[i - 1][0], chain[i - 1][1]) if i > 0 else None
        newer = [(p, ino) for p, ino, m in chain if m >= mtime_ns]  # ours is gone
        return newer[-1] if newer else None

    def _chain(self) -> list[tuple[Path, int, int]]:
        """(path, inode, mtime_ns) of the log and its rotated files, newest first; listed
        until two listings agree, so a rotation in the middle does not confuse us."""
        previous: list[tuple[Path, int, int]] | None = None
        for _ in range(10):
            found: list[tuple[tuple[int, int], Path, int, int]] = []
            names = [self.path, *self.path.parent.glob(glob_escape(self.path.name) + ".*")]
            for p in names:
                if p != self.path and not ROTATED_SUFFIX.fullmatch(p.name[len(self.path.name) :]):
                    continue  # log.1.gz, log.swp, ...: not a log4j backup
                try:
                    st = os.stat(p)
                except FileNotFoundError:
                    continue
                rank = _suffix_rank(self.path, p.name)
                found.append(((st.st_mtime_ns, rank), p, st.st_ino, st.st_mtime_ns))
            found.sort(key=lambda f: f[0], reverse=True)
            chain = [(p, ino, m) for _, p, ino, m in found]
            if chain == previous:
                break
            previous = chain
        return previous or []

    # ---- files -----------------------------------------------------------------------------
    def _open(self, path: Path, inode: int | None = None) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        ino = os.fstat(fd).st_ino
        if inode is not None and ino != inode:  # renamed again meanwhile
            os.close(fd)
            return False
        self.close()
        self._fd = fd
        self._reset(fd, ino)
        return True

    def _reset(self, fd: int, inode: int) -> None:
        self._id = FileId(inode, head_of(fd))
        self._offset = 0
        self._buf = b""

    def _fd_or_fail(self) -> int:
        if self._fd is None:
            raise RuntimeError("no file open")
        return self._fd

    def _last_line_end(self) -> int:
        fd = self._fd_or_fail()
        size = os.fstat(fd).st_size
        back = min(size, MAX_LINE)
        tail = os.pread(fd, back, size - back)
        return size - back + tail.rfind(b"\n") + 1

    @staticmethod
    def _head(path: Path) -> str:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return "\x00missing"
        try:
            return head_of(fd)
        finally:
            os.close(fd)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


class Ledger:
    """Which lines of one log are being worked on, and what may be persisted.

    ``track`` a line when work for it starts, ``finish`` it when all of it was delivered.
    :meth:`checkpoint` gives the start of the oldest unfinished line (or the read position if
    none) and the ids of the lines finished after it. Lines finished in an earlier run come
    back in ``done``; :meth:`already_done` tells the reader to skip them once."""

    def __init__(self, start: Position, done: Iterable[str] = ()) -> None:
        self._lines: OrderedDict[str, tuple[Position, bool]] = OrderedDict()
        self._skip = set(done)
        self._read = start

    def already_done(self, line: Line) -> bool:
        if line.id not in self._skip:
            return False
        self._skip.discard(line.id)
        if self._lines:  # still behind an unfinished line: keep saying it is done
            self._lines[line.id] = (Position(line.file, line.start), True)
        return True

    def advance(self, pos: Position) -> None:
        """Everything before ``pos`` was read (and tracked if it needed work)."""
        self._read = pos
        if self._skip:
            tag = pos.file.tag + ":"
            self._skip = {
                s
                for s in self._skip
                if not (s.startswith(tag) and int(s[len(tag) :]) <= pos.offset)
            }

    def track(self, line: Line, mtime_ns: int = 0) -> None:
        self._lines[line.id] = (Position(line.file, line.start, mtime_ns), False)

    def finish(self, line_id: str) -> None:
        entry = self._lines.get(line_id)
        if entry is None:
            return
        self._lines[line_id] = (entry[0], True)
        while self._lines and next(iter(self._lines.values()))[1]:
            self._lines.popitem(last=False)

    @property
    def outstanding(self) -> int:
        return len(self._lines)

    def checkpoint(self) -> tuple[Position, list[str]]:
        if not self._lines:
            return self._read, sorted(self._skip)
        first = next(iter(self._lines.values()))[0]
        done = [lid for lid, (_, finished) in self._lines.items() if finished]
        return first, done + sorted(self._skip)


_tmp_ids = itertools.count()


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_tmp_ids)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
