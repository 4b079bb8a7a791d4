"""The prefetch daemon's pure parts: audit parser, log follower + ledger, rules."""

from __future__ import annotations

import asyncio
import json
import os
import random
from datetime import datetime
from pathlib import Path

import pytest

from unionstore.config import ConfigError
from unionstore.prefetch.audit import AuditParser, parse_line
from unionstore.prefetch.rules import Rule, RuleSet, Target, build, glob_regex, parse_watch
from unionstore.prefetch.tail import Ledger, LogFollower, Position, write_atomic
from unionstore.prefetch.warm import PriorityGate

# as the HDFS fixture's NameNode writes them (tabs between fields)
REAL = [
    "2026-11-23 13:59:17,495 INFO FSNamesystem.audit: allowed=true\tugi=root (auth:SIMPLE)\t"
    "ip=/127.0.0.1\tcmd=create\tsrc=/models/m1/_tmp\tdst=null\t"
    "perm=root:supergroup:rw-r--r--\tproto=rpc",
    "2026-11-23 13:59:18,032 INFO FSNamesystem.audit: allowed=true\tugi=root (auth:SIMPLE)\t"
    "ip=/127.0.0.1\tcmd=rename (options=[NONE])\tsrc=/models/m1/_tmp\t"
    "dst=/models/m1/mödel bin.bin\tperm=root:supergroup:rw-r--r--\tproto=rpc",
    "2026-11-23 13:59:18,036 INFO FSNamesystem.audit: allowed=true\tugi=root (auth:SIMPLE)\t"
    "ip=/127.0.0.1\tcmd=setPermission\tsrc=/models/m1/mödel bin.bin\tdst=null\t"
    "perm=root:supergroup:rw-------\tproto=rpc",
    "2026-11-23 13:59:17,451 INFO FSNamesystem.audit: allowed=true\tugi=root (auth:SIMPLE)\t"
    "ip=/127.0.0.1\tcmd=open\tsrc=/.unionstore-ready-79d0\tdst=null\tperm=null\tproto=rpc",
]


# ---- audit parser ---------------------------------------------------------------------------
def test_real_lines_parse_to_typed_events() -> None:
    create, rename, chmod, opened = (parse_line(line) for line in REAL)
    assert create is not None and rename is not None and chmod is not None and opened is not None
    assert (create.cmd, create.src, create.dst, create.allowed) == (
        "create",
        "/models/m1/_tmp",
        None,
        True,
    )
    assert create.ugi == "root (auth:SIMPLE)" and create.ip == "127.0.0.1"
    assert create.time == datetime(2026, 11, 23, 13, 59, 17, 495000).timestamp()
    assert (rename.cmd, rename.options, rename.dst) == (
        "rename",
        ("NONE",),
        "/models/m1/mödel bin.bin",
    )
    assert not rename.overwrite
    assert chmod.cmd == "setPermission" and chmod.perm == "root:supergroup:rw-------"
    assert opened.perm is None and opened.proto == "rpc"


def test_hostile_but_valid_lines() -> None:
    tab_path = parse_line("allowed=true\tugi=u\tcmd=delete\tsrc=/a\tb c=d\tdst=null")
    assert tab_path is not None and tab_path.src == "/a\tb c=d" and tab_path.time is None
    eq_path = parse_line("x allowed=true\tcmd=create\tsrc=/w/dt=2026-11-23/k=v\tdst=null\r\n")
    assert eq_path is not None and eq_path.src == "/w/dt=2026-11-23/k=v"
    over = parse_line("allowed=true\tcmd=rename (options=[OVERWRITE, TO_TRASH])\tsrc=/a\tdst=/b")
    assert over is not None and over.overwrite and over.options == ("OVERWRITE", "TO_TRASH")
    concat = parse_line("allowed=true\tcmd=concat\tsrc=[/d/p1, /d/p 2]\tdst=/d/all")
    assert concat is not None and concat.srcs == ["/d/p1", "/d/p 2"] and concat.dst == "/d/all"
    full_logger = (
        "2026-11-23 13:59:17.495 INFO org.apache.hadoop.hdfs.server.namenode.FSNamesystem"
        ".audit: allowed=false\tugi=bob\tip=/10.0.0.1\tcmd=delete\tsrc=/x\tdst=null\tperm=null"
        "\tproto=rpc\tcallerContext=job_1"
    )
    denied = parse_line(full_logger)
    assert denied is not None and not denied.allowed and denied.time is not None


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n",
        "2026-11-23 13:59:17,495 INFO namenode.NameNode: STARTUP_MSG: something",
        "allowed=true",  # no cmd
        "allowed=maybe\tcmd=create\tsrc=/a",
        "allowed=true\tcmd=\tsrc=/a",
        "allowed=true\tcmd=rm -rf /\tsrc=/a",
        "allowed=true\tcmd=create\tsrc=relative/path",
        "2026-11-23 13:59:17,495 INFO FSNamesystem.audit: allowed=tr",  # torn
        "\x00\x01\x02allowed=true\tcmd=create\tsrc=/a",
        "allowed=true\tcmd=create\tsrc=/" + "a" * 70_000,
    ],
)
def test_garbage_is_none(line: str) -> None:
    assert parse_line(line) is None


