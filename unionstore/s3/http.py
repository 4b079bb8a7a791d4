"""Pure HTTP parsing for the S3 edge: Range, conditional headers, dates. No I/O, no server.

Semantics follow RFC 9110 as S3 applies them:

- one byte range only (``bytes=0-9``, ``bytes=5-``, ``bytes=-5``); a range list is served as
  the whole object, as S3 does; an unsatisfiable range is 416 InvalidRange; a Range that is
  not a byte range at all is 400 InvalidArgument.
- If-Match / If-Unmodified-Since fail with 412; If-None-Match / If-Modified-Since give 304.
  As in S3, a true If-Match wins over a false If-Unmodified-Since, and a false If-None-Match
  wins over a true If-Modified-Since.
"""

from __future__ import annotations

import email.utils
import functools
from collections.abc import Mapping
from datetime import UTC, datetime

from unionstore.errors import InvalidArgument, InvalidRange, NotModified, PreconditionFailed


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the inclusive (first, last) byte positions, or None for the whole object."""
    if header is None:
        return None
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        raise InvalidArgument(f"Invalid Range header {header!r}")
    if "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    numeric = all(part.isdigit() or part == "" for part in (first_s, last_s))
    if not dash or not numeric:
        raise InvalidArgument(f"Invalid Range header {header!r}")
    if first_s == "":
        if last_s == "":
            raise InvalidArgument(f"Invalid Range header {header!r}")
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            raise InvalidRange(size)
        return max(0, size - suffix), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        raise InvalidArgument(f"Invalid Range header {header!r}")
    if first >= size:
        raise InvalidRange(size)
    return first, min(last, size - 1)


@functools.lru_cache(maxsize=65536)
def http_date(ns: int) -> str:
    return email.utils.formatdate(ns / 1e9, usegmt=True)


@functools.lru_cache(maxsize=65536)
def iso_date(ns: int) -> str:
    dt = datetime.fromtimestamp(ns / 1e9, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


CONDITIONS = ("match", "none-match", "modified-since", "unmodified-since")


def _parse_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None  # an unparseable date is ignored, as RFC 9110 says


def _etag_matches(header: str, etag: str) -> bool:
    bare = etag.strip('"')
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/").strip('"') == bare:
            return True
    return False


def check_preconditions(
    headers: Mapping[str, str], etag: str, mtime_ns: int, *, prefix: str = "if-"
) -> None:
    """Raise PreconditionFailed or NotModified as the conditional headers demand.

    ``prefix`` is ``"x-amz-copy-source-if-"`` for CopyObject's source conditions."""
    mtime = int(mtime_ns // 1_000_000_000)  # HTTP dates have whole seconds
    if_match = headers.get(prefix + "match")
    if_unmodified = _parse_date(headers.get(prefix + "unmodified-since"))
    if_none_match = headers.get(prefix + "none-match")
    if_modified = _parse_date(headers.get(prefix + "modified-since"))
    if if_match is not None:
        if not _etag_matches(if_match, etag):
            raise PreconditionFailed()
    elif if_unmodified is not None and mtime > if_unmodified:
        raise PreconditionFailed()
    validators = {"ETag": etag, "Last-Modified": http_date(mtime_ns)}
    if if_none_match is not None:
        if _etag_matches(if_none_match, etag):
            raise NotModified(validators)
    elif if_modified is not None and mtime <= if_modified:
        raise NotModified(validators)
