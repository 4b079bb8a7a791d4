"""Request bodies of the write path (PutObject, UploadPart): decoded, verified, streamed.

:func:`decode_body` turns the raw body of a request into its payload bytes with bounded memory:
plain bodies pass through untouched; ``aws-chunked`` bodies (``x-amz-content-sha256:
STREAMING-...``) are unframed by an incremental parser that keeps at most one header line
(:data:`MAX_LINE` bytes) and never a chunk. Every payload byte feeds the digests of
:mod:`unionstore.s3.checksums` once.

The contract with the caller: bytes are yielded *before* they are verified (a chunk's signature
is checked when its last byte has been read, digests and lengths when the body ends), and every
failure is raised from the iterator. So the caller writes what it gets to a temporary file and
publishes it only once iteration ended without an exception; then the reader's ``md5_hex``
(the ETag), ``checksums`` (response headers) and ``length`` are final.

Payload modes (the effective ``x-amz-content-sha256``)::

    <64 hex>                              plain; sha256 checked at the end
    UNSIGNED-PAYLOAD                      plain; nothing to check but Content-MD5 / checksums
    STREAMING-AWS4-HMAC-SHA256-PAYLOAD    hex-size;chunk-signature=SIG CRLF data CRLF ... 0-chunk;
                                          each signature chained from the seed signature
    STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER   the same, then trailers signed by
                                          x-amz-trailer-signature
    STREAMING-UNSIGNED-PAYLOAD-TRAILER    hex-size CRLF data CRLF ... 0 CRLF, trailers, CRLF

After the 0-size chunk come trailer lines (``x-amz-checksum-crc32:BASE64``) and an empty line.
Accepted too, as the AWS documentation's example writes it: an empty line *before* the trailers
and none after. Errors: framing -> InvalidRequest (ClientError) or IncompleteBody if the body ends
early or its length is not the declared one; signatures -> SignatureDoesNotMatch; digests ->
XAmzContentSHA256Mismatch / BadDigest; trailers -> MalformedTrailerError; over ``max_size`` ->
EntityTooLarge.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from typing import Final

from unionstore.errors import (
    ClientError,
    EntityTooLarge,
    IncompleteBody,
    InvalidArgument,
    MalformedTrailerError,
    SignatureDoesNotMatch,
)
from unionstore.s3.auth import STREAMING_PAYLOADS, UNSIGNED_PAYLOAD, AuthResult, chunk_signature
from unionstore.s3.checksums import PayloadDigests, plan_digests, trailer_checksum

__all__ = ["MAX_LINE", "MAX_PUT_SIZE", "BodyReader", "decode_body", "stored_content_encoding"]

MAX_PUT_SIZE: Final = 5 * 1024**3  # S3's limit for one PutObject or UploadPart
MAX_LINE: Final = 4096  # a chunk header or trailer line, CRLF included
MAX_TRAILERS: Final = 16
SIGNED: Final = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
SIGNED_TRAILER: Final = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_HEX = frozenset("0123456789abcdefABCDEF")
_HEADER, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


def decode_body(
    chunks: AsyncIterable[bytes],
    headers: Mapping[str, str],
    auth: AuthResult,
    *,
    max_size: int = MAX_PUT_SIZE,
) -> BodyReader:
    """A :class:`BodyReader` over ``chunks``; header problems raise here, before any read."""
    return BodyReader(chunks, headers, auth, max_size=max_size)


def stored_content_encoding(value: str | None) -> str | None:
    """The Content-Encoding to store: the header without its ``aws-chunked`` token."""
    if value is None:
        return None
    kept = [t.strip() for t in value.split(",") if t.strip() and t.strip().lower() != "aws-chunked"]
    return ", ".join(kept) or None


class BodyReader:
    """The payload of one request body, as an async iterator of bytes; see the module doc.

    ``headers`` are the request's, names lower-cased; ``auth`` is what authentication
    returned (the signing key, seed signature, scope and date verify signed chunks).
    """

    def __init__(
        self,
        chunks: AsyncIterable[bytes],
        headers: Mapping[str, str],
        auth: AuthResult,
        *,
        max_size: int = MAX_PUT_SIZE,
    ) -> None:
        mode = _payload_mode(headers, auth)
        chunked = mode in STREAMING_PAYLOADS
        announced = headers.get("x-amz-trailer")
        self._trailer = None if announced is None else trailer_checksum(announced)
        if not chunked and (self._trailer is not None or _aws_chunked(headers)):
            raise ClientError(
                "An aws-chunked body (x-amz-trailer, Content-Encoding: aws-chunked) needs "
                "x-amz-content-sha256: STREAMING-..."
            )
        self._digests = PayloadDigests(
            plan_digests(headers, payload_hash=mode, trailer=self._trailer)
        )
        length_header = "x-amz-decoded-content-length" if chunked else "content-length"
        self._declared = _length(headers, length_header)
        if self._declared is not None and self._declared > max_size:
            raise EntityTooLarge()
        self._max_size = max_size
        self._decoder: _ChunkDecoder | None = None
        if chunked:
            signer = _signer(auth) if mode in (SIGNED, SIGNED_TRAILER) else None
            self._decoder = _ChunkDecoder(
                signer,
                signed_trailer=mode == SIGNED_TRAILER,
                expect_trailer=self._trailer is not None or mode.endswith("-TRAILER"),
            )
        self._chunks = chunks
        self._gen = self._run()
        self.length = 0  # payload bytes so far; final once complete
        self.md5_hex = ""  # set once complete: the ETag, unquoted
        self.checksums: dict[str, str] = {}  # set once complete: {"x-amz-checksum-crc32": b64}
        self.complete = False  # True once the whole body was read and verified

    def __aiter__(self) -> BodyReader:
        return self

    async def __anext__(self) -> bytes:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()

    async def _run(self) -> AsyncGenerator[bytes, None]:
        decoder = self._decoder
        async for piece in self._chunks:
            if not piece:
                continue
            data = piece if type(piece) is bytes else bytes(piece)
            if decoder is None:
                self._count(data)
                yield data
                continue
            for payload in decoder.feed(data):
                self._count(payload)
                yield payload
        if decoder is not None:
            decoder.finish()
        self._finish()

    def _count(self, data: bytes) -> None:
        self.length += len(data)
        if self.length > self._max_size:
            raise EntityTooLarge()
        if self._declared is not None and self.length > self._declared:
            raise IncompleteBody(
                f"The request body is longer than the {self._declared} bytes it declared."
            )
        self._digests.update(data)

    def _finish(self) -> None:
        if self._declared is not None and self.length != self._declared:
            raise IncompleteBody(
                f"The request body has {self.length} bytes; it declared {self._declared}."
            )
        trailers = {} if self._decoder is None else self._decoder.trailers
        for name in trailers:
            if name.startswith("x-amz-checksum-") and name != self._trailer:
                raise MalformedTrailerError(
                    f"The trailer {name} was not announced in x-amz-trailer."
                )
        value = None
        if self._trailer is not None:
            value = trailers.get(self._trailer)
            if value is None:
                raise MalformedTrailerError(
                    f"The {self._trailer} trailer announced by x-amz-trailer is missing."
                )
        self.md5_hex, self.checksums = self._digests.verify(value)
        self.complete = True


def _payload_mode(headers: Mapping[str, str], auth: AuthResult) -> str:
    """The x-amz-content-sha256 that governs the body: the signed one, else the header."""
    if auth.payload_hash is not None and auth.payload_hash != UNSIGNED_PAYLOAD:
        return auth.payload_hash
    mode = headers.get("x-amz-content-sha256", UNSIGNED_PAYLOAD).strip()
    if mode == UNSIGNED_PAYLOAD or mode in STREAMING_PAYLOADS:
        return mode
    if len(mode) != 64 or not _HEX.issuperset(mode):
        raise InvalidArgument(
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-..., or a valid sha256 value."
        )
    return mode


def _aws_chunked(headers: Mapping[str, str]) -> bool:
    encodings = headers.get("content-encoding", "").lower().split(",")
    return any(token.strip() == "aws-chunked" for token in encodings)


def _length(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise InvalidArgument(f"{name} must be a non-negative integer.")
    return int(value)


class _Signer:
    """The chain of aws-chunked signatures: each chunk's is the next one's "previous"."""

    __slots__ = ("amz_date", "key", "previous", "scope")

    def __init__(self, key: bytes, amz_date: str, scope: str, seed: str) -> None:
        self.key = key
        self.amz_date = amz_date
        self.scope = scope
        self.previous = seed

    def check_chunk(self, sent: bytes, sha256_hex: str, number: int) -> None:
        wanted = chunk_signature(self.key, self.amz_date, self.scope, self.previous, sha256_hex)
        if not hmac.compare_digest(wanted.encode(), sent):
            raise SignatureDoesNotMatch(f"The signature of chunk {number} does not match.")
        self.previous = wanted

    def check_trailer(self, sent: bytes, trailers: Mapping[str, str]) -> None:
        canonical = "".join(f"{name}:{value}\n" for name, value in sorted(trailers.items()))
        digest = hashlib.sha256(canonical.encode("latin-1")).hexdigest()
        text = f"AWS4-HMAC-SHA256-TRAILER\n{self.amz_date}\n{self.scope}\n{self.previous}\n{digest}"
        wanted = hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(wanted.encode(), sent):
            raise SignatureDoesNotMatch("The x-amz-trailer-signature does not match.")


def _signer(auth: AuthResult) -> _Signer:
    if auth.signing_key is None or not (auth.seed_signature and auth.scope and auth.amz_date):
        raise InvalidArgument(
            "A STREAMING-AWS4-HMAC-SHA256-PAYLOAD body needs a request signed with AWS "
            "Signature Version 4 in the Authorization header."
        )
    return _Signer(auth.signing_key, auth.amz_date, auth.scope, auth.seed_signature)


class _ChunkDecoder:
    """Incremental aws-chunked parser: :meth:`feed` wire bytes, get payload slices back."""

    def __init__(self, signer: _Signer | None, *, signed_trailer: bool, expect_trailer: bool):
        self._signer = signer
        self._trailer_signer = signer if signed_trailer else None
        self._expect_trailer = expect_trailer
        self.trailers: dict[str, str] = {}
        self._trailer_signature: bytes | None = None
        self._blank_before_trailers = False
        self._state = _HEADER
        self._line = bytearray()
        self._remaining = 0  # data bytes left in the current chunk
        self._crlf = 0  # bytes of the CRLF after chunk data seen so far
        self._number = 0  # chunks seen, for messages
        self._sent_signature = b""
        self._chunk_sha256 = hashlib.sha256()

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, end - pos)
                piece = data[pos : pos + take]  # the very object when it is all of data
                if self._signer is not None:
                    self._chunk_sha256.update(piece)
                out.append(piece)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._end_of_data()
            elif state == _DATA_END:
                if data[pos] != b"\r\n"[self._crlf]:
                    raise ClientError(f"aws-chunked: chunk {self._number} is not followed by CRLF.")
                pos += 1
                self._crlf += 1
                if self._crlf == 2:
                    self._crlf = 0
                    self._state = _HEADER
            elif state == _DONE:
                raise ClientError("aws-chunked: data after the end of the body.")
            else:
                pos = self._read_line(data, pos)
        return out

    def finish(self) -> None:
        """The body ended: check it ended where it may, and the trailer's signature."""
        if self._state == _HEADER:
            raise IncompleteBody("The request body ended before its final (0-size) chunk.")
        if self._state in (_DATA, _DATA_END):
            raise IncompleteBody(f"The request body ended inside chunk {self._number}.")
        if self._line:
            raise IncompleteBody("The request body ended inside a trailer line.")
        if self._trailer_signer is not None:
            if self._trailer_signature is None:
                raise SignatureDoesNotMatch("The body has no x-amz-trailer-signature.")
            self._trailer_signer.check_trailer(self._trailer_signature, self.trailers)

    def _read_line(self, data: bytes, pos: int) -> int:
        room = MAX_LINE - len(self._line)
        newline = data.find(b"\n", pos, pos + room)
        if newline < 0:
            if len(data) - pos >= room:
                raise ClientError(f"aws-chunked: a line is longer than {MAX_LINE} bytes.")
            self._line += data[pos:]
            return len(data)
        self._line += data[pos : newline + 1]
        line = bytes(self._line)
        self._line.clear()
        if len(line) < 2 or line[-2] != 0x0D:
            raise ClientError("aws-chunked: a line does not end with CRLF.")
        if self._state == _HEADER:
            self._chunk_header(line[:-2])
        else:
            self._trailer_line(line[:-2])
        return newline + 1

    def _chunk_header(self, text: bytes) -> None:
        size_text, _, extensions = text.partition(b";")
        size_text = size_text.strip(b" \t")
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise ClientError(f"aws-chunked: invalid chunk size {size_text[:32]!r}.")
        size = int(size_text, 16)
        self._number += 1
        if self._signer is not None:
            signature = _extension(extensions, b"chunk-signature")
            if signature is None:
                raise SignatureDoesNotMatch(f"Chunk {self._number} has no chunk-signature.")
            self._sent_signature = signature
            self._chunk_sha256 = hashlib.sha256()
        if size:
            self._remaining = size
            self._state = _DATA
            return
        if self._signer is not None:
            self._signer.check_chunk(self._sent_signature, _EMPTY_SHA256, self._number)
        self._state = _TRAILER

    def _end_of_data(self) -> None:
        if self._signer is not None:
            digest = self._chunk_sha256.hexdigest()
            self._signer.check_chunk(self._sent_signature, digest, self._number)
        self._state = _DATA_END

    def _trailer_line(self, text: bytes) -> None:
        if not text:
            first = not self.trailers and self._trailer_signature is None
            if self._expect_trailer and first and not self._blank_before_trailers:
                self._blank_before_trailers = True  # the AWS documentation's layout
            else:
                self._state = _DONE
            return
        raw_name, sep, raw_value = text.partition(b":")
        name = raw_name.strip().lower().decode("latin-1")
        if not sep or not name:
            raise MalformedTrailerError(f"Malformed trailer line {text[:64]!r}.")
        if name == "x-amz-trailer-signature":
            self._trailer_signature = raw_value.strip()
            return
        if name in self.trailers or len(self.trailers) >= MAX_TRAILERS:
            raise MalformedTrailerError(f"Repeated or too many trailers ({name}).")
        self.trailers[name] = raw_value.strip().decode("latin-1")


def _extension(extensions: bytes, name: bytes) -> bytes | None:
    """The value of chunk extension ``name`` in ``;a=1;b=2`` (the part after the size)."""
    for item in extensions.split(b";"):
        key, sep, value = item.partition(b"=")
        if sep and key.strip() == name:
            return value.strip()
    return None