def test_parser_counts_and_never_raises() -> None:
    parser = AuditParser()
    rng = random.Random(7)
    junk = [bytes(rng.randrange(256) for _ in range(rng.randrange(200))) for _ in range(300)]
    lines = [*[r.encode() for r in REAL], b"\xff\xfeallowed=true\tcmd=create\tsrc=/\xff", *junk]
    lines.append(b"allowed=false\tcmd=delete\tsrc=/x\tdst=null")
    events = [parser.parse(b) for b in lines]
    assert parser.lines == len(lines)
    assert parser.parsed == 6 and parser.denied == 1
    assert parser.garbage == len(lines) - 6
    good = [e for e in events if e is not None]
    assert len(good) == 5  # the 4 real ones, the one with bad bytes (replaced); not the denied
    assert good[4].src == "/\ufffd"


# ---- follower -------------------------------------------------------------------------------
def append(path: Path, *lines: str, newline: bool = True) -> None:
    with open(path, "a") as fh:
        fh.write("".join(line + ("\n" if newline else "") for line in lines))


def texts(follower: LogFollower) -> list[str]:
    return [line.data.decode() for line in follower.poll()]


def test_follow_partial_lines_and_start_positions(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    append(log, "old1", "old2")
    append(log, "half", newline=False)
    f = LogFollower(log)
    f.start()
    assert texts(f) == []  # started at the end of the last complete line
    append(log, "-done", "next")
    assert texts(f) == ["half-done", "next"]
    g = LogFollower(log)
    g.start(from_start=True)
    assert texts(g) == ["old1", "old2", "half-done", "next"]
    missing = LogFollower(tmp_path / "later.log")
    missing.start()
    assert texts(missing) == [] and missing.position.file.inode == 0
    append(tmp_path / "later.log", "first")
    assert texts(missing) == ["first"]  # a log that appears later is read from its start


def rotate(log: Path, backups: int) -> None:
    """What log4j's RollingFileAppender does: drop the oldest, shift, rename, start anew."""
    oldest = Path(f"{log}.{backups}")
    oldest.unlink(missing_ok=True)
    for i in range(backups - 1, 0, -1):
        if Path(f"{log}.{i}").exists():
            os.rename(f"{log}.{i}", f"{log}.{i + 1}")
    os.rename(log, f"{log}.1")
    log.touch()


def test_rotation_between_polls_including_several(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.touch()
    f = LogFollower(log)
    f.start()
    append(log, "a1", "a2")
    assert texts(f) == ["a1", "a2"]
    append(log, "a3")  # written before the rename, read after it
    rotate(log, 5)
    append(log, "b1")
    rotate(log, 5)
    append(log, "c1", "c2")
    rotate(log, 5)
    append(log, "d1")
    append(tmp_path / "audit.log.1.gz", "not a log4j backup")  # newer, but never read
    assert texts(f) == ["a3", "b1", "c1", "c2", "d1"]
    assert f.rotations == 3


def test_rotation_past_the_backups_while_open(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.touch()
    f = LogFollower(log)
    f.start()
    append(log, "x1")
    assert texts(f) == ["x1"]
    append(log, "x2")
    for i in range(4):  # our file is deleted as the oldest backup; the open fd still reads it
        rotate(log, 2)
        append(log, f"y{i}")
    assert texts(f) == ["x2", "y1", "y2", "y3"]  # y0 was deleted too, unread: nobody has it


def test_truncation_and_rewrite(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    append(log, "one", "two")
    f = LogFollower(log)
    f.start(from_start=True)
    assert texts(f) == ["one", "two"]
    os.truncate(log, 0)  # copytruncate
    append(log, "three")
    assert texts(f) == ["three"]
    with open(log, "w") as fh:  # truncated and rewritten past our offset before we looked
        fh.write("four-is-a-longer-line\nfive\n")
    assert texts(f) == ["four-is-a-longer-line", "five"]
    assert f.truncations == 2


def test_ledger_persists_only_finished_prefix_and_out_of_order_ids(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.touch()
    f = LogFollower(log)
    f.start()
    ledger = Ledger(f.position)
    append(log, "e0", "e1", "e2", "e3", "e4")
    lines = f.poll()
    for line in lines[:4]:
        ledger.track(line)
    ledger.advance(f.position)  # e4 needs no work
    ledger.finish(lines[0].id)
    ledger.finish(lines[2].id)  # out of order
    pos, done = ledger.checkpoint()
    assert pos.offset == lines[1].start and done == [lines[2].id]
    # a restart from there re-reads e1.. and skips e2 once
    g = LogFollower(log)
    g.start(Position.from_json(json.loads(json.dumps(pos.to_json()))))
    again = Ledger(g.position, done)
    seen = [ln.data.decode() for ln in g.poll() if not again.already_done(ln)]
    assert seen == ["e1", "e3", "e4"]
    for line in lines[1:4]:
        ledger.finish(line.id)
    assert ledger.checkpoint() == (f.position, []) and ledger.outstanding == 0


def test_restart_finds_the_file_after_rotations_while_down(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.touch()
    f = LogFollower(log)
    f.start()
    append(log, "a1", "a2")
    assert texts(f)[:1] == ["a1"]
    saved = f.position
    f.close()
    append(log, "a3")
    rotate(log, 9)
    append(log, "b1")
    rotate(log, 9)
    append(log, "c1")
    g = LogFollower(log)
    g.start(saved)
    assert texts(g) == ["a3", "b1", "c1"]
    # the file of a saved position is gone: start at the oldest file written after it
    for i in range(10):
        append(log, f"r{i}")
        rotate(log, 9)
    append(log, "z1")
    h = LogFollower(log)
    h.start(Position(saved.file, saved.offset, saved.mtime_ns))
    assert h.gaps == 1 and texts(h) == ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "z1"]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_rotations_polls_and_restarts_lose_and_repeat_nothing(
    tmp_path: Path, seed: int
) -> None:
    """A log4j-like writer with random rotation sizes, a reader polling and restarting from
    its persisted checkpoint at random points: every line is handled exactly once."""
    rng = random.Random(seed)
    log = tmp_path / "audit.log"
    log.touch()
    state = tmp_path / "state.json"
    follower = LogFollower(log)
    follower.start()
    ledger = Ledger(follower.position)
    handled: list[int] = []
    in_flight: list[tuple[str, int]] = []
    n = 0
    for _step in range(600):
        action = rng.random()
        if action < 0.5:
            for _ in range(rng.randrange(1, 6)):
                append(log, f"line {n:05d}")
                n += 1
                if rng.random() < 0.3:
                    append(log, "noise")  # needs no work: never tracked
            if log.stat().st_size > rng.randrange(200, 600):
                rotate(log, 50)
        elif action < 0.8:
            for line in follower.poll(rng.randrange(1, 20)):
                if ledger.already_done(line) or line.data == b"noise":
                    continue
                ledger.track(line)
                if rng.random() < 0.3:  # work that finishes later (or never, if we crash)
                    in_flight.append((line.id, int(line.data.split()[1])))
                else:
                    ledger.finish(line.id)
                    assert len(line.data.split()) == 2, (line, follower.position)
                    handled.append(int(line.data.split()[1]))
            ledger.advance(follower.position)
        elif action < 0.9 and in_flight:
            lid, num = in_flight.pop(rng.randrange(len(in_flight)))
            ledger.finish(lid)
            handled.append(num)
        pos, done = ledger.checkpoint()
        write_atomic(state, json.dumps({"pos": pos.to_json(), "done": done}).encode())
        if rng.random() < 0.05:  # crash: lose everything in memory, come back from the file
            follower.close()
            saved = json.loads(state.read_text())
            follower = LogFollower(log)
            follower.start(Position.from_json(saved["pos"]))
            ledger = Ledger(follower.position, saved["done"])
            in_flight.clear()
    while True:  # drain
        lines = follower.poll()
        if not lines and not in_flight:
            break
        for line in lines:
            if not ledger.already_done(line) and line.data != b"noise":
                handled.append(int(line.data.split()[1]))
        for lid, num in in_flight:
            ledger.finish(lid)
            handled.append(num)
        in_flight.clear()
    assert sorted(handled) == list(range(n))
    assert len(handled) == n


def test_write_atomic_replaces_whole(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    write_atomic(p, b"one")
    write_atomic(p, b"two" * 1000)
    assert p.read_bytes() == b"two" * 1000
    assert [x.name for x in tmp_path.iterdir()] == ["s.json"]


# ---- rules ----------------------------------------------------------------------------------
def test_globs() -> None:
    assert glob_regex("/m/*/model.bin").fullmatch("/m/a/model.bin")
    assert not glob_regex("/m/*/model.bin").fullmatch("/m/a/b/model.bin")
    assert glob_regex("/d/**/*.parquet").fullmatch("/d/x/y/z.parquet")
    assert glob_regex("/d/**/*.parquet").fullmatch("/d/z.parquet")
    assert glob_regex("/d/part-[0-9]?").fullmatch("/d/part-12")
    assert not glob_regex("/d/part-[!0-9]").fullmatch("/d/part-1")


def test_rules_map_filter_and_prioritise() -> None:
    models = Rule("/models", "models", exclude=("*.tmp", "logs/**"), max_size=100)
    bins = Rule("/models/*/model.bin", "hot", "m/", priority=5)
    off = Rule("/archive", "archive", warm=False)
    rs = RuleSet([models, bins, off])
    assert rs.warm_rule("/models/a/model.bin") is bins
    assert bins.target("/models/a/model.bin") == Target("hot", "m/a/model.bin")
    assert rs.warm_rule("/models/a/weights") is models
    for hidden in (
        "/models/a/_tmp",
        "/models/.x/y",
        "/models/_temporary/0/p",
        "/models/f._COPYING_",
    ):
        assert rs.warm_rule(hidden) is None
    assert rs.warm_rule("/models/a.tmp") is None and rs.warm_rule("/models/logs/x/y") is None
    assert rs.warm_rule("/archive/x") is None and rs.warm_rule("/elsewhere/x") is None
    assert not models.size_ok(101) and models.size_ok(100) and rs.needs_stat
    # freshness ignores filters, covers folders above a root
    assert rs.targets("/archive/x") == [Target("archive", "x")]
    assert set(rs.targets("/models/a/model.bin")) == {
        Target("models", "a/model.bin"),
        Target("hot", "m/a/model.bin"),
    }
    assert set(rs.targets("/")) == {
        Target("models", ""),
        Target("hot", "m/"),
        Target("archive", ""),
    }
    assert rs.targets("/modelsx") == [] and rs.may_warm_under("/") and not rs.may_warm_under("/x")


def test_watch_flag_and_toml(tmp_path: Path) -> None:
    url, rule = parse_watch("hdfs://nn:8020/warehouse/dt=1=lake/raw")
    assert url == "hdfs://nn:8020" and rule.root == "/warehouse/dt=1"
    assert (rule.bucket, rule.prefix) == ("lake", "raw/")
    toml = tmp_path / "rules.toml"
    toml.write_text(
        'hdfs = "hdfs://nn:8020"\n'
        '[[rule]]\npath = "/models"\nbucket = "models"\nmin_size = "1MiB"\npriority = 3\n'
        '[[rule]]\npath = "/data/**/*.parquet"\nbucket = "lake"\nexclude = ["tmp/**"]\n'
    )
    rs = build(["/x=xb"], toml)
    assert rs.hdfs == "hdfs://nn:8020" and len(rs) == 3
    assert rs.rules[0].min_size == 1 << 20
    assert build(["/x=xb"], toml, hdfs="hdfs://other:1").hdfs == "hdfs://other:1"
    for bad in ("nobucket", "/x=", "=b", "s3://b/x=b", "rel=b"):
        with pytest.raises(ConfigError):
            build([bad])
    with pytest.raises(ConfigError):
        build(["hdfs://a:1/x=b", "hdfs://b:1/y=c"])
    toml.write_text('[[rule]]\npath = "/m"\nbucket = "m"\ncolour = "red"\n')
    with pytest.raises(ConfigError, match="colour"):
        build([], toml)
    with pytest.raises(ConfigError):
        build([])


async def test_priority_gate_orders_waiters() -> None:
    gate = PriorityGate(1)
    order: list[int] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.hold(0):
            await release.wait()

    async def waiter(p: int) -> None:
        async with gate.hold(p):
            order.append(p)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(waiter(p)) for p in (1, 5, 3, 5)]
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(waiter(9))
    await asyncio.sleep(0)
    cancelled.cancel()
    release.set()
    await asyncio.gather(first, *tasks)
    assert order == [5, 5, 3, 1] and gate.active == 0
