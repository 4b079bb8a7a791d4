"""Randomized differential tests: one random sequence of operations runs on the mount and on a
local directory, and every result (data, sizes, listings, errnos) and the final trees must be
identical.

- reads: a random tree (names chosen to collide as prefixes: ``f1``, ``f1.txt``, ``f1-x``,
  ``f10``, unicode, spaces) in the real HDFS behind the real gateway, read through the mount;
- writes: creates, appends, O_TRUNC rewrites, renames, unlinks, mkdir/rmdir, truncates and
  reads, against moto's S3 and against the gateway over HDFS (``FUSE_WRITE_TARGETS=moto``
  runs one).

A failure names the seed and the step; ``DIFF_SEED=<n>`` reruns one seed.
Documented differences are not generated: random writes into an existing file (EOPNOTSUPP on
the mount), renaming directories (EXDEV), hard links and symlinks (EPERM).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hdfs_native
import pytest

from tests.support.fusemount import FuseMount, hdfs_put_many
from tests.support.gateway import ADMIN_KEY, ADMIN_SECRET, GatewayProcess
from tests.support.hdfs import HdfsCluster
from tests.support.moto import MotoS3

RUN = uuid.uuid4().hex[:8]
SEEDS = [int(os.environ["DIFF_SEED"])] if os.environ.get("DIFF_SEED") else [1, 2, 3]
WRITE_TARGETS = os.environ.get("FUSE_WRITE_TARGETS", "moto,gateway").split(",")
NAMES = ["f1", "f1.txt", "f1-x", "f10", "f1 a", "g", "g.json", "ünï", "sp ace", "a+b=c", "zz"]
Outcome = tuple[str, Any]


def outcome(action: Callable[[], Any]) -> Outcome:
    try:
        return ("ok", action())
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno or 0, exc.errno))


def tree(root: Path) -> dict[str, Any]:
    """Everything under ``root``: path -> "dir" or (size, bytes)."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [n for n in dirnames if n != ".unionstore"]
        rel = os.path.relpath(dirpath, root)
        for n in dirnames:
            out[os.path.normpath(os.path.join(rel, n))] = "dir"
        for n in filenames:
            p = Path(dirpath) / n
            out[os.path.normpath(os.path.join(rel, n))] = (p.stat().st_size, p.read_bytes())
    return out


# -- read-only operations ---------------------------------------------------------------------
def _stat(p: Path) -> tuple[str, int]:
    st = p.stat()
    return ("dir", 0) if p.is_dir() else ("file", st.st_size)


def _pread(p: Path, off: int, size: int) -> bytes:
    fd = os.open(p, os.O_RDONLY)
    try:
        return os.pread(fd, size, off)
    finally:
        os.close(fd)


def read_op(
    rnd: random.Random, known: list[str], dirs: list[str]
) -> tuple[str, Callable[[Path], Any]]:
    kind = rnd.choice(
        [
            "stat",
            "stat",
            "listdir",
            "read",
            "read",
            "read",
            "readall",
            "missing",
            "listfile",
            "opendir",
            "walk",
        ]
    )
    path = rnd.choice(known)
    if kind == "stat":
        return f"stat {path}", lambda r: _stat(r / path)
    if kind == "listdir":
        d = rnd.choice(dirs)
        return f"listdir {d}", lambda r: sorted(os.listdir(r / d))
    if kind == "read":
        off, size = rnd.randrange(0, 400_000), rnd.choice([1, 100, 4096, 65536, 1 << 20])
        return f"pread {path} {off} {size}", lambda r: _pread(r / path, off, size)
    if kind == "readall":
        return f"read {path}", lambda r: (r / path).read_bytes()
    if kind == "missing":
        near = rnd.choice(known).rstrip("/") + rnd.choice(["", ".tx", "x", "/x", " "])
        return f"stat-near {near}", lambda r: _stat(r / near)
    if kind == "listfile":
        return f"listdir-file {path}", lambda r: sorted(os.listdir(r / path))
    if kind == "opendir":
        d = rnd.choice(dirs)
        return f"read-dir {d}", lambda r: (r / d).read_bytes()
    return "walk", lambda r: sorted(tree(r).items())


