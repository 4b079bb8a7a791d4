"""Range and conditional-header rules, pure (no server)."""

from __future__ import annotations

import pytest

from unionstore.errors import InvalidArgument, InvalidRange, NotModified, PreconditionFailed
from unionstore.s3.http import check_preconditions, http_date, parse_range

SIZE = 100


@pytest.mark.parametrize(
    "header,want",
    [
        (None, None),
        ("bytes=0-0", (0, 0)),
        ("bytes=0-99", (0, 99)),
        ("bytes=10-", (10, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=50-5000", (50, 99)),
        ("bytes=0-1,5-6", None),
        ("Bytes = 3-4", (3, 4)),
    ],
)
def test_ranges(header: str | None, want: tuple[int, int] | None) -> None:
    assert parse_range(header, SIZE) == want


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=200-300", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(InvalidRange) as err:
        parse_range(header, SIZE)
    assert err.value.status == 416
    assert err.value.headers() == {"Content-Range": "bytes */100"}


def test_any_range_of_an_empty_object_is_unsatisfiable() -> None:
    with pytest.raises(InvalidRange):
        parse_range("bytes=0-", 0)


@pytest.mark.parametrize("header", ["bytes=abc", "items=0-1", "bytes=5-2", "bytes=-", "bytes", ""])
def test_malformed_ranges(header: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_range(header, SIZE)


ETAG = '"abc"'
MTIME = 1_700_000_000 * 10**9
BEFORE = http_date(MTIME - 10**12)
AFTER = http_date(MTIME + 10**12)


@pytest.mark.parametrize(
    "headers,outcome",
    [
        ({}, None),
        ({"if-match": ETAG}, None),
        ({"if-match": "*"}, None),
        ({"if-match": '"other", "abc"'}, None),
        ({"if-match": '"other"'}, PreconditionFailed),
        ({"if-unmodified-since": BEFORE}, PreconditionFailed),
        ({"if-unmodified-since": AFTER}, None),
        ({"if-match": ETAG, "if-unmodified-since": BEFORE}, None),  # S3: If-Match wins
        ({"if-none-match": ETAG}, NotModified),
        ({"if-none-match": 'W/"abc"'}, NotModified),
        ({"if-none-match": '"other"'}, None),
        ({"if-modified-since": AFTER}, NotModified),
        ({"if-modified-since": http_date(MTIME)}, NotModified),
        ({"if-modified-since": BEFORE}, None),
        ({"if-none-match": '"other"', "if-modified-since": AFTER}, None),  # S3: If-None-Match wins
        ({"if-modified-since": "not a date"}, None),
    ],
)
def test_preconditions(headers: dict[str, str], outcome: type[Exception] | None) -> None:
    if outcome is None:
        check_preconditions(headers, ETAG, MTIME)
    else:
        with pytest.raises(outcome):
            check_preconditions(headers, ETAG, MTIME)


def test_not_modified_carries_validators() -> None:
    with pytest.raises(NotModified) as err:
        check_preconditions({"if-none-match": ETAG}, ETAG, MTIME)
    assert err.value.status == 304
    assert err.value.headers()["ETag"] == ETAG
