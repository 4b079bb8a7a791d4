"""NameNode audit-log lines -> typed :class:`AuditEvent`, defensively.

A line as log4j writes it (``%d{ISO8601} %p %c{2}: %m``)::

    2026-11-23 13:15:47,123 INFO FSNamesystem.audit: allowed=true<TAB>ugi=root (auth:SIMPLE)
    <TAB>ip=/127.0.0.1<TAB>cmd=rename (options=[NONE])<TAB>src=/a/_tmp<TAB>dst=/a/final
    <TAB>perm=root:supergroup:rw-r--r--<TAB>proto=rpc

The message is tab-separated ``key=value`` fields; only the first ``=`` of a field separates,
so paths may hold ``=``, spaces and any unicode. A tab inside a path (legal in HDFS) makes a
segment that does not start with ``word=``; it is glued back onto the previous value. ``null``
means absent. ``cmd`` may carry options in parentheses. ``concat`` logs its sources as one
``src=[/a, /b]``.

Nothing here raises on input: a line that is not an audit line (no ``allowed=``/``cmd=``,
torn, binary) is *garbage*: :class:`AuditParser` counts it and returns ``None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

_TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[,.](\d{1,6}))?")
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*=")
_CMD = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(?:\s*\((.*)\))?$")
_OPTIONS = re.compile(r"options=\[([^\]]*)\]")
#: longest line we look at; a longer one is garbage (a runaway write, not an audit record)
MAX_LINE = 64 * 1024


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit record. ``time`` is epoch seconds read as the local time of this host
    (log4j's ISO8601 has no zone), or ``None`` if the line had no timestamp."""

    time: float | None
    allowed: bool
    ugi: str
    ip: str
    cmd: str
    options: tuple[str, ...]
    src: str | None
    dst: str | None
    perm: str | None = None
    proto: str | None = None

    @property
    def srcs(self) -> list[str]:
        """The source paths: one, or several for ``concat`` (``[/a, /b]``)."""
        if self.src is None:
            return []
        if self.cmd == "concat" and self.src.startswith("[") and self.src.endswith("]"):
            return [p for p in self.src[1:-1].split(", ") if p.startswith("/")]
        return [self.src]

    @property
    def overwrite(self) -> bool:
        return "OVERWRITE" in self.options


def parse_time(text: str) -> float | None:
    m = _TIME.match(text)
    if m is None:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        micros = int((frac or "0").ljust(6, "0"))
        return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micros).timestamp()
    except (ValueError, OverflowError):
        return None


def split_fields(message: str) -> dict[str, str]:
    """``k=v<TAB>k=v`` -> dict; segments that are not ``word=`` continue the previous value."""
    fields: dict[str, str] = {}
    last: str | None = None
    for seg in message.split("\t"):
        if _FIELD.match(seg):
            key, _, value = seg.partition("=")
            if key in fields:  # a repeated key: keep the first, treat the rest as text
                if last is not None:
                    fields[last] += "\t" + seg
                continue
            fields[key] = value
            last = key
        elif last is not None:
            fields[last] += "\t" + seg
    return fields


def _opt(value: str | None) -> str | None:
    return None if value is None or value == "null" else value


def parse_line(line: str) -> AuditEvent | None:
    """One line (with or without its newline) -> event, or ``None`` if it is not one."""
    line = line.rstrip("\r\n")
    if len(line) > MAX_LINE or "\x00" in line:
        return None
    at = line.find("allowed=")
    if at < 0:
        return None
    fields = split_fields(line[at:])
    allowed, cmd_text = fields.get("allowed"), fields.get("cmd")
    if allowed not in ("true", "false") or not cmd_text:
        return None
    m = _CMD.match(cmd_text.strip())
    if m is None:
        return None
    options: tuple[str, ...] = ()
    if m.group(2):
        om = _OPTIONS.search(m.group(2))
        if om:
            options = tuple(o.strip() for o in om.group(1).split(",") if o.strip())
    src, dst = _opt(fields.get("src")), _opt(fields.get("dst"))
    for p in (src, dst):
        if p is not None and not p.startswith(("/", "[")):
            return None
    return AuditEvent(
        time=parse_time(line[:at]),
        allowed=allowed == "true",
        ugi=fields.get("ugi", ""),
        ip=fields.get("ip", "").lstrip("/"),
        cmd=m.group(1),
        options=options,
        src=src,
        dst=dst,
        perm=_opt(fields.get("perm")),
        proto=_opt(fields.get("proto")),
    )


class AuditParser:
    """:func:`parse_line` with counters; decodes bytes as UTF-8 (bad bytes replaced)."""

    def __init__(self) -> None:
        self.lines = 0
        self.parsed = 0
        self.garbage = 0
        self.denied = 0

    def parse(self, raw: bytes | str) -> AuditEvent | None:
        """The event for an allowed operation; ``None`` for garbage and ``allowed=false``."""
        self.lines += 1
        try:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            event = parse_line(text)
        except Exception:  # belt and braces: a parser bug must not stop the daemon
            event = None
        if event is None:
            self.garbage += 1
            return None
        self.parsed += 1
        if not event.allowed:
            self.denied += 1
            return None
        return event
