"""Segment files of the block store: mid-sized blocks appended to one file, holes punched on
eviction, never zeros served for a block removed meanwhile, crash leftovers swept."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from unionstore.cache import segments
from unionstore.cache import store as store_module
from unionstore.cache.store import BlockStore

KB100 = 100_000


def segment_files(folder: Path) -> list[Path]:
    return sorted((folder / segments.FOLDER).glob("*" + segments.SUFFIX))


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_evicted_blocks_free_their_space_and_empty_full_segments_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "SEGMENT_BYTES", 4 * KB100)
    store = BlockStore(tmp_path, 1 << 30)
    bodies = {f"k{i}": os.urandom(KB100) for i in range(10)}
    for i, (key, body) in enumerate(bodies.items()):
        store.put(key, body, f"file{i % 2}")
    assert len(segment_files(tmp_path)) == 3  # 4 + 4 + 2 blocks
    assert all(store.get(k) == v for k, v in bodies.items())
    before = sum(allocated(p) for p in segment_files(tmp_path))

    assert store.evict_file("file0") == 5
    after = sum(allocated(p) for p in segment_files(tmp_path))
    assert before - after >= 5 * KB100  # the holes free the evicted blocks' space
    assert [store.get(k) == v for k, v in bodies.items()] == [False, True] * 5

    store.evict_file("file1")
    # the two full segments are gone; the one still taking appends stays
    assert len(segment_files(tmp_path)) == 1
    store.put("again", bodies["k0"], "f")
    assert store.get("again") == bodies["k0"]
    store.close()


def test_a_block_removed_while_it_is_read_is_a_miss_not_zeros(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader looked the row up, then another process evicted the block and punched
    its range before the bytes were read: the read must come back as a miss."""
    store = BlockStore(tmp_path, 1 << 30)
    store.put("k", os.urandom(KB100), "f")
    other = BlockStore(tmp_path, 1 << 30)
    real_read = store_module._read_file

    def evicted_meanwhile(path: str, lo: int, hi: int | None) -> bytes | None:
        assert other.evict_file("f") == 1
        got = real_read(path, lo, hi)
        assert hi is not None and got == bytes(hi - lo)  # what the reader would have served
        return got

    monkeypatch.setattr(store_module, "_read_file", evicted_meanwhile)
    assert store.read("k") is None
    other.close()
    store.close()


def test_removals_inside_a_transaction_wait_for_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that evicts older blocks to make room must not punch their holes before the
    batch commits: until then other readers still see the rows."""
    store = BlockStore(tmp_path, 3 * KB100 + 200_000, cull_limit=10)
    store.put_tagged((f"old{i}", os.urandom(KB100), "old") for i in range(3))
    punched: list[bool] = []
    real_punch = store._disk.segments.punch

    def punch(segment: str, ranges: list[tuple[int, int]]) -> None:
        punched.append(store._cache._txn_id is not None)  # a transaction still open?
        real_punch(segment, ranges)

    monkeypatch.setattr(store._disk.segments, "punch", punch)
    store.put_tagged((f"new{i}", os.urandom(KB100), "new") for i in range(3))
    assert punched and not any(punched)
    keys = [f"{age}{i}" for age in ("old", "new") for i in range(3)]
    assert [store.contains(k) for k in keys].count(False) == len(punched)
    store.close()


def test_sweep_removes_what_a_crash_left_and_leaves_young_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "SEGMENT_BYTES", 3 * KB100)
    store = BlockStore(tmp_path, 1 << 30)
    kept = os.urandom(KB100)
    store.put("kept", kept, "f")
    # a crash between appends and their commits: bytes no row points at
    store._disk.segments.append(os.urandom(KB100))
    store._disk.segments.append(os.urandom(KB100))
    (full,) = segment_files(tmp_path)
    store._disk.segments.append(os.urandom(KB100))  # starts a segment no row points at
    unreferenced = next(p for p in segment_files(tmp_path) if p != full)
    young = tmp_path / segments.FOLDER / ("0" * 16 + segments.SUFFIX)
    young.write_bytes(b"y" * 100)
    for old in (full, unreferenced):
        os.utime(old, (1, 1))
    before = allocated(full)

    store.sweep_orphans()
    assert not unreferenced.exists() and young.exists()
    assert before - allocated(full) >= 2 * KB100  # the two orphan ranges freed
    assert store.get("kept") == kept
    store.close()


def test_appends_from_threads_never_overlap(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, 1 << 30)
    bodies = {f"t{t}-{i}": os.urandom(40_000 + t) for t in range(4) for i in range(25)}

    def writer(t: int) -> None:
        for i in range(25):
            key = f"t{t}-{i}"
            store.put(key, bodies[key], "f")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(store.get(k) == v for k, v in bodies.items())
    store.close()


def test_a_batch_that_fails_frees_nothing_its_rows_still_point_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch replaces a block, then fails (the disk is full): the rollback brings the old
    row back, so the old range must keep its bytes."""
    store = BlockStore(tmp_path, 1 << 30)
    old = os.urandom(KB100)
    store.put("a", old, "f")
    real_append = store._disk.segments.append
    calls = []

    def full_disk(data: bytes) -> str:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_append(data)

    monkeypatch.setattr(store._disk.segments, "append", full_disk)
    with pytest.raises(OSError):
        store.put_tagged([("a", os.urandom(KB100), "f"), ("b", os.urandom(KB100), "f")])
    monkeypatch.undo()
    assert store.read("a") == old and not store.contains("b")
    store.put_tagged([("c", os.urandom(KB100), "f")])  # nothing deferred is left to free
    assert store.read("a") == old
    store.close()


class NoHoles:
    """A file system without hole punching, as the segments see it."""

    @staticmethod
    def fallocate(*args: object) -> int:
        return -1


def test_without_hole_punching_blocks_are_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "_libc", NoHoles())
    store = BlockStore(tmp_path, 1 << 30)
    body = os.urandom(KB100)
    store.put("k", body, "f")
    assert segment_files(tmp_path) == [] and len(list(tmp_path.rglob("*.val"))) == 1
    assert store.read("k") == body
    store.close()


def test_a_failed_punch_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = BlockStore(tmp_path, 1 << 30)
    store.put_tagged((f"k{i}", os.urandom(KB100), f"t{i}") for i in range(2))
    monkeypatch.setattr(segments, "_libc", NoHoles())
    assert store.evict_file("t0") == 1 and store.evict_file("t1") == 1
    assert "cannot free space" in caplog.text
    store.close()


def test_a_segment_deleted_under_a_writer_is_not_written_to(tmp_path: Path) -> None:
    """A sweep by another process may delete the segment an idle process still appends
    to; its next block goes to a new segment, not into the deleted file."""
    store = BlockStore(tmp_path, 1 << 30)
    store.put("a", os.urandom(KB100), "f")
    (first,) = segment_files(tmp_path)
    first.unlink()
    body = os.urandom(KB100)
    store.put("b", body, "f")
    assert store.read("b") == body and segment_files(tmp_path) != [first]
    store.close()
