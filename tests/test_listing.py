"""Listing in S3 order, lazily, across mounts: the namespace logic over the real local driver.

A counting wrapper (a UFS that wraps the real one) records how much of each directory the
lister pulled, so the cost claims (max-keys=1 touches one entry, a delimiter listing opens no
sub-directory) are asserted, not timed.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from unionstore.errors import InvalidArgument
from unionstore.namespace.listing import Lister
from unionstore.namespace.mounts import Mount
from unionstore.ufs.base import FileStatus, UnderFileSystem
from unionstore.ufs.local import LocalUfs


class CountingUfs(UnderFileSystem):
    """Wraps a real driver; counts list_dir calls and children pulled."""

    scheme = "count"

    def __init__(self, inner: UnderFileSystem) -> None:
        super().__init__(inner.uri)
        self.inner = inner
        self.listed: list[str] = []
        self.pulled = 0

    async def stat(self, path: str) -> FileStatus:
        return await self.inner.stat(path)

    async def list_dir(self, path: str) -> AsyncIterator[FileStatus]:  # type: ignore[override]
        self.listed.append(path)
        async for st in self.inner.list_dir(path):
            self.pulled += 1
            yield st

    def read_range(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        return self.inner.read_range(path, offset, length)


def make_tree(root: Path, keys: list[str]) -> None:
    for key in keys:
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(key.encode())


def local(root: Path) -> CountingUfs:
    return CountingUfs(LocalUfs(root.as_uri(), {}))


async def list_all(
    lister: Lister, mounts: list[Mount], *, page: int = 1000, **kw: str
) -> tuple[list[str], list[str]]:
    keys: list[str] = []
    prefixes: list[str] = []
    token = None
    for _ in range(10_000):
        res = await lister.page("b", mounts, token=token, max_keys=page, **kw)
        keys += [e.key for e in res.contents]
        prefixes += res.prefixes
        if not res.is_truncated:
            return keys, prefixes
        token = res.next_token
    raise AssertionError("listing did not end")


def expected(keys: list[str], prefix: str = "", delimiter: str = "", after: str = ""):
    """What S3 returns for a flat set of keys: the reference model."""
    contents, prefixes = [], []
    for key in sorted(k for k in keys if k.startswith(prefix) and k > after):
        rest = key[len(prefix) :]
        if delimiter and delimiter in rest:
            cp = prefix + rest[: rest.index(delimiter) + len(delimiter)]
            if cp not in prefixes:
                prefixes.append(cp)
        else:
            contents.append(key)
    return contents, prefixes


ORDER_KEYS = ["a.b", "a/x", "a/y/z", "a0", "A", "é/1", "a b", "Z", "中文", "x~y", "a-/q", "a-b"]


async def test_keys_come_in_utf8_byte_order(tmp_path: Path) -> None:
    make_tree(tmp_path, ORDER_KEYS)
    keys, _ = await list_all(Lister(), [Mount("b", "", local(tmp_path))])
    assert keys == sorted(ORDER_KEYS, key=lambda k: k.encode())
    assert keys.index("a.b") < keys.index("a/x") < keys.index("a0")


@pytest.mark.parametrize("page", [1, 2, 3, 1000])
@pytest.mark.parametrize(
    "prefix,delimiter",
    [("", ""), ("", "/"), ("a", "/"), ("a/", "/"), ("a/", ""), ("é", ""), ("", "-"), ("a", "-")],
)
async def test_pages_match_the_reference_model(
    tmp_path: Path, page: int, prefix: str, delimiter: str
) -> None:
    make_tree(tmp_path, ORDER_KEYS)
    keys, prefixes = await list_all(
        Lister(), [Mount("b", "", local(tmp_path))], page=page, prefix=prefix, delimiter=delimiter
    )
    want_keys, want_prefixes = expected(ORDER_KEYS, prefix, delimiter)
    assert keys == want_keys
    assert prefixes == want_prefixes


async def test_random_trees_with_start_after(tmp_path: Path) -> None:
    rng = random.Random(7)
    alphabet = ["a", "b", ".", "-", "é", "0", "z"]
    keys: set[str] = set()
    while len(keys) < 150:
        depth = rng.randint(1, 3)
        parts = ["".join(rng.choices(alphabet, k=rng.randint(1, 3))) for _ in range(depth)]
        if any(p in (".", "..") for p in parts):
            continue
        key = "/".join(parts)
        # a key cannot be both a file and a directory on a file system
        if any(k.startswith(key + "/") or key.startswith(k + "/") for k in keys):
            continue
        keys.add(key)
    make_tree(tmp_path, sorted(keys))
    lister = Lister()
    mounts = [Mount("b", "", local(tmp_path))]
    for after in ["", "a", "b/", "a.", "z", rng.choice(sorted(keys))]:
        for delimiter in ["", "/"]:
            got = await list_all(lister, mounts, page=7, delimiter=delimiter, start_after=after)
            want = expected(sorted(keys), "", delimiter, after)
            assert got == want, (after, delimiter)


async def test_union_of_mounts_longest_prefix_wins(tmp_path: Path) -> None:
    root, models, deep = tmp_path / "root", tmp_path / "models", tmp_path / "deep"
    make_tree(root, ["a", "models/hidden", "models.txt", "z/1"])
    make_tree(models, ["m1/w.bin", "readme"])
    make_tree(deep, ["x"])
    mounts = [
        Mount("b", "models/", local(models)),
        Mount("b", "models/m2/", local(deep)),
        Mount("b", "", local(root)),
    ]
    all_keys = ["a", "models.txt", "models/m1/w.bin", "models/m2/x", "models/readme", "z/1"]
    lister = Lister()
    for page in (1, 2, 100):
        assert await list_all(lister, mounts, page=page) == (sorted(all_keys), [])
        got = await list_all(lister, mounts, page=page, delimiter="/")
        assert got == expected(all_keys, "", "/")
        got = await list_all(lister, mounts, page=page, prefix="models/", delimiter="/")
        assert got == (["models/readme"], ["models/m1/", "models/m2/"])
        got = await list_all(lister, mounts, page=page, prefix="models/m")
        assert got == (["models/m1/w.bin", "models/m2/x"], [])


async def test_max_keys_one_on_a_huge_directory_reads_one_batch(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    for i in range(20_000):
        (big / f"f{i:06d}").touch()
    ufs = local(tmp_path)
    page = await Lister().page("b", [Mount("b", "", ufs)], max_keys=1)
    assert [e.key for e in page.contents] == ["big/f000000"]
    assert page.is_truncated
    assert ufs.pulled < 1000  # the first stat batch, not 20,000 children


async def test_delimiter_listing_opens_no_subdirectory(tmp_path: Path) -> None:
    make_tree(tmp_path, [f"d{i}/deep/{j}" for i in range(20) for j in range(5)] + ["top"])
    ufs = local(tmp_path)
    keys, prefixes = await list_all(Lister(), [Mount("b", "", ufs)], delimiter="/", page=3)
    assert keys == ["top"]
    assert prefixes == sorted(f"d{i}/" for i in range(20))
    assert ufs.listed == [""]


async def test_next_page_resumes_the_live_walk(tmp_path: Path) -> None:
    make_tree(tmp_path, [f"k{i:04d}" for i in range(3000)])
    ufs = local(tmp_path)
    lister = Lister()
    keys, _ = await list_all(lister, [Mount("b", "", ufs)], page=100)
    assert len(keys) == 3000
    assert ufs.pulled <= 3000 + 300  # not 30 re-reads of the directory


async def test_token_survives_a_new_lister(tmp_path: Path) -> None:
    """A token from one gateway process is valid in another (no shared state needed)."""
    make_tree(tmp_path, [f"k{i}" for i in range(10)])
    mounts = [Mount("b", "", local(tmp_path))]
    first = await Lister().page("b", mounts, max_keys=4)
    assert first.next_token
    second = await Lister().page("b", mounts, max_keys=4, token=first.next_token)
    assert [e.key for e in second.contents] == sorted(f"k{i}" for i in range(10))[4:8]


async def test_bad_token_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        await Lister().page("b", [Mount("b", "", local(tmp_path))], token="%%%not-a-token")


async def test_max_keys_zero_touches_nothing(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a"])
    ufs = local(tmp_path)
    page = await Lister().page("b", [Mount("b", "", ufs)], max_keys=0)
    assert page.entries == [] and not page.is_truncated
    assert ufs.listed == []
