"""Segment files: where the block store keeps mid-sized blocks (a whole small file, the tail
of a large one), appended one after another instead of one file each.

Why: a cold 100 KB file is one block. As a file of its own it cost 0.2-1 ms of CPU on this
ext4 (creating the file dominates); inline in SQLite ~0.4 ms (the bytes go through the WAL
page by page, then again at the checkpoint, with an fdatasync). Appended to an open segment
it costs ~0.05 ms, the write itself. Measured per 100 KB block, 16 to a transaction:
0.39-0.42 ms inline against 0.08-0.12 ms appended.

How a block lives here:

- Each process appends to a segment of its own (``packs/<random>.pk``), at offsets aligned
  to 4 KiB, under a lock; at ``SEGMENT_BYTES`` it starts a new one. The index row names the
  block ``packs/<segment>.pk:<offset>:<length>`` (:func:`location`), so the segment is never
  rewritten: the bytes at a location never change while a row points at them.
- Removing a block punches a hole over its range (the disk space is freed at once); a full
  segment with no data left is deleted. Removal must follow the commit that deleted the row
  (:class:`unionstore.cache.store.BlockDisk` defers it when a transaction is open), and a
  reader checks that the row still names the same location after reading, so a hole
  punched meanwhile is a miss, never zeros served as data.
- A crash between the append and the commit, or a batch that rolled back, leaves bytes no
  row points at. At start, :func:`sweep` deletes segments no row points at (left alone for
  ``min_age`` seconds: a younger one may be a live process's), and punches the
  unreferenced ranges of full ones left alone for a day. What a process's last, partly
  filled segment holds that way stays until its other blocks are evicted: at most one
  segment's worth per process that ended.
- Only where holes can be punched (:meth:`Segments.usable` asks the file system once);
  elsewhere blocks are files of their own, as before.
- No fsync, as for the block files: the cache is rebuilt from the origin, not recovered.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable

log = logging.getLogger("unionstore.cache.segments")

FOLDER = "packs"
SUFFIX = ".pk"
SEGMENT_BYTES = 64 << 20  # a segment takes no appends once this long
ALIGN = 4096  # blocks start on filesystem blocks, so a punched hole frees whole blocks
GAP_AGE = 86400.0  # a full segment's unreferenced ranges are freed at start after this long
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def location(segment: str, offset: int, length: int) -> str:
    return f"{segment}:{offset}:{length}"


def parse(filename: str) -> tuple[str, int, int] | None:
    """``(segment, offset, length)`` of a block kept in a segment; None for a block file."""
    segment, sep, rest = filename.partition(":")
    if not sep:
        return None
    offset, _, length = rest.partition(":")
    return segment, int(offset), int(length)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``[offset, offset + length)`` (rounded up to whole blocks), keeping the size."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, _aligned(length)):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _has_data(fd: int) -> bool:
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
    return True


class Segments:
    """The segment files under one block-store folder, as seen by one process."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._fd = -1
        self._name = ""
        self._pid = 0
        self._size = 0  # bytes written to the current segment, unpadded
        self._usable: bool | None = None  # can this folder's file system punch holes?
        self._warned = False

    def usable(self) -> bool:
        """Whether blocks may go to segments here: only where holes can be punched, or an
        evicted block's space would stay taken until its whole segment is unused (NFS before
        4.2, many FUSE file systems). Asked of the file system once."""
        if self._usable is None:
            folder = os.path.join(self.directory, FOLDER)
            probe = os.path.join(folder, f"probe-{os.getpid()}-{os.urandom(4).hex()}")
            try:
                os.makedirs(folder, exist_ok=True)
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                try:
                    os.pwrite(fd, bytes(ALIGN), 0)
                    _punch_hole(fd, 0, ALIGN)
                    self._usable = True
                finally:
                    os.close(fd)
                    os.unlink(probe)
            except OSError:
                self._usable = False
            if not self._usable:
                log.warning("%s cannot punch holes: blocks are stored as files", self.directory)
        return self._usable

    def append(self, data: bytes) -> str:
        """Write ``data`` at the end of this process's segment; return its location."""
        with self._lock:
            if self._pid != os.getpid() or self._size >= SEGMENT_BYTES or self._unlinked():
                self._start()
            offset = _aligned(self._size)
            view = memoryview(data)
            done = 0
            while done < len(view):  # a regular file takes it all at once, bar ENOSPC
                done += os.pwrite(self._fd, view[done:], offset + done)
            self._size = offset + len(data)
            return location(self._name, offset, len(data))

    def _unlinked(self) -> bool:
        """The current segment was deleted under us (a sweep by a process that started
        while this one was idle): appends there would be lost."""
        return os.fstat(self._fd).st_nlink == 0

    def _start(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # in a forked child: its copy only
            self._fd = -1
        folder = os.path.join(self.directory, FOLDER)
        os.makedirs(folder, exist_ok=True)
        name = f"{FOLDER}/{os.urandom(8).hex()}{SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._fd = os.open(os.path.join(self.directory, name), flags, 0o666)
        self._name, self._pid, self._size = name, os.getpid(), 0

    def punch(self, segment: str, ranges: Iterable[tuple[int, int]]) -> None:
        """Free ``(offset, length)`` ranges of a segment; delete it once it is full and holds
        no data. Never raises (diskcache's removals do not; the rest of a batch's must still
        run): a segment already gone is fine (another process deleted it), other failures
        are logged once and cost the space."""
        path = os.path.join(self.directory, segment)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._failed(segment, exc)
            return
        try:
            for offset, length in ranges:
                _punch_hole(fd, offset, length)
            if os.fstat(fd).st_size >= SEGMENT_BYTES and not _has_data(fd):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        except OSError as exc:
            self._failed(segment, exc)
        finally:
            os.close(fd)

    def _failed(self, segment: str, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            log.warning("cannot free space in %s/%s: %s", self.directory, segment, exc)


def sweep(segments: Segments, filenames: Iterable[str], min_age: float) -> int:
    """Delete segments no index row points at, among those untouched for ``min_age``
    seconds, and free the unreferenced ranges of full ones untouched for a day (an append
    waits for the index's write lock before its row commits: a range must not be freed in
    that window). Returns the segments deleted."""
    used: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for name in filenames:
        where = parse(name)
        if where is not None:
            used[where[0]].append(where[1:])
    folder = os.path.join(segments.directory, FOLDER)
    try:
        names = [n for n in os.listdir(folder) if n.endswith(SUFFIX)]
    except FileNotFoundError:
        return 0
    now, removed = time.time(), 0
    for name in names:
        segment = f"{FOLDER}/{name}"
        path = os.path.join(segments.directory, segment)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        age = now - st.st_mtime
        if age <= min_age:
            continue
        if segment not in used:
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                segments._failed(segment, exc)
        elif st.st_size >= SEGMENT_BYTES and age > max(min_age, GAP_AGE):
            segments.punch(segment, _gaps(used[segment], st.st_size))
    return removed


def _gaps(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The parts of ``[0, size)`` (in whole aligned blocks) outside ``ranges``."""
    gaps, at = [], 0
    for offset, length in sorted(ranges):
        if offset > at:
            gaps.append((at, offset - at))
        at = max(at, _aligned(offset + length))
    if at < size:
        gaps.append((at, size - at))
    return gaps
