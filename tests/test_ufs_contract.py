"""The UFS contract (unionstore/ufs/base.py), checked against every driver on a real backend.

Like fsspec's ``tests/abstract``: :class:`UfsContract` holds the tests; one subclass per driver
provides the ``ufs`` fixture (a driver rooted at a fresh, unique, existing folder), ``raw_names``
(what is really in a folder of the backend, hidden files included) and ``unreachable`` (a driver
whose backend cannot be reached, to show that bad keys are refused before any I/O).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import hdfs_native
import pytest

from unionstore.errors import (
    AccessDenied,
    InvalidArgument,
    InvalidKey,
    NotFound,
    UnionstoreError,
)
from unionstore.ufs import open_ufs
from unionstore.ufs.base import TMP_PREFIX, FileStatus, UnderFileSystem
from unionstore.ufs.hdfs import unsigned_order

# The names the brief asks for: ASCII punctuation, case, non-ASCII (2- and 3-byte UTF-8), a space.
ORDER_NAMES = ["a", "a.b", "a0", "A", "é", "a b", "Z", "中文", "x~y", "aé", "ab"]
BAD_KEYS = ["../x", "a/../b", "/abs", "a//b", "a/", ".", "a/./b", "a\x00b", ".unionstore-tmp-1"]
MiB = 1 << 20


# ---- helpers -----------------------------------------------------------------------------------
async def put(ufs: UnderFileSystem, path: str, data: bytes, piece: int = MiB) -> None:
    w = await ufs.open_writer(path)
    try:
        for start in range(0, len(data), piece):
            await w.write(data[start : start + piece])
    except BaseException:
        await w.abort()
        raise
    await w.close()


async def chunks(ufs: UnderFileSystem, path: str, offset: int, length: int) -> list[bytes]:
    return [c async for c in ufs.read_range(path, offset, length)]


async def read(ufs: UnderFileSystem, path: str, offset: int = 0, length: int = 1 << 40) -> bytes:
    return b"".join(await chunks(ufs, path, offset, length))


async def listing(ufs: UnderFileSystem, path: str) -> list[FileStatus]:
    return [st async for st in ufs.list_dir(path)]


async def names(ufs: UnderFileSystem, path: str) -> list[str]:
    return [st.name for st in await listing(ufs, path)]


async def drain(it: AsyncIterator[Any]) -> None:
    async for _ in it:
        pass


_raw_clients: dict[str, hdfs_native.AsyncClient] = {}


def raw_hdfs(url: str) -> hdfs_native.AsyncClient:
    """One hdfs-native client per cluster, kept for the whole session: dropping a used client
    can deadlock the process (see unionstore/ufs/hdfs.py)."""
    if url not in _raw_clients:
        _raw_clients[url] = hdfs_native.AsyncClient(url)
    return _raw_clients[url]


def pattern(size: int, seed: int = 0) -> bytes:
    """Incompressible, reproducible bytes (a shifted pattern would hide off-by-one reads)."""
    return random.Random(seed).randbytes(size)


# ---- the contract ----------------------------------------------------------------------------
class UfsContract:
    #: how many children the listing-laziness test creates
    many_files: ClassVar[int] = 300

    async def raw_names(self, ufs: UnderFileSystem, path: str) -> list[str]:
        """Every name the backend holds directly under ``path`` (nothing hidden)."""
        raise NotImplementedError

    def unreachable(self) -> UnderFileSystem:
        """A driver of this kind whose backend cannot be reached."""
        raise NotImplementedError

    # stat
    async def test_stat_file(self, ufs: UnderFileSystem) -> None:
        await put(ufs, "f.txt", b"hello")
        st = await ufs.stat("f.txt")
        assert (st.name, st.is_dir, st.size) == ("f.txt", False, 5)
        assert abs(st.mtime_ns - time.time_ns()) < 3600 * 10**9

    async def test_stat_dir(self, ufs: UnderFileSystem) -> None:
        await ufs.mkdir("made")
        await put(ufs, "implied/x", b"1")
        for d in ("made", "implied", ""):
            st = await ufs.stat(d)
            assert st.is_dir and st.size == 0, d
        assert (await ufs.stat("implied")).name == "implied"

    async def test_stat_missing(self, ufs: UnderFileSystem) -> None:
        await put(ufs, "f", b"x")
        for missing in ("nope", "nope/deeper", "f/child"):
            with pytest.raises(NotFound):
                await ufs.stat(missing)

    # list_dir
    async def test_list_dir_order(self, ufs: UnderFileSystem) -> None:
        for n in ORDER_NAMES:
            await put(ufs, f"d/{n}", n.encode())
        await put(ufs, "d/m/inner", b"i")
        got = await listing(ufs, "d")
        expected = sorted([*ORDER_NAMES, "m"])
        assert expected == sorted(expected, key=lambda n: n.encode())  # code point == UTF-8 order
        assert [st.name for st in got] == expected
        by_name = {st.name: st for st in got}
        assert by_name["m"].is_dir
        assert not by_name["中文"].is_dir and by_name["中文"].size == len("中文".encode())
        assert await names(ufs, "d/m") == ["inner"]

    async def test_list_dir_empty_file_missing(self, ufs: UnderFileSystem) -> None:
        await ufs.mkdir("empty")
        assert await listing(ufs, "empty") == []
        await put(ufs, "f", b"x")
        for bad in ("f", "missing", "missing/deeper"):
            with pytest.raises(NotFound):
                await drain(ufs.list_dir(bad))

    async def test_list_dir_first_child_of_many(self, ufs: UnderFileSystem) -> None:
        """Correctness only: taking the first child and stopping works. (Whether the driver
        fetched everything first is measured outside the test suite; no timing here.)"""
        await self.make_many(ufs, "many", self.many_files)
        it = ufs.list_dir("many")
        try:
            first = await anext(it)
        finally:
            await it.aclose()  # type: ignore[attr-defined]
        assert first.name == "f00000"
        assert len(await names(ufs, "many")) == self.many_files

    async def make_many(self, ufs: UnderFileSystem, folder: str, count: int) -> None:
        for i in reversed(range(count)):  # created out of order on purpose
            await put(ufs, f"{folder}/f{i:05d}", b"")

    # read_range
    async def test_read_range_offsets(self, ufs: UnderFileSystem) -> None:
        data = pattern(1000)
        await put(ufs, "r", data)
        for offset, length, want in [
            (0, 10, data[:10]),
            (0, 1000, data),
            (0, 5000, data),
            (500, 100, data[500:600]),
            (990, 100, data[990:]),
            (999, 1, data[999:]),
            (1000, 10, b""),
            (5000, 10, b""),
            (0, 0, b""),
            (500, 0, b""),
        ]:
            assert await read(ufs, "r", offset, length) == want, (offset, length)

    async def test_read_block(self, ufs: UnderFileSystem) -> None:
        data = pattern(3 * MiB + 11, seed=3)
        await put(ufs, "blk", data)
        for offset, length in [(0, MiB), (MiB, MiB), (3 * MiB, MiB), (0, 0), (len(data), 5)]:
            got = await ufs.read_block("blk", offset, length)
            assert got == data[offset : offset + length], (offset, length)
        assert await ufs.read_block("blk", 10 * MiB, 5) == b""
        await ufs.mkdir("dir")
        for bad in ("missing", "dir"):
            with pytest.raises(NotFound):
                await ufs.read_block(bad, 0, 10)
        with pytest.raises(InvalidArgument):
            await ufs.read_block("blk", -1, 10)

    async def test_read_range_5mib_whole_in_bounded_chunks(self, ufs: UnderFileSystem) -> None:
        data = pattern(5 * MiB + 17, seed=5)
        await put(ufs, "big", data)
        got = await chunks(ufs, "big", 0, len(data))
        assert b"".join(got) == data
        assert all(0 < len(c) <= ufs.chunk_size for c in got)
        assert len(got) >= len(data) // ufs.chunk_size

    async def test_read_range_missing_or_dir(self, ufs: UnderFileSystem) -> None:
        await ufs.mkdir("dir")
        for bad in ("missing", "dir"):
            with pytest.raises(NotFound):
                await read(ufs, bad)

    async def test_read_range_bad_range(self, ufs: UnderFileSystem) -> None:
        await put(ufs, "r", b"abc")
        with pytest.raises(InvalidArgument):
            await read(ufs, "r", -1, 2)

    # writers
    async def test_writer_publishes_on_close_only(self, ufs: UnderFileSystem) -> None:
        data = pattern(3 * MiB, seed=1)
        w = await ufs.open_writer("sub/target")
        try:
            await w.write(data[: 2 * MiB])
            await w.write(data[2 * MiB :])
            with pytest.raises(NotFound):
                await ufs.stat("sub/target")
            with pytest.raises(NotFound):
                await read(ufs, "sub/target")
            assert "target" not in await self.visible_names(ufs, "sub")
            assert not any(n.startswith(TMP_PREFIX) for n in await self.visible_names(ufs, "sub"))
        except BaseException:
            await w.abort()
            raise
        await w.close()
        assert (await ufs.stat("sub/target")).size == len(data)
        assert await read(ufs, "sub/target") == data
        assert await names(ufs, "sub") == ["target"]
        assert await self.raw_names(ufs, "sub") == ["target"]  # no temp left behind

    async def visible_names(self, ufs: UnderFileSystem, path: str) -> list[str]:
        try:
            return await names(ufs, path)
        except NotFound:  # an object store has no folder until something is in it
            return []

    @pytest.mark.parametrize("size", [10, 9 * MiB], ids=["small", "9MiB"])
    async def test_writer_abort_leaves_nothing(self, ufs: UnderFileSystem, size: int) -> None:
        await put(ufs, "keep/old", b"old")
        w = await ufs.open_writer("keep/new")
        await w.write(pattern(size))
        await w.abort()
        w = await ufs.open_writer("keep/old")
        await w.write(pattern(size))
        await w.abort()
        with pytest.raises(NotFound):
            await ufs.stat("keep/new")
        assert await read(ufs, "keep/old") == b"old"
        assert await names(ufs, "keep") == ["old"]
        assert await self.raw_names(ufs, "keep") == ["old"]

    async def test_writer_overwrites(self, ufs: UnderFileSystem) -> None:
        await put(ufs, "o", b"first version")
        await put(ufs, "o", b"second")
        assert await read(ufs, "o") == b"second"
        assert (await ufs.stat("o")).size == 6

    async def test_empty_file(self, ufs: UnderFileSystem) -> None:
        await put(ufs, "empty", b"")
        assert (await ufs.stat("empty")).size == 0
        assert await read(ufs, "empty") == b""

    async def test_large_file_streams_through(self, ufs: UnderFileSystem) -> None:
        size, piece = 20 * MiB, 256 * 1024
        rng = random.Random(20)
        want = hashlib.sha256()
        w = await ufs.open_writer("large/blob")
        for _ in range(size // piece):
            block = rng.randbytes(piece)
            want.update(block)
            await w.write(block)
        await w.close()
        got, total, biggest = hashlib.sha256(), 0, 0
        async for c in ufs.read_range("large/blob", 0, size):
            got.update(c)
            total += len(c)
            biggest = max(biggest, len(c))
        assert total == size and got.hexdigest() == want.hexdigest()
        assert biggest <= ufs.chunk_size
        tail = await read(ufs, "large/blob", size - 3 * MiB - 5, 2 * MiB)
        assert len(tail) == 2 * MiB

    # rename / delete / mkdir
    async def test_rename_overwrites(self, ufs: UnderFileSystem) -> None:
        await put(ufs, "src", b"new content")
        await put(ufs, "dst", b"old")
        await ufs.rename("src", "dst")
        assert await read(ufs, "dst") == b"new content"
        with pytest.raises(NotFound):
            await ufs.stat("src")
        await ufs.rename("dst", "deep/er/moved")
        assert await read(ufs, "deep/er/moved") == b"new content"
        assert await names(ufs, "") == ["deep"]
        with pytest.raises(NotFound):
            await ufs.rename("missing", "elsewhere")

    async def test_delete(self, ufs: UnderFileSystem) -> None:
        await put(ufs, "f", b"x")
        await ufs.delete("f")
        with pytest.raises(NotFound):
            await ufs.stat("f")
        with pytest.raises(NotFound):
            await ufs.delete("f")
        await put(ufs, "tree/a/b", b"1")
        await put(ufs, "tree/c", b"2")
        with pytest.raises(InvalidArgument):
            await ufs.delete("tree")
        assert await read(ufs, "tree/a/b") == b"1"
        await ufs.delete("tree", recursive=True)
        with pytest.raises(NotFound):
            await ufs.stat("tree")
        await ufs.mkdir("hollow")
        await ufs.delete("hollow")
        with pytest.raises(NotFound):
            await ufs.stat("hollow")

    async def test_mkdir_nested(self, ufs: UnderFileSystem) -> None:
        await ufs.mkdir("p/q/r")
        await ufs.mkdir("p/q/r")  # existing is fine
        for d in ("p", "p/q", "p/q/r"):
            assert (await ufs.stat(d)).is_dir
        assert await names(ufs, "p") == ["q"]
        assert await listing(ufs, "p/q/r") == []
        await put(ufs, "p/file", b"x")
        with pytest.raises(InvalidKey):
            await ufs.mkdir("p/file")

    # keys
    @pytest.mark.parametrize("bad", BAD_KEYS)
    async def test_bad_keys_refused_before_io(self, bad: str) -> None:
        ufs = self.unreachable()
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: ufs.stat(bad),
            lambda: drain(ufs.list_dir(bad)),
            lambda: drain(ufs.read_range(bad, 0, 10)),
            lambda: ufs.read_block(bad, 0, 10),
            lambda: ufs.open_writer(bad),
            lambda: ufs.mkdir(bad),
            lambda: ufs.delete(bad, recursive=True),
            lambda: ufs.rename(bad, "ok"),
            lambda: ufs.rename("ok", bad),
        ]
        for call in calls:
            with pytest.raises(InvalidKey):
                await call()
        await ufs.close()


# ---- drivers --------------------------------------------------------------------------------
class TestLocalUfs(UfsContract):
    @pytest.fixture
    async def ufs(self, tmp_path: Path) -> AsyncIterator[UnderFileSystem]:
        root = tmp_path / "root"
        root.mkdir()
        self.root = root
        ufs = open_ufs(f"file://{root}")
        yield ufs
        await ufs.close()

    async def raw_names(self, ufs: UnderFileSystem, path: str) -> list[str]:
        return sorted(os.listdir(self.root / path))

    def unreachable(self) -> UnderFileSystem:
        return open_ufs(f"file:///nonexistent-{uuid.uuid4().hex}")

    async def test_symlink_out_of_root_is_refused(
        self, ufs: UnderFileSystem, tmp_path: Path
    ) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "secret").write_bytes(b"secret")
        (self.root / "escape").symlink_to(outside)
        (self.root / "escape-file").symlink_to(outside / "secret")
        (self.root / "inside").symlink_to(self.root)
        await put(ufs, "plain", b"p")
        for path in ("escape", "escape/secret", "escape-file"):
            with pytest.raises(NotFound):
                await ufs.stat(path)
        with pytest.raises(NotFound):
            await read(ufs, "escape-file")
        with pytest.raises(NotFound):
            await drain(ufs.list_dir("escape"))
        with pytest.raises(InvalidKey):
            await ufs.open_writer("escape/new")
        assert await names(ufs, "") == ["inside", "plain"]  # links that leave are not listed
        assert await read(ufs, "inside/plain") == b"p"
        assert (outside / "secret").read_bytes() == b"secret"


class TestHdfsUfs(UfsContract):
    many_files = 3000

    @pytest.fixture
    async def ufs(self, hdfs: Any) -> AsyncIterator[UnderFileSystem]:
        self.hdfs = hdfs
        self.root = f"/ufs-contract/{uuid.uuid4().hex}"
        await raw_hdfs(hdfs.url).mkdirs(self.root, 0o755, True)
        ufs = open_ufs(f"{hdfs.url}{self.root}")
        yield ufs
        await ufs.close()

    async def raw_names(self, ufs: UnderFileSystem, path: str) -> list[str]:
        client = raw_hdfs(self.hdfs.url)
        full = f"{self.root}/{path}" if path else self.root
        return sorted([st.path.rsplit("/", 1)[1] async for st in client.list_status(full)])

    def unreachable(self) -> UnderFileSystem:
        return open_ufs("hdfs://127.0.0.1:1/nowhere")

    async def make_many(self, ufs: UnderFileSystem, folder: str, count: int) -> None:
        # Plain creates (no temp + rename) keep this at a few seconds.
        client = raw_hdfs(self.hdfs.url)
        await client.mkdirs(f"{self.root}/{folder}", 0o755, True)
        for i in reversed(range(count)):
            w = await client.create(f"{self.root}/{folder}/f{i:05d}")
            await w.close()

    async def test_user_option_sets_owner(self, hdfs: Any) -> None:
        shared = f"/ufs-contract/shared-{uuid.uuid4().hex}"
        admin = raw_hdfs(hdfs.url)
        await admin.mkdirs(shared, 0o777, True)
        await admin.set_permission(shared, 0o1777)  # sticky: only an owner deletes
        alice = open_ufs(f"{hdfs.url}{shared}", {"user": "alice"})
        bob = open_ufs(f"{hdfs.url}{shared}", {"user": "bob"})
        default = open_ufs(f"{hdfs.url}{shared}")
        before = os.environ.get("HADOOP_USER_NAME")
        await put(alice, "by-alice", b"a")
        await put(bob, "by-bob", b"b")
        await put(default, "by-default", b"d")
        assert os.environ.get("HADOOP_USER_NAME") == before  # restored
        assert (await alice.stat("by-alice")).owner == "alice"
        assert (await default.stat("by-bob")).owner == "bob"
        assert (await admin.get_file_info(f"{shared}/by-alice")).owner == "alice"
        # and the HDFS permission checks apply to that user
        await admin.set_permission(f"{shared}/by-alice", 0o600)
        with pytest.raises(AccessDenied):
            await read(bob, "by-alice")
        with pytest.raises(AccessDenied):
            await bob.delete("by-alice")
        assert await read(alice, "by-alice") == b"a"
        for u in (alice, bob, default):
            await u.close()

    @pytest.mark.slow
    async def test_user_survives_namenode_restart(self, hdfs: Any) -> None:
        """hdfs-native reconnects on its own after the NameNode restarts, as whoever
        HADOOP_USER_NAME names at that moment (here: nobody, so the OS user, a superuser).
        Files the driver creates afterwards must still belong to its user."""
        shared = f"/ufs-contract/restart-{uuid.uuid4().hex}"
        admin = raw_hdfs(hdfs.url)
        await admin.mkdirs(shared, 0o777, True)
        await admin.set_permission(shared, 0o777)
        carol = open_ufs(f"{hdfs.url}{shared}", {"user": "carol"})
        await put(carol, "before", b"1")
        hdfs.stop_namenode()
        try:
            with pytest.raises(UnionstoreError) as info:  # the NameNode is down: 503
                await carol.stat("before")
            assert info.value.status == 503
        finally:
            hdfs.start_namenode()
        await put(carol, "after-error", b"2")
        hdfs.stop_namenode()  # and once more, with no call while it is down
        hdfs.start_namenode()
        await put(carol, "after-silent", b"3")
        for name in ("before", "after-error", "after-silent"):
            assert (await admin.get_file_info(f"{shared}/{name}")).owner == "carol", name

    async def test_hdfs_order_is_fixed_up(self, ufs: UnderFileSystem) -> None:
        """HDFS lists in signed-byte order; the driver must give code-point order."""
        for n in ORDER_NAMES:
            await put(ufs, f"o/{n}", b"")
        raw = await self.raw_names(ufs, "o")
        assert [st.name for st in await listing(ufs, "o")] == sorted(raw)
        client = raw_hdfs(self.hdfs.url)
        listed = client.list_status(f"{self.root}/o")
        hdfs_order = [st.path.rsplit("/", 1)[1] async for st in listed]
        assert hdfs_order != sorted(hdfs_order)  # so the fix-up above was needed


class TestS3Ufs(UfsContract):
    bucket: ClassVar[str] = f"ufs-contract-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    async def ufs(self, moto_s3: Any) -> AsyncIterator[UnderFileSystem]:
        self.s3 = moto_s3.client()
        with contextlib.suppress(self.s3.exceptions.BucketAlreadyOwnedByYou):
            self.s3.create_bucket(Bucket=self.bucket)
        self.prefix = f"t-{uuid.uuid4().hex}"
        ufs = open_ufs(f"s3://{self.bucket}/{self.prefix}", self.options(moto_s3))
        yield ufs
        await ufs.close()

    @staticmethod
    def options(moto_s3: Any) -> dict[str, str]:
        return {
            "endpoint": moto_s3.endpoint,
            "access_key": moto_s3.access_key,
            "secret_key": moto_s3.secret_key,
            "region": moto_s3.region,
        }

    async def raw_names(self, ufs: UnderFileSystem, path: str) -> list[str]:
        prefix = f"{self.prefix}/{path}/" if path else f"{self.prefix}/"
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        )
        found: set[str] = set()
        for page in pages:
            found.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
            common = page.get("CommonPrefixes", [])
            found.update(p["Prefix"][len(prefix) :].rstrip("/") for p in common)
        found.discard("")  # the folder's own marker object
        return sorted(found)

    def unreachable(self) -> UnderFileSystem:
        return open_ufs(
            "s3://nowhere/x",
            {"endpoint": "http://127.0.0.1:1", "access_key": "k", "secret_key": "s"},
        )

    async def test_missing_bucket(self, moto_s3: Any) -> None:
        ufs = open_ufs(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}", self.options(moto_s3))
        with pytest.raises(NotFound):
            await ufs.stat("")
        with pytest.raises(NotFound):
            await drain(ufs.list_dir(""))
        with pytest.raises(NotFound):
            await ufs.stat("k")

    async def test_unreachable_endpoint_is_service_unavailable(self) -> None:
        ufs = self.unreachable()
        with pytest.raises(UnionstoreError) as info:
            await ufs.stat("key")
        assert info.value.status == 503


# ---- the signed -> unsigned re-ordering used by the HDFS driver, without a server -------------
def _signed_key(name: str) -> list[int]:
    return [b - 256 if b > 127 else b for b in name.encode()]


@pytest.mark.parametrize("seed", range(20))
async def test_unsigned_order_matches_sort(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["a", "b", "A", ".", " ", "~", "0", "é", "ü", "中", "文", "😀", "z"]
    found = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(200)}
    hdfs_order = sorted(found, key=_signed_key)

    async def feed() -> AsyncIterator[tuple[bytes, str]]:
        for n in hdfs_order:
            yield n.encode(), n

    assert [n async for n in unsigned_order(feed())] == sorted(found)


async def test_unsigned_order_streams_ascii_names() -> None:
    """All-ASCII names are released as soon as they arrive (nothing is held back)."""
    pulled: list[str] = []

    async def feed() -> AsyncIterator[tuple[bytes, str]]:
        for n in ["a", "b", "c", "d"]:
            pulled.append(n)
            yield n.encode(), n

    it = unsigned_order(feed())
    assert await anext(it) == "a"
    assert pulled == ["a"]
    await it.aclose()  # type: ignore[attr-defined]