def random_tree(seed: int) -> tuple[dict[str, bytes], list[str]]:
    rnd = random.Random(seed)
    dirs = [""]
    for _ in range(8):
        parent = rnd.choice(dirs)
        name = rnd.choice(NAMES) + "d"
        path = f"{parent}/{name}".lstrip("/")
        if path not in dirs:
            dirs.append(path)
    files: dict[str, bytes] = {}
    for _ in range(60):
        parent = rnd.choice(dirs)
        path = f"{parent}/{rnd.choice(NAMES)}".lstrip("/")
        if path in dirs:
            continue
        size = rnd.choice([0, 1, 100, 4095, 4096, 5000, 100_000, 300_000, 2 << 20])
        files[path] = rnd.randbytes(size)
    return files, [d for d in dirs if d]


@pytest.fixture(scope="module")
def read_trees(hdfs: HdfsCluster) -> dict[int, tuple[dict[str, bytes], list[str]]]:
    trees = {seed: random_tree(seed) for seed in SEEDS}
    items = {}
    for seed, (files, _) in trees.items():
        items.update({f"/fuse-diff-{RUN}/s{seed}/{k}": v for k, v in files.items()})
    empty_dirs = tuple(f"/fuse-diff-{RUN}/s{s}/{d}" for s, (_, ds) in trees.items() for d in ds)
    hdfs_put_many(hdfs.url, items, dirs=empty_dirs)
    return trees


@pytest.fixture(scope="module")
def read_mount(hdfs: HdfsCluster, read_trees: Any) -> Iterator[FuseMount]:
    config = {"mounts": [{"bucket": "diff", "uri": f"{hdfs.url}/fuse-diff-{RUN}"}]}
    with (
        GatewayProcess(config) as gw,
        FuseMount(
            gw.endpoint,
            "diff",
            access_key=ADMIN_KEY,
            secret_key=ADMIN_SECRET,
            block_size="256KiB",
        ) as m,
    ):
        yield m
        assert m.alive(), m.log_tail()


@pytest.mark.parametrize("seed", SEEDS)
def test_random_reads_match_a_local_copy(
    seed: int, read_trees: Any, read_mount: FuseMount, tmp_path: Path
) -> None:
    files, dirs = read_trees[seed]
    local = tmp_path / "local"
    for d in dirs:
        (local / d).mkdir(parents=True, exist_ok=True)
    for k, v in files.items():
        (local / k).parent.mkdir(parents=True, exist_ok=True)
        (local / k).write_bytes(v)
    mounted = read_mount.path / f"s{seed}"
    rnd = random.Random(seed * 1000)
    known = list(files) + dirs
    all_dirs = ["", *dirs]
    for step in range(300):
        what, action = read_op(rnd, known, all_dirs)
        expected = outcome(lambda a=action: a(local))  # type: ignore[misc]
        got = outcome(lambda a=action: a(mounted))  # type: ignore[misc]
        assert got == expected, f"seed {seed} step {step}: {what}"
    assert tree(mounted) == tree(local)


