"""Rules: which HDFS paths appear where in the gateway, and which of them to warm.

A rule maps an HDFS *root* to ``bucket[/prefix]``: ``/models/m1/model.bin`` under the rule
``/models -> models`` is the key ``m1/model.bin`` of bucket ``models``. The rule's path may be
a glob (``/models/*/model.bin``, ``/data/**/*.parquet``); its root is the part before the
first wildcard, and only matching files are warmed. ``exclude`` globs (a pattern without ``/``
matches the file name, one with ``/`` the path below the root) and, by default, Hadoop's
hidden names (a component starting with ``_`` or ``.``, or ending in ``._COPYING_``: temp files
of writers and committers) are never warmed. ``min_size``/``max_size`` bound what is warmed;
when several rules want a file, the highest ``priority`` (then the longest root) wins, and the
priority orders the warm queue.

Freshness ignores the filters: an event on any path under any rule's root (or above it)
invalidates what the gateway shows for it.

Quick form (``--watch``, repeatable): ``HDFS_PATH=BUCKET[/PREFIX]``. File form (TOML)::

    hdfs = "hdfs://namenode:8020"     # optional: lets the daemon stat files
    [[rule]]
    path = "/models"                  # or "hdfs://namenode:8020/models", or a glob
    bucket = "models"
    prefix = ""                       # key prefix in the bucket
    min_size = "1MiB"
    max_size = "200GiB"
    priority = 10
    warm = true                       # false: keep it fresh, never warm it
    exclude = ["*.tmp", "logs/**"]
    skip_hidden = true
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from unionstore.config import ConfigError, parse_size

_WILD = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True)
class Target:
    bucket: str
    key: str


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay inside one component, ``**`` spans any number, ``[...]`` a set."""
    out: list[str] = []
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
            continue
        j = 0
        while j < len(part):
            c = part[j]
            if c == "*":
                out.append("[^/]*")
            elif c == "?":
                out.append("[^/]")
            elif c == "[" and "]" in part[j + 1 :]:
                end = part.index("]", j + 1)
                body = part[j + 1 : end]
                neg = body.startswith("!")
                body = re.escape(body[1:] if neg else body).replace("\\-", "-")
                out.append(f"[{'^' if neg else ''}{body}]")
                j = end
            else:
                out.append(re.escape(c))
            j += 1
        if not last:
            out.append("/")
    return re.compile("".join(out))


def _hidden(rel: str) -> bool:
    return any(p.startswith(("_", ".")) or p.endswith("._COPYING_") for p in rel.split("/") if p)


@dataclass(frozen=True, slots=True)
class Rule:
    path: str
    bucket: str
    prefix: str = ""
    min_size: int = 0
    max_size: int | None = None
    priority: int = 0
    warm: bool = True
    exclude: tuple[str, ...] = ()
    skip_hidden: bool = True
    root: str = field(init=False)
    _glob: re.Pattern[str] | None = field(init=False)
    _excludes: tuple[tuple[bool, re.Pattern[str]], ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ConfigError(f"rule path must be absolute: {self.path!r}")
        if not self.bucket or "/" in self.bucket:
            raise ConfigError(f"rule for {self.path!r}: bad bucket {self.bucket!r}")
        path = posixpath.normpath(self.path) if not _WILD.search(self.path) else self.path
        comps = path.split("/")
        first_wild = next((i for i, c in enumerate(comps) if _WILD.search(c)), len(comps))
        root = "/".join(comps[:first_wild]) or "/"
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "_glob", glob_regex(path) if _WILD.search(path) else None)
        excl = tuple(("/" not in e, glob_regex(e.strip("/"))) for e in self.exclude)
        object.__setattr__(self, "_excludes", excl)
        if self.prefix and not self.prefix.endswith("/"):
            object.__setattr__(self, "prefix", self.prefix + "/")

    def covers(self, path: str) -> bool:
        return self.root == "/" or path == self.root or path.startswith(self.root + "/")

    def relative(self, path: str) -> str:
        return path[len(self.root) :].lstrip("/") if self.root != "/" else path.lstrip("/")

    def target(self, path: str) -> Target:
        """Where ``path`` (under the root) shows in the gateway."""
        return Target(self.bucket, self.prefix + self.relative(path))

    def wants(self, path: str) -> bool:
        """Would warm ``path`` (size aside)."""
        if not (self.warm and self.covers(path)):
            return False
        rel = self.relative(path)
        if not rel or (self.skip_hidden and _hidden(rel)):
            return False
        if self._glob is not None and not self._glob.fullmatch(path):
            return False
        name = rel.rpartition("/")[2]
        return not any(rx.fullmatch(name if bare else rel) for bare, rx in self._excludes)

    def size_ok(self, size: int) -> bool:
        return size >= self.min_size and (self.max_size is None or size <= self.max_size)

    @property
    def has_size_limits(self) -> bool:
        return self.min_size > 0 or self.max_size is not None


