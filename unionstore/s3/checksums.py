"""Payload digests of a request body: Content-MD5, x-amz-content-sha256 and x-amz-checksum-*.

What a request asks to be checked is read once from its headers (:func:`plan_digests`) and fed
every payload byte in one pass (:class:`PayloadDigests`). The MD5 is always computed: it is the
ETag. Verification happens at the end, in a fixed order: ``x-amz-content-sha256``
(XAmzContentSHA256Mismatch), ``Content-MD5`` (BadDigest), then the flexible checksum (BadDigest,
with AWS's message naming the algorithm).

A flexible checksum (crc32, crc32c, crc64nvme, sha1, sha256) comes as an ``x-amz-checksum-ALG``
header, as an aws-chunked trailer announced by ``x-amz-trailer``, or only as a request for the
server to compute one (``x-amz-sdk-checksum-algorithm``). CRC32 is zlib's, CRC32C is
``google-crc32c``'s (a C extension), CRC64NVME needs ``awscrt`` (optional: without it a request
for that algorithm is refused with NotImplemented, never computed slowly).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import google_crc32c

from unionstore.errors import (
    BadDigest,
    ClientError,
    InvalidArgument,
    InvalidDigest,
    NotImplementedOp,
    XAmzContentSHA256Mismatch,
)

__all__ = [
    "ALGORITHMS",
    "DigestPlan",
    "PayloadDigests",
    "checksum_header",
    "decode_checksum",
    "plan_digests",
    "trailer_checksum",
]

# algorithm -> digest size in bytes; the order is AWS's, and the order of the checks
ALGORITHMS: Mapping[str, int] = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}
_PREFIX = "x-amz-checksum-"
_HEX = frozenset("0123456789abcdefABCDEF")
_MULTIPLE = "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc:
    """A running CRC behind hashlib's interface."""

    __slots__ = ("_extend", "_size", "_value")

    def __init__(self, extend: Callable[[bytes, int], int], size: int) -> None:
        self._extend = extend
        self._size = size
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = self._extend(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._size, "big")


def _crc32c(data: bytes, value: int) -> int:
    return int(google_crc32c.extend(value, data))


def _crc64nvme() -> Callable[[bytes, int], int]:
    try:
        checksums: Any = importlib.import_module("awscrt.checksums")
    except ImportError:
        raise NotImplementedOp(
            "CRC64NVME checksums are not available on this gateway (it needs awscrt)."
        ) from None
    crc: Callable[[bytes, int], int] = checksums.crc64nvme
    return crc


def _new_hasher(algorithm: str) -> _Hasher:
    if algorithm == "crc32":
        return _Crc(zlib.crc32, 4)
    if algorithm == "crc32c":
        return _Crc(_crc32c, 4)
    if algorithm == "crc64nvme":
        return _Crc(_crc64nvme(), 8)
    return hashlib.new(algorithm)  # sha1, sha256


def checksum_header(algorithm: str) -> str:
    """``crc32`` -> ``x-amz-checksum-crc32``."""
    return _PREFIX + algorithm


