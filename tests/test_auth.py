"""Request authentication against botocore's own signers; no server, no network.

Requests are signed by a real boto3 client whose ``before-send`` hook captures the prepared
request and aborts before any connection is made, or by botocore's signer classes directly,
or taken from the AWS documentation's worked examples.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import HmacV1Auth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from unionstore.errors import (
    AuthError,
    AuthorizationHeaderMalformed,
    ClientError,
    InvalidAccessKeyId,
    InvalidArgument,
    RequestExpired,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
    UnionstoreError,
)
from unionstore.s3.auth import AuthResult, SignedRequest, authenticate, chunk_signature

AK = "AKIDUNIONSTORE"
SK = "sec/ret+Key=with~odd&chars"
ENDPOINT = "http://127.0.0.1:9000"
KEYS = [
    "plain.txt",
    "a b/c d.txt",
    "ünïcödé/ключ/日本.bin",
    "a+b=c&d",
    "tilde~name",
    "looks%2Fencoded%20already",
    "double//slash/",
    "/leading",
    "dots/../and/./x",
    "*'()!$,;:@[]",
]


def secrets(access_key: str) -> str | None:
    return {AK: SK}.get(access_key)


class Captured(Exception):
    pass


def client(signature_version: str = "s3v4", style: str = "path", endpoint: str = ENDPOINT) -> Any:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="eu-west-3",
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        config=Config(
            signature_version=signature_version,
            s3={"addressing_style": style},
            retries={"max_attempts": 1},
        ),
    )

    def abort(request: Any, **_: Any) -> None:
        raise Captured(request)

    s3.meta.events.register("before-send.s3", abort)
    return s3


def from_url(
    method: str, url: str, headers: dict[str, Any], host_bucket: str | None = None
) -> SignedRequest:
    parts = urlsplit(url)
    lowered = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in headers.items()}
    lowered.setdefault("host", parts.netloc)
    return SignedRequest(method, parts.path, parts.query, lowered, host_bucket)


def capture(
    s3: Any, operation: str, host_bucket: str | None = None, **params: Any
) -> SignedRequest:
    with pytest.raises(Captured) as info:
        getattr(s3, operation)(**params)
    request = info.value.args[0]
    return from_url(request.method, request.url, dict(request.headers.items()), host_bucket)


def presign(s3: Any, operation: str, expires: int = 3600, **params: Any) -> SignedRequest:
    url = s3.generate_presigned_url(operation, Params=params, ExpiresIn=expires)
    method = {"put_object": "PUT", "head_object": "HEAD"}.get(operation, "GET")
    return from_url(method, url, {})


Malformed = AuthorizationHeaderMalformed
Mismatch = SignatureDoesNotMatch


def later(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


# --- accepted ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(
    ("operation", "extra"),
    [
        ("get_object", {}),
        ("head_object", {}),
        ("delete_object", {}),
        ("put_object", {"Body": b"x"}),
    ],
)
@pytest.mark.parametrize(("version", "method"), [("s3v4", "sigv4-header"), ("s3", "sigv2-header")])
def test_header_signed_requests_verify(
    key: str, operation: str, extra: dict[str, Any], version: str, method: str
) -> None:
    req = capture(client(version), operation, Bucket="bkt", Key=key, **extra)
    result = authenticate(req, secrets)
    assert (result.access_key, result.method) == (AK, method)
    if version == "s3v4":
        assert result.payload_hash == req.headers["x-amz-content-sha256"]
        assert result.scope is not None and result.scope.endswith("/eu-west-3/s3/aws4_request")
        assert result.amz_date == req.headers["x-amz-date"]
        assert result.seed_signature is not None and result.signing_key is not None
    else:
        assert result.payload_hash is None and result.signing_key is None


@pytest.mark.parametrize("version", ["s3v4", "s3"])
@pytest.mark.parametrize(
    ("operation", "params"),
    [
        (
            "list_objects_v2",
            {"Prefix": "a b", "ContinuationToken": "t+/=k~%2F", "StartAfter": "ü&x"},
        ),
        ("list_objects", {"Prefix": "p+q", "Delimiter": "/", "Marker": "m=1&n"}),
        ("list_object_versions", {"Prefix": "x"}),
        ("get_bucket_location", {}),
        ("get_bucket_acl", {}),
        ("create_multipart_upload", {"Key": "big file+"}),
        (
            "upload_part",
            {"Key": "k", "PartNumber": 3, "UploadId": "id with space+/=", "Body": b"p"},
        ),
        ("list_parts", {"Key": "k", "UploadId": "u=1"}),
        ("abort_multipart_upload", {"Key": "k", "UploadId": "u"}),
        ("get_object", {"Key": "k", "VersionId": "v+1", "ResponseContentType": "text/plain; a=b"}),
        ("get_object_tagging", {"Key": "k"}),
        ("delete_objects", {"Delete": {"Objects": [{"Key": "a b"}]}}),
    ],
)
def test_query_and_subresources_verify(
    version: str, operation: str, params: dict[str, Any]
) -> None:
    req = capture(client(version), operation, Bucket="bkt", **params)
    assert authenticate(req, secrets).access_key == AK


def test_list_buckets_verifies() -> None:
    for version in ("s3v4", "s3"):
        req = capture(client(version), "list_buckets")
        assert req.raw_path == "/"
        assert authenticate(req, secrets).access_key == AK


def test_query_order_does_not_matter_for_sigv4() -> None:
    req = capture(client(), "list_objects_v2", Bucket="bkt", Prefix="a b", StartAfter="z")
    shuffled = "&".join(reversed(req.raw_query.split("&")))
    assert authenticate(replace(req, raw_query=shuffled), secrets).method == "sigv4-header"


def test_virtual_hosted_requests_need_the_host_bucket_for_sigv2() -> None:
    v2 = client("s3", style="virtual", endpoint="http://s3.example.test")
    for operation, params in [("get_object", {"Key": "a b"}), ("list_objects_v2", {})]:
        req = capture(v2, operation, host_bucket="bkt", Bucket="bkt", **params)
        assert req.headers["host"] == "bkt.s3.example.test"
        assert authenticate(req, secrets).method == "sigv2-header"
        with pytest.raises(Mismatch):
            authenticate(replace(req, host_bucket=None), secrets)
    v4 = client("s3v4", style="virtual", endpoint="http://s3.example.test")
    req = capture(v4, "get_object", Bucket="bkt", Key="a b")
    assert authenticate(req, secrets).method == "sigv4-header"


def test_non_ascii_header_values_verify() -> None:
    # boto3 refuses non-ASCII metadata; other clients send it as latin-1 or UTF-8 bytes.
    for signer in (S3SigV4Auth(Credentials(AK, SK), "s3", "r"), HmacV1Auth(Credentials(AK, SK))):
        request = AWSRequest("PUT", f"{ENDPOINT}/b/k", headers={"x-amz-meta-n": "café"})
        signer.add_auth(request)
        req = from_url("PUT", request.url, dict(request.headers.items()))
        assert authenticate(req, secrets).access_key == AK


@pytest.mark.parametrize("key", KEYS)
def test_presigned_urls_verify(key: str) -> None:
    extra: dict[str, Any] = {"ResponseContentDisposition": 'attachment; filename="a b+c.txt"'}
    for version, method in [("s3v4", "sigv4-query"), ("s3", "sigv2-query")]:
        req = presign(client(version), "get_object", Bucket="bkt", Key=key, **extra)
        result = authenticate(req, secrets)
        assert (result.access_key, result.method) == (AK, method)
        if version == "s3v4":
            assert result.payload_hash == "UNSIGNED-PAYLOAD"


def test_presigned_put_with_content_type() -> None:
    v4 = presign(client(), "put_object", Bucket="b", Key="k", ContentType="text/csv")
    with pytest.raises(Mismatch):  # SigV4 signs the header: it must be sent
        authenticate(v4, secrets)
    signed = replace(v4, headers={**v4.headers, "content-type": "text/csv"})
    assert authenticate(signed, secrets).method == "sigv4-query"
    v2 = presign(client("s3"), "put_object", Bucket="b", Key="k", ContentType="text/csv")
    assert "content-type=text%2Fcsv" in v2.raw_query  # SigV2 moved it into the query
    assert authenticate(v2, secrets).method == "sigv2-query"


def test_sigv4_with_date_header_instead_of_x_amz_date() -> None:
    request = AWSRequest("GET", f"{ENDPOINT}/bkt/k", headers={"Date": "placeholder"})
    S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(request)
    req = from_url("GET", request.url, dict(request.headers.items()))
    assert "x-amz-date" not in req.headers
    assert authenticate(req, secrets).amz_date is not None


def test_path_encoded_beyond_rfc3986_verifies_as_sent() -> None:
    request = AWSRequest("GET", f"{ENDPOINT}/bkt/%7Etilde+plus")  # an old SDK's encoding
    S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(request)
    req = from_url("GET", request.url, dict(request.headers.items()))
    assert authenticate(req, secrets).method == "sigv4-header"


def test_sigv2_with_x_amz_date_header() -> None:
    request = AWSRequest("GET", f"{ENDPOINT}/bkt/k", headers={"X-Amz-Date": "x"})
    signer = HmacV1Auth(Credentials(AK, SK))
    date = signer._get_date()
    request.headers.replace_header("X-Amz-Date", date)
    signer.add_auth(request)  # botocore signs the Date line too; AWS signs it empty
    req = from_url("GET", request.url, dict(request.headers.items()))
    assert authenticate(req, secrets).method == "sigv2-header"
    no_date = {k: v for k, v in req.headers.items() if k != "date"}
    with pytest.raises(Mismatch):
        authenticate(replace(req, headers=no_date), secrets)


def test_anonymous() -> None:
    for query in ("", "list-type=2&prefix=a%20b", "acl", "X-Amz-Date=20260101T000000Z"):
        result = authenticate(SignedRequest("GET", "/b/k", query, {"host": "h"}), secrets)
        assert result == AuthResult(access_key=None, method="anonymous")


# --- the AWS documentation's worked examples ---------------------------------------------------

DOC_AK = "AKIAIOSFODNN7EXAMPLE"
DOC_SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_NOW = datetime(2013, 5, 24, 0, 5, tzinfo=UTC)
DOC_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def doc_secrets(access_key: str) -> str | None:
    return {DOC_AK: DOC_SK}.get(access_key)


def test_aws_example_get_object() -> None:
    signature = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    headers = {
        "host": "examplebucket.s3.amazonaws.com",
        "range": "bytes=0-9",
        "x-amz-content-sha256": DOC_EMPTY,
        "x-amz-date": "20130524T000000Z",
        "authorization": f"AWS4-HMAC-SHA256 Credential={DOC_AK}/20130524/us-east-1/s3/"
        "aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        f"Signature={signature}",
    }
    req = SignedRequest("GET", "/test.txt", "", headers)
    assert authenticate(req, doc_secrets, now=DOC_NOW).seed_signature == signature
    with pytest.raises(Mismatch):
        authenticate(
            replace(req, headers={**headers, "range": "bytes=0-10"}), doc_secrets, now=DOC_NOW
        )


def test_aws_example_presigned_url() -> None:
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2F"
        "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&"
        "X-Amz-SignedHeaders=host&X-Amz-Signature="
        "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )
    req = SignedRequest("GET", "/test.txt", query, {"host": "examplebucket.s3.amazonaws.com"})
    assert authenticate(req, doc_secrets, now=DOC_NOW).method == "sigv4-query"
    at_expiry = DOC_NOW + timedelta(seconds=86400 - 300)
    assert authenticate(req, doc_secrets, now=at_expiry).method == "sigv4-query"
    with pytest.raises(RequestExpired):
        authenticate(req, doc_secrets, now=at_expiry + timedelta(seconds=1))


def test_aws_example_streaming_upload_and_chunk_signatures() -> None:
    seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    signed = (
        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
        "x-amz-decoded-content-length;x-amz-storage-class"
    )
    headers = {
        "host": "s3.amazonaws.com",
        "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": "66560",
        "content-length": "66824",
        "authorization": f"AWS4-HMAC-SHA256 Credential={DOC_AK}/20130524/us-east-1/s3/"
        f"aws4_request,SignedHeaders={signed},Signature={seed}",
    }
    req = SignedRequest("PUT", "/examplebucket/chunkObject.txt", "", headers)
    result = authenticate(req, doc_secrets, now=DOC_NOW)
    assert result.payload_hash == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    assert result.seed_signature == seed
    assert result.scope == "20130524/us-east-1/s3/aws4_request"
    assert result.amz_date == "20130524T000000Z" and result.signing_key is not None

    expected = [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ]
    previous = seed
    for chunk, want in zip((b"a" * 65536, b"a" * 1024, b""), expected, strict=True):
        digest = hashlib.sha256(chunk).hexdigest()
        previous = chunk_signature(
            result.signing_key, result.amz_date, result.scope, previous, digest
        )
        assert previous == want


# --- rejected ----------------------------------------------------------------------------------


def v4_request() -> SignedRequest:
    return capture(client(), "put_object", Bucket="bkt", Key="a b+c", Body=b"body")


def v2_request() -> SignedRequest:
    return capture(
        client("s3"), "put_object", Bucket="bkt", Key="a b+c", Body=b"b", ContentType="t/x"
    )


def with_headers(req: SignedRequest, **changes: str | None) -> SignedRequest:
    headers = {**req.headers, **{k.replace("_", "-"): v for k, v in changes.items()}}
    return replace(req, headers={k: v for k, v in headers.items() if v is not None})


def auth_header(req: SignedRequest, old: str, new: str) -> SignedRequest:
    return with_headers(req, authorization=req.headers["authorization"].replace(old, new))


OTHER_HASH = hashlib.sha256(b"other").hexdigest()
TAMPER_V4: list[tuple[str, Callable[[SignedRequest], SignedRequest], type[Exception]]] = [
    ("method", lambda r: replace(r, method="POST"), Mismatch),
    ("path", lambda r: replace(r, raw_path=r.raw_path + "x"), Mismatch),
    ("bucket", lambda r: replace(r, raw_path=r.raw_path.replace("bkt", "bk2")), Mismatch),
    ("added query", lambda r: replace(r, raw_query="acl"), Mismatch),
    ("signed header", lambda r: with_headers(r, host="evil:9000"), Mismatch),
    ("payload hash", lambda r: with_headers(r, x_amz_content_sha256=OTHER_HASH), Mismatch),
    ("signature", lambda r: auth_header(r, "Signature=", "Signature=0"), Mismatch),
    ("unknown key", lambda r: auth_header(r, AK, "AKIDOTHER"), InvalidAccessKeyId),
    ("no sha256", lambda r: with_headers(r, x_amz_content_sha256=None), ClientError),
    ("bad sha256", lambda r: with_headers(r, x_amz_content_sha256="abc"), InvalidArgument),
    ("no date", lambda r: with_headers(r, x_amz_date=None), AuthError),
    ("bad date", lambda r: with_headers(r, x_amz_date="20260101"), AuthError),
    ("scope date", lambda r: auth_header(r, "/eu-west-3", "1/eu-west-3"), Malformed),
    ("service", lambda r: auth_header(r, "/s3/", "/ec2/"), Malformed),
    ("terminator", lambda r: auth_header(r, "aws4_request", "aws5"), Malformed),
    ("no signature", lambda r: auth_header(r, "Signature=", "Sig="), Malformed),
    ("two schemes", lambda r: replace(r, raw_query="X-Amz-Signature=0"), InvalidArgument),
    (
        "scheme",
        lambda r: auth_header(r, "AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"),
        InvalidArgument,
    ),
]


@pytest.mark.parametrize(("name", "tamper", "error"), TAMPER_V4, ids=[t[0] for t in TAMPER_V4])
def test_sigv4_header_tampering(
    name: str, tamper: Callable[[SignedRequest], SignedRequest], error: type[Exception]
) -> None:
    req = v4_request()
    assert authenticate(req, secrets).method == "sigv4-header"
    with pytest.raises(error) as info:
        authenticate(tamper(req), secrets)
    assert type(info.value) is error


TAMPER_V2: list[tuple[str, Callable[[SignedRequest], SignedRequest], type[Exception]]] = [
    ("method", lambda r: replace(r, method="POST"), Mismatch),
    ("path", lambda r: replace(r, raw_path=r.raw_path + "x"), Mismatch),
    ("subresource", lambda r: replace(r, raw_query="acl"), Mismatch),
    ("content-type", lambda r: with_headers(r, content_type="t/y"), Mismatch),
    ("amz header", lambda r: with_headers(r, x_amz_acl="public-read"), Mismatch),
    ("unknown key", lambda r: auth_header(r, f"AWS {AK}:", "AWS NOPE:"), InvalidAccessKeyId),
    ("no date", lambda r: with_headers(r, date=None), AuthError),
    ("no colon", lambda r: auth_header(r, f"{AK}:", AK), Malformed),
]


@pytest.mark.parametrize(("name", "tamper", "error"), TAMPER_V2, ids=[t[0] for t in TAMPER_V2])
def test_sigv2_header_tampering(
    name: str, tamper: Callable[[SignedRequest], SignedRequest], error: type[Exception]
) -> None:
    req = v2_request()
    assert authenticate(req, secrets).method == "sigv2-header"
    with pytest.raises(error) as info:
        authenticate(tamper(req), secrets)
    assert type(info.value) is error


@pytest.mark.parametrize("make", [v4_request, v2_request])
def test_wrong_secret_and_clock_skew(make: Callable[[], SignedRequest]) -> None:
    req = make()
    with pytest.raises(Mismatch):
        authenticate(req, lambda _: "not the secret")
    assert authenticate(req, secrets, now=later(minutes=14)).access_key == AK
    assert authenticate(req, secrets, now=later(minutes=-14)).access_key == AK
    for skew in (16, -16):
        with pytest.raises(RequestTimeTooSkewed):
            authenticate(req, secrets, now=later(minutes=skew))
    assert authenticate(req, secrets, now=later(minutes=20), max_skew=timedelta(minutes=30))


def test_presigned_sigv4_rejections() -> None:
    s3 = client()
    req = presign(s3, "get_object", expires=60, Bucket="b", Key="k")
    assert authenticate(req, secrets, now=later(seconds=50)).method == "sigv4-query"
    with pytest.raises(RequestExpired):
        authenticate(req, secrets, now=later(minutes=2))
    # Signed in the future: fine within the skew, "not yet valid" beyond it.
    assert authenticate(req, secrets, now=later(minutes=-10))
    with pytest.raises(AuthError) as info:
        authenticate(req, secrets, now=later(minutes=-20))
    assert type(info.value) is AuthError and "not yet valid" in info.value.message
    # An old presign is not "skewed": only its expiry counts.
    week = presign(s3, "get_object", expires=604800, Bucket="b", Key="k")
    assert authenticate(week, secrets, now=later(days=6)).method == "sigv4-query"

    def query(old: str, new: str) -> SignedRequest:
        assert old in req.raw_query
        return replace(req, raw_query=req.raw_query.replace(old, new))

    signature = req.raw_query.rsplit("X-Amz-Signature=", 1)[1]
    cases: list[tuple[SignedRequest, type[Exception]]] = [
        (query("X-Amz-Signature=", "X-Amz-Signature=0"), Mismatch),
        (replace(req, raw_query=req.raw_query + "&acl"), Mismatch),
        (replace(req, raw_path="/b/other"), Mismatch),
        (query(AK, "AKIDOTHER"), InvalidAccessKeyId),
        (query("X-Amz-Expires=60", "X-Amz-Expires=604801"), Malformed),
        (query("X-Amz-Expires=60", "X-Amz-Expires=0"), Malformed),
        (query("X-Amz-Expires=60", "X-Amz-Expires=-1"), Malformed),
        (query("X-Amz-Expires=60", "X-Amz-Expires=1e3"), Malformed),
        (query("X-Amz-Expires=60", "X-Amz-Expires=" + "9" * 5000), Malformed),
        (query("X-Amz-Date=", "X-Amz-Date=1"), Malformed),
        (query("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=MD5"), Malformed),
        (query("&X-Amz-SignedHeaders=host", ""), Malformed),
        (query("%2Fs3%2F", "%2Fsqs%2F"), Malformed),
        (replace(req, raw_query=f"{req.raw_query}&X-Amz-Signature={signature}"), Malformed),
        (with_headers(req, authorization=f"AWS {AK}:x"), InvalidArgument),
        (replace(req, raw_query=req.raw_query + "&AWSAccessKeyId=x"), InvalidArgument),
    ]
    for tampered, error in cases:
        with pytest.raises(error) as caught:
            authenticate(tampered, secrets)
        assert type(caught.value) is error, tampered.raw_query


class PayloadQueryAuth(S3SigV4QueryAuth):  # type: ignore[misc]
    """A presigner that signs the payload hash it puts in the query, as some clients do."""

    def payload(self, request: Any) -> str:
        return OTHER_HASH


def test_presigned_sigv4_payload_hash_in_query() -> None:
    request = AWSRequest("PUT", f"{ENDPOINT}/b/k?X-Amz-Content-Sha256={OTHER_HASH}")
    PayloadQueryAuth(Credentials(AK, SK), "s3", "us-east-1", expires=60).add_auth(request)
    req = from_url("PUT", request.url, {})
    assert authenticate(req, secrets).payload_hash == OTHER_HASH
    with pytest.raises(Mismatch):
        authenticate(replace(req, raw_query=req.raw_query.replace(OTHER_HASH, "0" * 64)), secrets)
    with pytest.raises(InvalidArgument):
        authenticate(replace(req, raw_query=req.raw_query.replace(OTHER_HASH, "zz")), secrets)


def test_presigned_sigv2_rejections() -> None:
    req = presign(client("s3"), "get_object", expires=60, Bucket="b", Key="k")
    assert authenticate(req, secrets, now=later(seconds=50)).method == "sigv2-query"
    with pytest.raises(RequestExpired):
        authenticate(req, secrets, now=later(minutes=2))
    expires = req.raw_query.split("Expires=")[1]
    cases: list[tuple[str, type[Exception]]] = [
        (req.raw_query.replace("Signature=", "Signature=A"), Mismatch),
        (req.raw_query.replace(f"Expires={expires}", f"Expires={int(expires) + 1}"), Mismatch),
        (req.raw_query + "&versionId=3", Mismatch),
        (req.raw_query.replace(f"AWSAccessKeyId={AK}", "AWSAccessKeyId=NOPE"), InvalidAccessKeyId),
        (req.raw_query.replace(f"Expires={expires}", "Expires=soon"), Malformed),
        (req.raw_query.replace(f"Expires={expires}", "Expires=" + "9" * 5000), Malformed),
        (req.raw_query.replace(f"&Expires={expires}", ""), Malformed),
    ]
    for query, error in cases:
        with pytest.raises(error) as info:
            authenticate(replace(req, raw_query=query), secrets)
        assert type(info.value) is error, query


def test_presigned_sigv2_with_unencoded_plus_in_signature() -> None:
    s3 = client("s3")
    for n in range(200):
        req = presign(s3, "get_object", Bucket="b", Key=f"k{n}")
        if "%2B" in req.raw_query.split("Signature=")[1]:
            break
    raw_plus = replace(req, raw_query=req.raw_query.replace("%2B", "+"))
    assert authenticate(raw_plus, secrets).method == "sigv2-query"


# --- garbage -----------------------------------------------------------------------------------

GARBAGE_AUTHORIZATION = [
    "",
    "   ",
    "AWS",
    "AWS ",
    "AWS :",
    "AWS AK:",
    "AWS4-HMAC-SHA256",
    "AWS4-HMAC-SHA256 ",
    "AWS4-HMAC-SHA256 garbage",
    "AWS4-HMAC-SHA256 Credential=,SignedHeaders=,Signature=",
    "AWS4-HMAC-SHA256 Credential=a=b=c, SignedHeaders=host, Signature=x",
    "AWS4-HMAC-SHA256 Credential=/////, SignedHeaders=host, Signature=x",
    f"AWS4-HMAC-SHA256 Credential={AK}/2026Ω101/r/s3/aws4_request, SignedHeaders=h, Signature=x",
    f"AWS4-HMAC-SHA256 Credential={AK}/20260101/r/s3/aws4_request, SignedHeaders=;;, Signature=x",
    f"AWS4-HMAC-SHA256 Credential={AK}/20260101/r/s3/aws4_request, Credential=x, Signature=x",
    "AWS4-HMAC-SHA256 Credential=ÄKÏD/20260101/r/s3/aws4_request, SignedHeaders=host, Signature=ß",
    "AWS ÄKÏD:sïgnätürë",
    f"AWS {AK}:sïgnätürë\udcff",
    "Bearer token",
    "\x00\xff\u2028",
]


@pytest.mark.parametrize("authorization", GARBAGE_AUTHORIZATION)
def test_garbage_authorization_raises_only_our_errors(authorization: str) -> None:
    headers = {
        "host": "h",
        "authorization": authorization,
        "x-amz-date": "20260101T000000Z",
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        "date": "Thu, 01 Jan 2026 00:00:00 GMT",
    }
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(UnionstoreError):
        authenticate(SignedRequest("GET", "/b/k", "", headers), secrets, now=now)


def test_fuzzed_requests_raise_only_our_errors() -> None:
    rng = random.Random(1234)
    seeds = [
        v4_request(),
        v2_request(),
        presign(client(), "get_object", Bucket="b", Key="k ü"),
        presign(client("s3"), "get_object", Bucket="b", Key="k ü"),
    ]
    alphabet = "%=&/;:, +~ÿü\x00\udcffAZaz09-_.TZ"

    def mutate(text: str) -> str:
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            position = rng.randint(0, len(chars))
            if chars and rng.random() < 0.5:
                del chars[min(position, len(chars) - 1)]
            else:
                chars.insert(position, rng.choice(alphabet))
        return "".join(chars)

    outcomes: dict[str, int] = {}
    for _ in range(3000):
        req = rng.choice(seeds)
        field = rng.choice(["raw_path", "raw_query", "authorization", "x-amz-date", "date"])
        if field == "raw_path":
            req = replace(req, raw_path=mutate(req.raw_path))
        elif field == "raw_query":
            req = replace(req, raw_query=mutate(req.raw_query))
        else:
            req = with_headers(req, **{field.replace("-", "_"): mutate(req.headers.get(field, ""))})
        try:
            result = authenticate(req, secrets)
        except UnionstoreError as exc:
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
        else:
            outcomes[result.method] = outcomes.get(result.method, 0) + 1
    assert outcomes.get("SignatureDoesNotMatch", 0) > 100, outcomes


def test_naive_now_is_utc() -> None:
    req = v4_request()
    assert authenticate(req, secrets, now=datetime.now(UTC).replace(tzinfo=None)).access_key == AK