class RuleSet:
    def __init__(self, rules: Iterable[Rule], hdfs: str | None = None) -> None:
        # best first: priority, then the most specific root
        self.rules = sorted(rules, key=lambda r: (-r.priority, -len(r.root)))
        self.hdfs = hdfs

    def __len__(self) -> int:
        return len(self.rules)

    def targets(self, path: str) -> list[Target]:
        """Every place ``path`` (a file or a folder) shows in the gateway; a folder above a
        rule's root stands for the rule's whole prefix."""
        out: dict[Target, None] = {}
        below = path.rstrip("/") + "/"
        for r in self.rules:
            if r.covers(path):
                out[r.target(path)] = None
            elif r.root.startswith(below):
                out[Target(r.bucket, r.prefix)] = None
        return list(out)

    def may_warm_under(self, path: str) -> bool:
        """Could a file at or below ``path`` be warmed?"""
        below = path.rstrip("/") + "/"
        return any(r.warm and (r.covers(path) or r.root.startswith(below)) for r in self.rules)

    def warm_rule(self, path: str) -> Rule | None:
        return next((r for r in self.rules if r.wants(path)), None)

    @property
    def needs_stat(self) -> bool:
        return any(r.has_size_limits for r in self.rules)


def _split_uri(path: str) -> tuple[str | None, str]:
    if "://" not in path:
        return None, path
    u = urlsplit(path)
    if u.scheme not in ("hdfs", "viewfs"):
        raise ConfigError(f"rules watch HDFS paths, not {path!r}")
    return f"{u.scheme}://{u.netloc}", u.path or "/"


def parse_watch(spec: str) -> tuple[str | None, Rule]:
    """``/models=models`` or ``hdfs://nn:8020/data=lake/raw`` -> (hdfs url, rule)."""
    hpath, sep, dest = spec.rpartition("=")
    if not sep or not hpath or not dest:
        raise ConfigError(f"--watch wants HDFS_PATH=BUCKET[/PREFIX], not {spec!r}")
    url, path = _split_uri(hpath)
    bucket, _, prefix = dest.partition("/")
    return url, Rule(path, bucket, prefix)


_RULE_KEYS = {
    "path",
    "bucket",
    "prefix",
    "min_size",
    "max_size",
    "priority",
    "warm",
    "exclude",
    "skip_hidden",
}


def rule_from(raw: Mapping[str, Any]) -> tuple[str | None, Rule]:
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"unknown rule keys: {', '.join(sorted(unknown))}")
    if "path" not in raw or "bucket" not in raw:
        raise ConfigError("a rule needs path and bucket")
    url, path = _split_uri(str(raw["path"]))
    max_size = raw.get("max_size")
    exclude = raw.get("exclude", [])
    if isinstance(exclude, str) or not isinstance(exclude, list):
        raise ConfigError("exclude is a list of globs")
    rule = Rule(
        path=path,
        bucket=str(raw["bucket"]),
        prefix=str(raw.get("prefix", "")),
        min_size=parse_size(raw.get("min_size", 0)),
        max_size=None if max_size is None else parse_size(max_size),
        priority=int(raw.get("priority", 0)),
        warm=bool(raw.get("warm", True)),
        exclude=tuple(str(e) for e in exclude),
        skip_hidden=bool(raw.get("skip_hidden", True)),
    )
    return url, rule


def build(
    watches: Iterable[str] = (), rules_file: Path | None = None, hdfs: str | None = None
) -> RuleSet:
    """The rule set from ``--watch`` flags and a TOML file; one HDFS URL at most, given by
    ``hdfs`` (the flag), the file's ``hdfs`` key or the rules' own URIs."""
    urls: set[str] = set()
    rules: list[Rule] = []
    pairs = [parse_watch(w) for w in watches]
    if rules_file is not None:
        try:
            raw = tomllib.loads(rules_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{rules_file}: {exc}") from None
        extra = set(raw) - {"hdfs", "rule"}
        if extra:
            raise ConfigError(f"{rules_file}: unknown keys {', '.join(sorted(extra))}")
        if raw.get("hdfs"):
            urls.add(str(raw["hdfs"]).rstrip("/"))
        pairs += [rule_from(r) for r in raw.get("rule", [])]
    for url, rule in pairs:
        if url:
            urls.add(url)
        rules.append(rule)
    if hdfs:  # the flag wins
        urls = {hdfs.rstrip("/")}
    if len(urls) > 1:
        raise ConfigError(f"rules name several HDFS clusters: {', '.join(sorted(urls))}")
    if not rules:
        raise ConfigError("nothing to watch: give --watch HDFS_PATH=BUCKET or --rules FILE")
    return RuleSet(rules, hdfs=next(iter(urls), None))