def decode_checksum(algorithm: str, value: str) -> bytes:
    """A base64 checksum value as sent; InvalidRequest if it cannot be one."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != ALGORITHMS[algorithm]:
        raise ClientError(f"Value for {checksum_header(algorithm)} header is invalid.")
    return raw


@dataclass(frozen=True, slots=True)
class DigestPlan:
    """What a request asks to be checked, read from its headers before the body."""

    content_md5: bytes | None = None  # decoded Content-MD5
    content_sha256: bytes | None = None  # decoded hex x-amz-content-sha256
    algorithm: str | None = None  # flexible checksum to compute: "crc32", ...
    expected: bytes | None = None  # its value from a header (None: trailer or server-computed)
    in_trailer: bool = False  # the value comes as an aws-chunked trailer


def plan_digests(
    headers: Mapping[str, str], *, payload_hash: str | None, trailer: str | None
) -> DigestPlan:
    """Read the digests ``headers`` ask for.

    ``payload_hash`` is the effective x-amz-content-sha256 (a hex value is checked, anything
    else is a mode); ``trailer`` is the checksum header named by x-amz-trailer, if any.
    """
    content_md5 = None
    if "content-md5" in headers:
        try:
            content_md5 = base64.b64decode(headers["content-md5"].strip(), validate=True)
        except (binascii.Error, ValueError):
            content_md5 = b""
        if len(content_md5) != 16:
            raise InvalidDigest()
    content_sha256 = None
    if payload_hash is not None and len(payload_hash) == 64 and _HEX.issuperset(payload_hash):
        content_sha256 = bytes.fromhex(payload_hash)

    sent = [name for name in ALGORITHMS if checksum_header(name) in headers]
    if len(sent) + (trailer is not None) > 1:
        raise ClientError(_MULTIPLE)
    algorithm = sent[0] if sent else None
    expected = (
        None if algorithm is None else decode_checksum(algorithm, headers[_PREFIX + algorithm])
    )
    if trailer is not None:
        algorithm = trailer.removeprefix(_PREFIX)
    requested = headers.get("x-amz-sdk-checksum-algorithm")
    if requested is not None:
        wanted = requested.strip().lower()
        if wanted not in ALGORITHMS or (algorithm is not None and wanted != algorithm):
            raise InvalidArgument("Value for x-amz-sdk-checksum-algorithm header is invalid.")
        algorithm = wanted
    if algorithm == "crc64nvme":
        _crc64nvme()  # refuse before the body is read
    return DigestPlan(content_md5, content_sha256, algorithm, expected, trailer is not None)


def trailer_checksum(value: str) -> str | None:
    """The checksum header an ``x-amz-trailer`` value announces, or None if it is empty."""
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    if not names:
        return None
    if len(names) > 1:
        raise ClientError(_MULTIPLE)
    name = names[0]
    if not name.startswith(_PREFIX) or name.removeprefix(_PREFIX) not in ALGORITHMS:
        raise InvalidArgument(f"Unsupported x-amz-trailer: {name!r}; only x-amz-checksum-*.")
    return name


class PayloadDigests:
    """Every digest of one body, fed in one pass; :meth:`verify` checks them at the end."""

    def __init__(self, plan: DigestPlan) -> None:
        self.plan = plan
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256() if plan.content_sha256 is not None else None
        self._checksum = None if plan.algorithm is None else _new_hasher(plan.algorithm)
        self._updates: list[Callable[[bytes], None]] = [
            hasher.update for hasher in (self._md5, self._sha256, self._checksum) if hasher
        ]

    def update(self, data: bytes) -> None:
        for update in self._updates:
            update(data)

    def verify(self, trailer_value: str | None = None) -> tuple[str, dict[str, str]]:
        """Check every digest; return the MD5 (hex) and the checksums to answer with.

        ``trailer_value`` is the base64 checksum the body's trailer carried when the plan
        expects one (the caller makes sure it came). The checksums map response header names
        to base64 values.
        """
        plan = self.plan
        if self._sha256 is not None and self._sha256.digest() != plan.content_sha256:
            raise XAmzContentSHA256Mismatch()
        md5 = self._md5.digest()
        if plan.content_md5 is not None and md5 != plan.content_md5:
            raise BadDigest()
        if plan.algorithm is None or self._checksum is None:
            return md5.hex(), {}
        expected = plan.expected
        if plan.in_trailer and trailer_value is not None:
            expected = decode_checksum(plan.algorithm, trailer_value)
        actual = self._checksum.digest()
        if expected is not None and actual != expected:
            raise BadDigest(
                f"The {plan.algorithm.upper()} you specified did not match the calculated checksum."
            )
        return md5.hex(), {checksum_header(plan.algorithm): base64.b64encode(actual).decode()}
