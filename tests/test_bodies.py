"""Request-body decoding (unionstore.s3.bodies) against real encoders; no server.

Bodies come from the AWS documentation's worked examples (signed chunks, signed chunks with a
signed trailer: published signatures), from a real boto3 client whose ``before-send`` hook
captures the prepared request (STREAMING-UNSIGNED-PAYLOAD-TRAILER with botocore's
``AwsChunkedWrapper``, or a plain body with x-amz-checksum-crc32), or from a small encoder here
built on ``chunk_signature`` (itself checked against the published signatures). Each is fed to
the decoder whole, a byte at a time and cut at every position, then tampered with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import io
import random
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import boto3
import google_crc32c
import pytest
from botocore.config import Config
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from unionstore.errors import (
    BadDigest,
    ClientError,
    EntityTooLarge,
    IncompleteBody,
    InvalidArgument,
    InvalidDigest,
    MalformedTrailerError,
    NotImplementedOp,
    SignatureDoesNotMatch,
    UnionstoreError,
    XAmzContentSHA256Mismatch,
)
from unionstore.s3.auth import ANONYMOUS, AuthResult, SignedRequest, authenticate, chunk_signature
from unionstore.s3.bodies import MAX_LINE, BodyReader, decode_body, stored_content_encoding

# --- the AWS documentation's examples ----------------------------------------------------------

DOC_AK = "AKIAIOSFODNN7EXAMPLE"
DOC_SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_NOW = datetime(2013, 5, 24, 0, 5, tzinfo=UTC)
DATE = "20130524T000000Z"
SCOPE = "20130524/us-east-1/s3/aws4_request"
SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
DOC_DATA = b"a" * 66560
DOC_CHUNKS = (b"a" * 65536, b"a" * 1024)
DOC_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
DOC_SIGS = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)
DOC_TRAILER_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
DOC_TRAILER_SIGS = (
    "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
    "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
    "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
)
DOC_TRAILER_SIG = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
DOC_CRC32C = "sOO8/Q=="


def doc_auth(payload: str) -> tuple[dict[str, str], AuthResult]:
    """The documented request headers and what authentication makes of them."""
    trailer = payload == SIGNED_TRAILER
    names = ["content-encoding", "content-length", "host", "x-amz-content-sha256", "x-amz-date"]
    names += ["x-amz-decoded-content-length", "x-amz-storage-class"]
    if trailer:  # this example does not sign Content-Length but does sign x-amz-trailer
        names = [n for n in names if n != "content-length"] + ["x-amz-trailer"]
    signed = ";".join(names)
    headers = {
        "host": "s3.amazonaws.com",
        "x-amz-date": DATE,
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "x-amz-content-sha256": payload,
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": "66560",
        "content-length": "66824",
        "authorization": f"AWS4-HMAC-SHA256 Credential={DOC_AK}/{SCOPE},SignedHeaders={signed},"
        f"Signature={DOC_TRAILER_SEED if trailer else DOC_SEED}",
    }
    if trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32c"
    req = SignedRequest("PUT", "/examplebucket/chunkObject.txt", "", headers)
    return headers, authenticate(req, {DOC_AK: DOC_SK}.get, now=DOC_NOW)


def doc_wire(trailer: bool, *, layout: str = "docs") -> bytes:
    """The documented body, byte for byte, with the published signatures."""
    sigs = DOC_TRAILER_SIGS if trailer else DOC_SIGS
    wire = b"".join(
        b"%x;chunk-signature=%s\r\n%s\r\n" % (len(c), s.encode(), c)
        for c, s in zip(DOC_CHUNKS, sigs, strict=False)
    )
    wire += b"0;chunk-signature=%s\r\n" % sigs[2].encode()
    if not trailer:
        return wire + b"\r\n"
    lines = b"x-amz-checksum-crc32c:%s\r\nx-amz-trailer-signature:%s\r\n" % (
        DOC_CRC32C.encode(),
        DOC_TRAILER_SIG.encode(),
    )
    # the documentation puts an empty line before the trailers and none after; SDKs do not
    return wire + b"\r\n" + lines if layout == "docs" else wire + lines + b"\r\n"


# --- an encoder for the signed forms, on chunk_signature --------------------------------------


def signing_key(secret: str = DOC_SK) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in SCOPE.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signed_auth(payload: str = SIGNED, seed: str = DOC_SEED, secret: str = DOC_SK) -> AuthResult:
    return AuthResult(
        access_key=DOC_AK,
        method="sigv4-header",
        payload_hash=payload,
        signing_key=signing_key(secret),
        seed_signature=seed,
        scope=SCOPE,
        amz_date=DATE,
    )


def signed_frames(
    chunks: Iterable[bytes], *, seed: str = DOC_SEED, secret: str = DOC_SK
) -> tuple[list[bytes], str]:
    """One frame per chunk, the 0-size one last, and the last signature of the chain."""
    key = signing_key(secret)
    previous, frames = seed, []
    for chunk in [*chunks, b""]:
        previous = chunk_signature(key, DATE, SCOPE, previous, sha256_hex(chunk))
        frame = b"%x;chunk-signature=%s\r\n" % (len(chunk), previous.encode())
        frames.append(frame + chunk + b"\r\n" if chunk else frame)
    return frames, previous


def encode_signed(
    chunks: Iterable[bytes],
    *,
    seed: str = DOC_SEED,
    trailers: dict[str, str] | None = None,
    secret: str = DOC_SK,
) -> bytes:
    frames, previous = signed_frames(chunks, seed=seed, secret=secret)
    wire = b"".join(frames)
    if trailers is None:
        return wire + b"\r\n"
    canonical = "".join(f"{k}:{v}\n" for k, v in sorted(trailers.items()))
    text = "\n".join(
        ["AWS4-HMAC-SHA256-TRAILER", DATE, SCOPE, previous, sha256_hex(canonical.encode())]
    )
    signature = hmac.new(signing_key(secret), text.encode(), hashlib.sha256).hexdigest()
    for name, value in trailers.items():
        wire += f"{name}:{value}\r\n".encode()
    return wire + f"x-amz-trailer-signature:{signature}\r\n\r\n".encode()


def encode_unsigned(chunks: Iterable[bytes], trailers: dict[str, str] | None = None) -> bytes:
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n"
    for name, value in (trailers or {}).items():
        wire += f"{name}:{value}\r\n".encode()
    return wire + b"\r\n"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def crc32(data: bytes) -> str:
    return b64(zlib.crc32(data).to_bytes(4, "big"))


def unsigned_headers(data: bytes, algorithm: str = "crc32") -> dict[str, str]:
    return {
        "x-amz-content-sha256": UNSIGNED_TRAILER,
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": f"x-amz-checksum-{algorithm}",
    }


# --- feeding ------------------------------------------------------------------------------------


async def source(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def pieces(wire: bytes, size: int) -> list[bytes]:
    return [wire[i : i + size] for i in range(0, len(wire), size)]


def random_pieces(wire: bytes, seed: int = 7) -> list[bytes]:
    rng, out, pos = random.Random(seed), [], 0
    while pos < len(wire):
        size = rng.choice((1, 2, 3, 5, 64, 1000, 65536))
        out.append(wire[pos : pos + size])
        pos += size
    return out


SPLITS: dict[str, Callable[[bytes], list[bytes]]] = {
    "whole": lambda wire: [wire],
    "bytewise": lambda wire: pieces(wire, 1),
    "sevens": lambda wire: pieces(wire, 7),
    "random": random_pieces,
}


async def read(
    parts: Iterable[bytes], headers: dict[str, str], auth: AuthResult = ANONYMOUS, **kw: Any
) -> tuple[bytes, BodyReader]:
    reader = decode_body(source(parts), headers, auth, **kw)
    out = bytearray()
    async for piece in reader:
        assert isinstance(piece, bytes) and piece
        out += piece
    assert reader.complete
    return bytes(out), reader


async def fails(
    error: type[UnionstoreError],
    parts: Iterable[bytes],
    headers: dict[str, str],
    auth: AuthResult = ANONYMOUS,
    **kw: Any,
) -> UnionstoreError:
    """Reading must raise exactly ``error`` (not a subclass, not a parent)."""
    with pytest.raises(UnionstoreError) as info:
        await read(parts, headers, auth, **kw)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value.message}"
    assert 400 <= info.value.status < 500
    return info.value


def flip(wire: bytes, at: int) -> bytes:
    return wire[:at] + bytes([wire[at] ^ 0x01]) + wire[at + 1 :]


# --- signed chunks: STREAMING-AWS4-HMAC-SHA256-PAYLOAD -------------------------------------------


def test_encoder_reproduces_the_published_signatures() -> None:
    assert doc_wire(False) == encode_signed(DOC_CHUNKS)
    assert doc_wire(True, layout="sdk") == encode_signed(
        DOC_CHUNKS, seed=DOC_TRAILER_SEED, trailers={"x-amz-checksum-crc32c": DOC_CRC32C}
    )
    assert b64(google_crc32c.value(DOC_DATA).to_bytes(4, "big")) == DOC_CRC32C


@pytest.mark.parametrize("split", SPLITS)
async def test_aws_example_signed_chunks(split: str) -> None:
    headers, auth = doc_auth(SIGNED)
    data, reader = await read(SPLITS[split](doc_wire(False)), headers, auth)
    assert data == DOC_DATA
    assert reader.length == 66560
    assert reader.md5_hex == hashlib.md5(DOC_DATA).hexdigest()
    assert reader.checksums == {}


@pytest.mark.parametrize("layout", ["docs", "sdk"])
@pytest.mark.parametrize("split", SPLITS)
async def test_aws_example_signed_chunks_with_signed_trailer(split: str, layout: str) -> None:
    headers, auth = doc_auth(SIGNED_TRAILER)
    assert auth.seed_signature == DOC_TRAILER_SEED
    wire = doc_wire(True, layout=layout)
    data, reader = await read(SPLITS[split](wire), headers, auth)
    assert data == DOC_DATA
    assert reader.checksums == {"x-amz-checksum-crc32c": DOC_CRC32C}


async def test_signed_chunks_verify_each_signature() -> None:
    headers, auth = doc_auth(SIGNED)
    wire = doc_wire(False)
    await fails(SignatureDoesNotMatch, [flip(wire, 200)], headers, auth)  # a payload byte
    await fails(SignatureDoesNotMatch, [flip(wire, len(wire) - 10)], headers, auth)  # last sig
    await fails(SignatureDoesNotMatch, [wire.replace(b"ad80c7", b"ad80c8")], headers, auth)
    unsigned = wire.replace(b";chunk-signature=" + DOC_SIGS[1].encode(), b"")
    await fails(SignatureDoesNotMatch, [unsigned], headers, auth)
    wrong_seed = signed_auth(seed=DOC_TRAILER_SEED)
    await fails(SignatureDoesNotMatch, [wire], headers, wrong_seed)
    await fails(SignatureDoesNotMatch, [wire], headers, signed_auth(secret="other"))


async def test_signed_chunks_cannot_be_reordered_or_dropped() -> None:
    frames, _ = signed_frames([b"one" * 30, b"two" * 30, b"three" * 30])
    headers = {"x-amz-content-sha256": SIGNED}
    data, _ = await read([b"".join(frames) + b"\r\n"], headers, signed_auth())
    assert data == b"one" * 30 + b"two" * 30 + b"three" * 30
    one, two, three, last = frames
    for reordered in ([two, one, three, last], [one, three, last], [one, two, last], [last]):
        await fails(SignatureDoesNotMatch, [b"".join(reordered) + b"\r\n"], headers, signed_auth())
    # a body that stops after a verified chunk, before the 0-size one, is incomplete
    await fails(IncompleteBody, [one + two], headers, signed_auth())


async def test_signed_trailer_is_verified() -> None:
    headers, auth = doc_auth(SIGNED_TRAILER)
    wire = doc_wire(True, layout="sdk")
    await fails(SignatureDoesNotMatch, [wire.replace(b"sOO8/Q==", b"sOO8/Q=A")], headers, auth)
    no_sig = wire.replace(b"x-amz-trailer-signature:" + DOC_TRAILER_SIG.encode() + b"\r\n", b"")
    await fails(SignatureDoesNotMatch, [no_sig], headers, auth)
    # a correctly signed trailer that carries the wrong checksum is a digest failure
    auth2 = signed_auth(SIGNED_TRAILER, seed=DOC_TRAILER_SEED)
    lying = encode_signed(
        DOC_CHUNKS, seed=DOC_TRAILER_SEED, trailers={"x-amz-checksum-crc32c": "AAAAAA=="}
    )
    error = await fails(BadDigest, [lying], headers, auth2)
    assert error.message == "The CRC32C you specified did not match the calculated checksum."


async def test_signed_mode_needs_a_sigv4_signature() -> None:
    headers, _ = doc_auth(SIGNED)
    with pytest.raises(InvalidArgument):
        decode_body(source([]), headers, ANONYMOUS)
    with pytest.raises(InvalidArgument):
        decode_body(source([]), headers, AuthResult(access_key="AK", method="sigv2-header"))


# --- unsigned chunks with a trailer, from botocore ---------------------------------------------


class Captured(Exception):
    pass


def captured_put(
    endpoint: str, operation: str = "put_object", **params: Any
) -> tuple[dict[str, str], bytes, AuthResult]:
    """A real boto3 request: its headers, its body as it would go on the wire, its auth."""
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKID",
        aws_secret_access_key="secret",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )

    def abort(request: Any, **_: Any) -> None:
        raise Captured(request)

    s3.meta.events.register("before-send.s3", abort)
    with pytest.raises(Captured) as info:
        getattr(s3, operation)(Bucket="bkt", Key="key", **params)
    request = info.value.args[0]
    headers = {
        k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()
    }
    body = request.body.read() if hasattr(request.body, "read") else bytes(request.body or b"")
    parts = urlsplit(request.url)
    headers.setdefault("host", parts.netloc)
    req = SignedRequest(request.method, parts.path, parts.query, headers)
    return headers, body, authenticate(req, {"AKID": "secret"}.get)


HAS_AWSCRT = importlib.util.find_spec("awscrt") is not None


def crc64nvme(data: bytes) -> int:
    checksums: Any = importlib.import_module("awscrt.checksums")
    return int(checksums.crc64nvme(data))


BIG = bytes(random.Random(1).randbytes(2_500_000))  # three of botocore's 1 MiB chunks


@pytest.mark.parametrize("split", SPLITS)
async def test_botocore_unsigned_trailer_crc32(split: str) -> None:
    payload = BIG if split in ("whole", "random") else b"hello world " * 50
    headers, wire, auth = captured_put("https://127.0.0.1:9000", Body=payload)
    assert headers["x-amz-content-sha256"] == UNSIGNED_TRAILER
    assert headers["x-amz-trailer"] == "x-amz-checksum-crc32"
    assert wire.endswith(f"0\r\nx-amz-checksum-crc32:{crc32(payload)}\r\n\r\n".encode())
    data, reader = await read(SPLITS[split](wire), headers, auth)
    assert data == payload
    assert reader.checksums == {"x-amz-checksum-crc32": crc32(payload)}
    assert reader.md5_hex == hashlib.md5(payload).hexdigest()
    assert reader.length == len(payload)


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [
        ("SHA256", lambda d: hashlib.sha256(d).digest()),
        ("SHA1", lambda d: hashlib.sha1(d).digest()),
        ("CRC32", lambda d: zlib.crc32(d).to_bytes(4, "big")),
    ],
)
async def test_botocore_upload_part_with_chosen_checksum(
    algorithm: str, digest: Callable[[bytes], bytes]
) -> None:
    payload = b"part data " * 1000
    headers, wire, auth = captured_put(
        "https://127.0.0.1:9000",
        "upload_part",
        Body=payload,
        UploadId="u",
        PartNumber=1,
        ChecksumAlgorithm=algorithm,
    )
    name = f"x-amz-checksum-{algorithm.lower()}"
    data, reader = await read(random_pieces(wire), headers, auth)
    assert data == payload and reader.checksums == {name: b64(digest(payload))}


async def test_botocore_empty_body_with_trailer() -> None:
    headers, wire, auth = captured_put("https://127.0.0.1:9000", Body=b"")
    assert wire == b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    for parts in ([wire], pieces(wire, 1)):
        data, reader = await read(parts, headers, auth)
        assert data == b"" and reader.length == 0
        assert reader.md5_hex == hashlib.md5(b"").hexdigest()


async def test_botocore_trailer_tampering() -> None:
    payload = b"0123456789" * 100
    headers, wire, auth = captured_put("https://127.0.0.1:9000", Body=payload)
    error = await fails(BadDigest, [flip(wire, 100)], headers, auth)
    assert error.message == "The CRC32 you specified did not match the calculated checksum."
    wrong = wire.replace(crc32(payload).encode(), crc32(b"other").encode())
    await fails(BadDigest, [wrong], headers, auth)
    await fails(ClientError, [wire.replace(crc32(payload).encode(), b"not-b64!")], headers, auth)
    missing = wire.replace(f"x-amz-checksum-crc32:{crc32(payload)}\r\n".encode(), b"")
    await fails(MalformedTrailerError, [missing], headers, auth)
    other = wire.replace(b"x-amz-checksum-crc32:", b"x-amz-checksum-crc32c:")
    await fails(MalformedTrailerError, [other], headers, auth)
    await fails(MalformedTrailerError, [wire.replace(b"crc32:", b"crc32 ")], headers, auth)


async def test_aws_chunked_wrapper_small_chunks_cut_everywhere() -> None:
    """Every two-piece cut of a many-chunk body: header lines, CRLFs, trailers, all split."""
    payload = bytes(range(256)) * 2
    wire = AwsChunkedWrapper(
        io.BytesIO(payload),
        checksum_cls=Crc32Checksum,
        checksum_name="x-amz-checksum-crc32",
        chunk_size=37,
    ).read()
    headers = unsigned_headers(payload)
    for cut in range(len(wire) + 1):
        data, reader = await read([wire[:cut], wire[cut:]], headers)
        assert data == payload, cut
        assert reader.checksums == {"x-amz-checksum-crc32": crc32(payload)}


async def test_signed_chunks_cut_everywhere() -> None:
    payload = b"signed payload " * 20
    wire = encode_signed(pieces(payload, 50), trailers={"x-amz-checksum-crc32": crc32(payload)})
    headers = {"x-amz-content-sha256": SIGNED_TRAILER, "x-amz-trailer": "x-amz-checksum-crc32"}
    for cut in range(len(wire) + 1):
        data, _ = await read([wire[:cut], wire[cut:]], headers, signed_auth(SIGNED_TRAILER))
        assert data == payload, cut


# --- malformed framing: a clear 400, never a hang -----------------------------------------------


async def test_truncated_bodies_are_incomplete() -> None:
    headers, auth = doc_auth(SIGNED)
    wire = doc_wire(False)
    # every cut but the last CRLF, which carries nothing (the 0-chunk was verified)
    cuts = [*range(0, 200), *range(65500, 65700), *range(len(wire) - 200, len(wire) - 2)]
    for cut in cuts:
        await fails(IncompleteBody, [wire[:cut]] if cut else [], headers, auth)
    payload = b"x" * 100
    unsigned = encode_unsigned([payload], {"x-amz-checksum-crc32": crc32(payload)})
    for cut in range(len(unsigned) - 2):
        with pytest.raises((IncompleteBody, MalformedTrailerError)):
            await read([unsigned[:cut]], unsigned_headers(payload))


async def test_malformed_framing() -> None:
    headers = {"x-amz-content-sha256": UNSIGNED_TRAILER}
    cases = [
        b"zz\r\nhello\r\n0\r\n\r\n",  # not hex
        b"0x5\r\nhello\r\n0\r\n\r\n",  # int() would take these three
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"5_0\r\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\n",  # more than 16 hex digits
        b"\r\nhello\r\n0\r\n\r\n",  # empty size
        b"5\nhello\r\n0\r\n\r\n",  # LF without CR
        b"5\r\nhelloXY0\r\n\r\n",  # data not followed by CRLF
        b"5\r\nhello\rX0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nx-amz-meta-a:1\r\n\r\nmore",  # data after the end
        b"5\r\nhello\r\n0\r\n\r\n\r\nmore",  # (an empty line may precede trailers)
    ]
    for wire in cases:
        for parts in ([wire], pieces(wire, 1)):
            error = await fails(ClientError, parts, headers)
            assert error.code == "InvalidRequest"
    await fails(MalformedTrailerError, [b"0\r\nno colon here\r\n\r\n"], headers)
    signed = {"x-amz-content-sha256": SIGNED}
    await fails(ClientError, [encode_signed([b"abc"]) + b"\r\n"], signed, signed_auth())


async def test_oversized_line_is_refused_without_buffering() -> None:
    headers = {"x-amz-content-sha256": UNSIGNED_TRAILER}
    fed = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal fed
        while True:  # a header line that never ends
            fed += 1000
            yield b"1" * 1000

    reader = decode_body(endless(), headers, ANONYMOUS)
    with pytest.raises(ClientError, match="longer than"):
        async for _ in reader:
            pass
    assert fed <= MAX_LINE + 1000
    await fails(ClientError, [b"5;" + b"x" * MAX_LINE + b"\r\nhello\r\n0\r\n\r\n"], headers)


async def test_large_chunk_streams_in_the_pieces_it_came_in() -> None:
    """An 8 MiB chunk is never gathered: each piece out is a slice of one piece in."""
    payload = random.Random(3).randbytes(8 * 1024 * 1024)
    wire = encode_unsigned([payload], {"x-amz-checksum-crc32": crc32(payload)})
    headers = unsigned_headers(payload)
    reader = decode_body(source(pieces(wire, 65536)), headers, ANONYMOUS)
    sizes, digest = [], hashlib.sha256()
    async for piece in reader:
        sizes.append(len(piece))
        digest.update(piece)
    assert max(sizes) <= 65536 and digest.digest() == hashlib.sha256(payload).digest()
    signed = encode_signed([payload])
    reader = decode_body(source(pieces(signed, 65536)), {}, signed_auth())
    assert max([len(p) async for p in reader]) <= 65536


async def test_decoded_length_must_match() -> None:
    headers, auth = doc_auth(SIGNED)
    wire = doc_wire(False)
    await fails(IncompleteBody, [wire], {**headers, "x-amz-decoded-content-length": "66561"}, auth)
    await fails(IncompleteBody, [wire], {**headers, "x-amz-decoded-content-length": "100"}, auth)
    with pytest.raises(InvalidArgument):
        decode_body(source([]), {**headers, "x-amz-decoded-content-length": "-1"}, auth)
    # without the header the length is not checked (botocore omits it for unsized streams)
    del headers["x-amz-decoded-content-length"]
    assert (await read([wire], headers, auth))[0] == DOC_DATA


async def test_size_limit() -> None:
    headers = {"content-length": str(1000)}
    with pytest.raises(EntityTooLarge):
        decode_body(source([]), headers, ANONYMOUS, max_size=999)
    await fails(EntityTooLarge, pieces(b"x" * 1000, 100), {}, max_size=999)
    wire = encode_unsigned([b"x" * 600, b"x" * 600])
    await fails(EntityTooLarge, [wire], {"x-amz-content-sha256": UNSIGNED_TRAILER}, max_size=999)


# --- plain bodies and their digests -------------------------------------------------------------


async def test_botocore_plain_body_with_crc32_header() -> None:
    payload = b"plain body " * 300
    headers, wire, auth = captured_put("http://127.0.0.1:9000", Body=payload)
    assert headers["x-amz-content-sha256"] == sha256_hex(payload)
    assert wire == payload
    data, reader = await read(pieces(wire, 1000), headers, auth)
    assert data == payload and reader.checksums == {"x-amz-checksum-crc32": crc32(payload)}
    # the sha256 is checked first, the checksum after
    await fails(XAmzContentSHA256Mismatch, [flip(wire, 5)], headers, auth)
    unsigned = {**headers, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    error = await fails(BadDigest, [flip(wire, 5)], unsigned)
    assert error.message == "The CRC32 you specified did not match the calculated checksum."


async def test_plain_length_must_match_content_length() -> None:
    headers = {"content-length": "10", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    assert (await read([b"0123456789"], headers))[0] == b"0123456789"
    await fails(IncompleteBody, [b"012345678"], headers)
    await fails(IncompleteBody, [b"0123456789", b"X"], headers)
    await fails(IncompleteBody, [], headers)


async def test_content_md5() -> None:
    payload = b"md5 me"
    good = b64(hashlib.md5(payload).digest())
    reader = (await read([payload], {"content-md5": good}))[1]
    assert reader.md5_hex == hashlib.md5(payload).hexdigest()
    error = await fails(BadDigest, [payload + b"!"], {"content-md5": good})
    assert error.message == "The Content-MD5 you specified did not match what we received."
    for bad in ("not base64", b64(b"short"), ""):
        with pytest.raises(InvalidDigest):
            decode_body(source([payload]), {"content-md5": bad}, ANONYMOUS)
    # Content-MD5 with an aws-chunked body is checked against the decoded payload
    wire = encode_unsigned([payload], {"x-amz-checksum-crc32": crc32(payload)})
    headers = {**unsigned_headers(payload), "content-md5": good}
    assert (await read(pieces(wire, 1), headers))[0] == payload


CHECKSUMS: dict[str, Callable[[bytes], bytes]] = {
    "crc32": lambda d: zlib.crc32(d).to_bytes(4, "big"),
    "crc32c": lambda d: google_crc32c.value(d).to_bytes(4, "big"),
    "sha1": lambda d: hashlib.sha1(d).digest(),
    "sha256": lambda d: hashlib.sha256(d).digest(),
}


@pytest.mark.parametrize("algorithm", CHECKSUMS)
@pytest.mark.parametrize("where", ["header", "trailer"])
async def test_flexible_checksums(algorithm: str, where: str) -> None:
    payload = b"checksummed " * 77
    value = b64(CHECKSUMS[algorithm](payload))
    name = f"x-amz-checksum-{algorithm}"
    if where == "header":
        headers, wire = {name: value}, payload
    else:
        headers = unsigned_headers(payload, algorithm)
        wire = encode_unsigned(pieces(payload, 100), {name: value})
    data, reader = await read(random_pieces(wire), headers)
    assert data == payload and reader.checksums == {name: value}
    bad = b64(CHECKSUMS[algorithm](b"other"))
    tampered = wire.replace(value.encode(), bad.encode()) if where == "trailer" else wire
    headers = {**headers, name: bad} if where == "header" else headers
    error = await fails(BadDigest, [tampered], headers)
    assert algorithm.upper() in error.message


def test_checksum_header_values_are_validated() -> None:
    for value in ("", "AAAA", "not base64!", b64(b"\0" * 5)):
        with pytest.raises(ClientError, match="x-amz-checksum-crc32 header is invalid"):
            decode_body(source([]), {"x-amz-checksum-crc32": value}, ANONYMOUS)
    two = {"x-amz-checksum-crc32": "AAAAAA==", "x-amz-checksum-sha1": b64(b"\0" * 20)}
    with pytest.raises(ClientError, match="Multiple checksum"):
        decode_body(source([]), two, ANONYMOUS)
    header_and_trailer = {**unsigned_headers(b""), "x-amz-checksum-sha1": b64(b"\0" * 20)}
    with pytest.raises(ClientError, match="Multiple checksum"):
        decode_body(source([]), header_and_trailer, ANONYMOUS)
    with pytest.raises(InvalidArgument):
        decode_body(
            source([]), {**unsigned_headers(b""), "x-amz-trailer": "x-amz-meta-a"}, ANONYMOUS
        )
    with pytest.raises(ClientError, match="aws-chunked"):
        decode_body(source([]), {"x-amz-trailer": "x-amz-checksum-crc32"}, ANONYMOUS)
    with pytest.raises(ClientError, match="aws-chunked"):  # else the framing would be stored
        decode_body(source([]), {"content-encoding": "gzip, aws-chunked"}, ANONYMOUS)
    mismatch = {"x-amz-checksum-crc32": "AAAAAA==", "x-amz-sdk-checksum-algorithm": "SHA256"}
    with pytest.raises(InvalidArgument):
        decode_body(source([]), mismatch, ANONYMOUS)
    with pytest.raises(InvalidArgument):
        decode_body(source([]), {"x-amz-content-sha256": "nonsense"}, ANONYMOUS)


async def test_requested_checksum_is_computed() -> None:
    payload = b"compute it for me"
    headers = {"x-amz-sdk-checksum-algorithm": "crc32c"}
    reader = (await read([payload], headers))[1]
    assert reader.checksums == {"x-amz-checksum-crc32c": b64(CHECKSUMS["crc32c"](payload))}


async def test_crc64nvme_needs_awscrt() -> None:
    """CRC64NVME is computed with awscrt when it is installed, refused clearly otherwise."""
    value = b64((0xAE8B14860A799888).to_bytes(8, "big"))  # the check value of "123456789"
    if HAS_AWSCRT:
        reader = (await read([b"1234", b"56789"], {"x-amz-checksum-crc64nvme": value}))[1]
        assert reader.checksums == {"x-amz-checksum-crc64nvme": value}
    else:
        with pytest.raises(NotImplementedOp):
            decode_body(source([]), {"x-amz-checksum-crc64nvme": value}, ANONYMOUS)


# --- the reader ---------------------------------------------------------------------------------


async def test_results_are_final_only_when_complete() -> None:
    reader = decode_body(source([b"abc", b"def"]), {}, ANONYMOUS)
    assert (await reader.__anext__(), reader.complete, reader.md5_hex) == (b"abc", False, "")
    assert [p async for p in reader] == [b"def"]
    assert reader.complete and reader.md5_hex == hashlib.md5(b"abcdef").hexdigest()
    early = decode_body(source([b"abc", b"def"]), {}, ANONYMOUS)
    await early.__anext__()
    await early.aclose()
    assert not early.complete


def test_stored_content_encoding() -> None:
    assert stored_content_encoding(None) is None
    assert stored_content_encoding("aws-chunked") is None
    assert stored_content_encoding("gzip,aws-chunked") == "gzip"
    assert stored_content_encoding("aws-chunked, gzip, br") == "gzip, br"