# -- writes -----------------------------------------------------------------------------------
class Writer:
    """Random write operations, chosen from what the local tree holds now."""

    def __init__(self, rnd: random.Random, local: Path) -> None:
        self.rnd = rnd
        self.local = local

    def _existing(self) -> tuple[list[str], list[str]]:
        t = tree(self.local)
        return [k for k, v in t.items() if v != "dir"], [
            "",
            *(k for k, v in t.items() if v == "dir"),
        ]

    def op(self) -> tuple[str, Callable[[Path], Any]]:
        rnd = self.rnd
        files, dirs = self._existing()
        new = f"{rnd.choice(dirs)}/{rnd.choice(NAMES)}".lstrip("/")
        some = rnd.choice(files) if files and rnd.random() < 0.8 else new
        kind = rnd.choice(
            [
                "create",
                "create",
                "create",
                "append",
                "trunc",
                "rename",
                "unlink",
                "mkdir",
                "rmdir",
                "read",
                "stat",
                "listdir",
                "truncate0",
            ]
        )
        data = rnd.randbytes(
            rnd.choice([0, 1, 1000, 70_000, 6 << 20 if rnd.random() < 0.1 else 200_000])
        )
        chunk = rnd.choice([1000, 4096, 1 << 20])
        if kind == "create":
            target = new if rnd.random() < 0.6 else some
            return f"create {target} {len(data)}", lambda r: _write(r / target, data, chunk)
        if kind == "append":
            return f"append {some} {len(data)}", lambda r: _write(r / some, data, chunk, "ab")
        if kind == "trunc":
            return f"rewrite {some}", lambda r: _write(r / some, data, chunk)
        if kind == "rename":
            dst = new if rnd.random() < 0.7 else (rnd.choice(files) if files else new)
            return f"rename {some} {dst}", lambda r: os.rename(r / some, r / dst)
        if kind == "unlink":
            victim = some if rnd.random() < 0.8 else rnd.choice(dirs[1:] or [new])
            return f"unlink {victim}", lambda r: os.unlink(r / victim)
        if kind == "mkdir":
            target = (new + "d") if rnd.random() < 0.8 else some
            return f"mkdir {target}", lambda r: os.mkdir(r / target)
        if kind == "rmdir":
            victim = rnd.choice(dirs[1:] or [new]) if rnd.random() < 0.8 else some
            return f"rmdir {victim}", lambda r: os.rmdir(r / victim)
        if kind == "read":
            return f"read {some}", lambda r: (r / some).read_bytes()
        if kind == "stat":
            return f"stat {some}", lambda r: _stat(r / some)
        if kind == "truncate0":
            return f"truncate0 {some}", lambda r: os.truncate(r / some, 0)
        d = rnd.choice(dirs)
        return f"listdir {d}", lambda r: sorted(os.listdir(r / d))


def _write(p: Path, data: bytes, chunk: int, mode: str = "wb") -> int:
    with open(p, mode) as f:
        for off in range(0, len(data), chunk):
            f.write(data[off : off + chunk])
    return len(data)


@pytest.fixture(scope="module", params=WRITE_TARGETS)
def write_mount(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[FuseMount, Any, str]]:
    """A mount of an empty bucket: moto's, or the gateway's over an HDFS scratch folder."""
    bucket = f"fuse-diff-{RUN}"
    with contextlib.ExitStack() as stack:
        if request.param == "moto":
            moto: MotoS3 = request.getfixturevalue("moto_s3")
            s3 = moto.client()
            s3.create_bucket(Bucket=bucket)
            endpoint, key, secret = moto.endpoint, moto.access_key, moto.secret_key
        else:
            hdfs: HdfsCluster = request.getfixturevalue("hdfs")
            root = f"/fuse-diff-writes-{RUN}"
            hdfs_native.Client(hdfs.url).mkdirs(root, create_parent=True)
            gw = stack.enter_context(
                GatewayProcess(
                    {
                        "mounts": [{"bucket": bucket, "uri": hdfs.url + root}],
                        "cache": {"metadata_ttl": "0"},
                    }
                )
            )
            s3 = gw.client()
            endpoint, key, secret = gw.endpoint, ADMIN_KEY, ADMIN_SECRET
        m = stack.enter_context(
            FuseMount(endpoint, bucket, access_key=key, secret_key=secret, part_size="5MiB")
        )
        yield m, s3, bucket
        assert m.alive(), m.log_tail()


@pytest.mark.parametrize("seed", SEEDS)
def test_random_writes_match_a_local_directory(
    seed: int, write_mount: tuple[FuseMount, Any, str], tmp_path: Path
) -> None:
    m, s3, bucket = write_mount
    mounted = m.path / f"w{seed}"
    mounted.mkdir()
    local = tmp_path / "local"
    local.mkdir()
    writer = Writer(random.Random(seed), local)
    errnos: set[Any] = set()
    for step in range(200):
        what, action = writer.op()
        expected = outcome(lambda a=action: a(local))  # type: ignore[misc]
        got = outcome(lambda a=action: a(mounted))  # type: ignore[misc]
        assert got == expected, f"seed {seed} step {step}: {what}"
        if got[0] == "err":
            errnos.add(got[1])
    assert len(errnos) >= 3, errnos  # the sequence reached the error paths too
    assert tree(mounted) == tree(local)
    # and the bucket holds exactly the files (plus directory markers)
    listed = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"w{seed}/")
    keys = {o["Key"][len(f"w{seed}/") :] for page in listed for o in page.get("Contents", [])}
    files = {k for k, v in tree(local).items() if v != "dir"}
    assert {k for k in keys if k and not k.endswith("/")} == files
