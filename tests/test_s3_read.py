"""The S3 read path end to end: a real gateway process over real HDFS, moto and local files,
driven by boto3 (SigV4 and SigV2), presigned URLs and raw HTTP for malformed input."""

from __future__ import annotations

import http.client
import re
import time
import urllib.parse
from typing import Any

import hdfs_native
import httpx
import pytest
from botocore.exceptions import ClientError

from tests.support.gateway import (
    ADMIN_KEY,
    ADMIN_SECRET,
    FILES,
    READER_KEY,
    READER_SECRET,
    GatewayProcess,
)
from tests.support.hdfs import HdfsCluster

BACKENDS = ["hdfsb", "localb", "objb"]


def all_keys(s3: Any, bucket: str, **kw: Any) -> tuple[list[str], list[str]]:
    keys, prefixes = [], []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, **kw):
        keys += [c["Key"] for c in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    return keys, prefixes


@pytest.mark.parametrize("bucket", BACKENDS)
def test_list_and_get_every_backend(gateway: GatewayProcess, bucket: str) -> None:
    s3 = gateway.client()
    keys, _ = all_keys(s3, bucket, PaginationConfig={"PageSize": 2})
    assert keys == sorted(FILES, key=lambda k: k.encode())
    for key, data in FILES.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data


@pytest.mark.parametrize("bucket", BACKENDS)
def test_delimiter_listing(gateway: GatewayProcess, bucket: str) -> None:
    s3 = gateway.client()
    keys, prefixes = all_keys(s3, bucket, Delimiter="/")
    assert keys == ["a.b", "a0", "big.bin", "sp ace+plus=eq&amp.txt"]
    expected = ["a/", "é/"] if bucket == "objb" else ["a/", "emptydir/", "é/"]
    if bucket == "localb":
        expected = ["a/", "é/"]
    assert prefixes == expected
    assert all_keys(s3, bucket, Prefix="a/", Delimiter="/") == (["a/x"], ["a/y/"])


def test_union_bucket_merges_mounts(gateway: GatewayProcess) -> None:
    s3 = gateway.client()
    keys, _ = all_keys(s3, "union", PaginationConfig={"PageSize": 3})
    local_keys = [k for k in FILES if not k.startswith("a/")]
    want = local_keys + [f"a/{k}" for k in FILES] + [f"remote/{k}" for k in FILES]
    assert keys == sorted(want, key=lambda k: k.encode())
    _, prefixes = all_keys(s3, "union", Delimiter="/")
    assert "remote/" in prefixes and "a/" in prefixes
    assert s3.get_object(Bucket="union", Key="remote/a0")["Body"].read() == b"zero"
    assert s3.get_object(Bucket="union", Key="a/a/y/z.txt")["Body"].read() == b"deep"
    assert s3.get_object(Bucket="union", Key="a.b")["Body"].read() == b"file a.b"


def test_list_objects_v2_details(gateway: GatewayProcess) -> None:
    s3 = gateway.client()
    r = s3.list_objects_v2(Bucket="hdfsb", MaxKeys=0)
    assert r["KeyCount"] == 0 and "Contents" not in r
    r = s3.list_objects_v2(Bucket="hdfsb", MaxKeys=2, FetchOwner=True)
    assert r["KeyCount"] == 2 and r["IsTruncated"] is True
    assert r["Contents"][0]["Owner"]["DisplayName"]
    r2 = s3.list_objects_v2(Bucket="hdfsb", ContinuationToken=r["NextContinuationToken"])
    assert next(c["Key"] for c in r2["Contents"]) == sorted(FILES, key=str.encode)[2]
    r = s3.list_objects_v2(Bucket="hdfsb", StartAfter="a0")
    assert next(c["Key"] for c in r["Contents"]) == "big.bin"
    r = s3.list_objects_v2(Bucket="hdfsb", Prefix="sp ace", EncodingType="url")
    # asked for explicitly, botocore leaves the keys encoded
    assert [urllib.parse.unquote_plus(c["Key"]) for c in r["Contents"]] == [
        "sp ace+plus=eq&amp.txt"
    ]
    size = {c["Key"]: c["Size"] for c in s3.list_objects_v2(Bucket="hdfsb")["Contents"]}
    assert size["big.bin"] == len(FILES["big.bin"])


def test_list_objects_v1(gateway: GatewayProcess) -> None:
    s3 = gateway.client()
    keys = []
    for page in s3.get_paginator("list_objects").paginate(
        Bucket="localb", PaginationConfig={"PageSize": 2}
    ):
        keys += [c["Key"] for c in page.get("Contents", [])]
    assert keys == sorted(FILES, key=str.encode)
    r = s3.list_objects(Bucket="localb", Marker="a0", MaxKeys=1, Delimiter="/")
    assert r["IsTruncated"] is True and r["NextMarker"] == "big.bin"


def test_buckets_and_location(gateway: GatewayProcess) -> None:
    s3 = gateway.client()
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert {"hdfsb", "localb", "objb", "union", "public"} <= set(names)
    assert s3.get_bucket_location(Bucket="hdfsb")["LocationConstraint"] is None
    s3.head_bucket(Bucket="hdfsb")
    with pytest.raises(ClientError) as err:
        s3.head_bucket(Bucket="nosuchbucket")
    assert err.value.response["Error"]["Code"] == "404"
    with pytest.raises(ClientError) as err:
        s3.list_objects_v2(Bucket="nosuchbucket")
    assert err.value.response["Error"]["Code"] == "NoSuchBucket"


@pytest.mark.parametrize("bucket", BACKENDS)
def test_ranges(gateway: GatewayProcess, bucket: str) -> None:
    s3 = gateway.client()
    data = FILES["big.bin"]
    cases = {
        "bytes=0-0": data[:1],
        "bytes=100-": data[100:],
        "bytes=-17": data[-17:],
        "bytes=1048570-2097160": data[1048570:2097161],
        "bytes=5-999999999": data[5:],
    }
    for rng, want in cases.items():
        r = s3.get_object(Bucket=bucket, Key="big.bin", Range=rng)
        assert r["Body"].read() == want, rng
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert r["ContentRange"].endswith(f"/{len(data)}")
        assert r["ContentLength"] == len(want)
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="big.bin", Range=f"bytes={len(data)}-")
    assert err.value.response["Error"]["Code"] == "InvalidRange"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_etag_stable_not_md5_shaped_and_conditionals(gateway: GatewayProcess) -> None:
    s3 = gateway.client()
    h1 = s3.head_object(Bucket="hdfsb", Key="a0")
    h2 = s3.head_object(Bucket="hdfsb", Key="a0")
    etag = h1["ETag"]
    assert etag == h2["ETag"]
    assert not re.fullmatch(r'"[0-9a-f]{32}"', etag)
    assert h1["ContentLength"] == 4 and h1["LastModified"]
    assert s3.get_object(Bucket="hdfsb", Key="a0", IfMatch=etag)["Body"].read() == b"zero"
    for kwargs, status in [
        ({"IfMatch": '"nope"'}, 412),
        ({"IfNoneMatch": etag}, 304),
        ({"IfModifiedSince": h1["LastModified"]}, 304),
        ({"IfUnmodifiedSince": "Thu, 01 Jan 1998 00:00:00 GMT"}, 412),
    ]:
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket="hdfsb", Key="a0", **kwargs)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status, kwargs
    r = s3.get_object(
        Bucket="hdfsb",
        Key="a0",
        ResponseContentType="text/x-test",
        ResponseContentDisposition="attachment; filename=z",
    )
    assert r["ContentType"] == "text/x-test"
    assert r["ContentDisposition"] == "attachment; filename=z"


def test_missing_keys_and_directories(gateway: GatewayProcess) -> None:
    s3 = gateway.client()
    for key in ["nope", "a", "a/y", "a0/"]:
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket="hdfsb", Key=key)
        assert err.value.response["Error"]["Code"] == "NoSuchKey", key
    folder = s3.get_object(Bucket="hdfsb", Key="a/")  # a folder, as s3fs-fuse expects it
    assert folder["Body"].read() == b"" and folder["ContentType"] == "application/x-directory"


def test_sigv2_header_and_query(gateway: GatewayProcess) -> None:
    s3 = gateway.client(signature_version="s3")
    assert s3.get_object(Bucket="hdfsb", Key="a0")["Body"].read() == b"zero"
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "hdfsb", "Key": "a/x"})
    assert "Signature=" in url and "AWSAccessKeyId=" in url
    assert httpx.get(url).content == b"x" * 10


def test_presigned_sigv4_and_expiry(gateway: GatewayProcess) -> None:
    s3 = gateway.client(signature_version="s3v4")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "hdfsb", "Key": "é/ünï.bin"}, ExpiresIn=300
    )
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == FILES["é/ünï.bin"]
    short = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "hdfsb", "Key": "a0"}, ExpiresIn=1
    )
    deadline = time.monotonic() + 10
    while (r := httpx.get(short)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)  # waiting for the expiry itself, the condition under test
    assert r.status_code == 403
    assert b"<Code>AccessDenied</Code>" in r.content and b"expired" in r.content


def test_wrong_credentials_are_refused(gateway: GatewayProcess) -> None:
    cases = [
        (gateway.client("AKIANOBODY", "x"), "InvalidAccessKeyId"),
        (gateway.client(ADMIN_KEY, "wrong-secret"), "SignatureDoesNotMatch"),
        (
            gateway.client(ADMIN_KEY, "wrong-secret", signature_version="s3"),
            "SignatureDoesNotMatch",
        ),
    ]
    for s3, code in cases:
        with pytest.raises(ClientError) as err:
            s3.list_objects_v2(Bucket="hdfsb")
        assert err.value.response["Error"]["Code"] == code


def test_grants_and_anonymous(gateway: GatewayProcess) -> None:
    reader = gateway.client(READER_KEY, READER_SECRET)
    assert reader.get_object(Bucket="hdfsb", Key="a0")["Body"].read() == b"zero"
    assert [b["Name"] for b in reader.list_buckets()["Buckets"]] == ["hdfsb"]
    with pytest.raises(ClientError) as err:
        reader.get_object(Bucket="localb", Key="a0")
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    assert httpx.get(f"{gateway.endpoint}/public/hello.txt").content == b"hello anonymous"
    r = httpx.get(f"{gateway.endpoint}/hdfsb/a0")
    assert r.status_code == 403 and b"AccessDenied" in r.content


def _signed(
    gateway: GatewayProcess, method: str, raw_path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """Send a SigV4-signed request with the path exactly as given (no client normalisation)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method=method, url=gateway.endpoint + raw_path, headers=headers or {})
    S3SigV4Auth(Credentials(ADMIN_KEY, ADMIN_SECRET), "s3", "us-east-1").add_auth(req)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        conn.request(method, raw_path, headers=dict(req.headers.items()))
        resp = conn.getresponse()
        body = resp.read()
        return httpx.Response(resp.status, headers=resp.getheaders(), content=body)
    finally:
        conn.close()


@pytest.mark.parametrize(
    "raw_path,code",
    [
        ("/hdfsb/a/../a0", "InvalidArgument"),
        ("/hdfsb/a/%2E%2E/a0", "InvalidArgument"),
        ("/hdfsb/a%00b", "InvalidArgument"),
        ("/hdfsb/a//x", "InvalidArgument"),
        ("/hdfsb/%FF%FE", "InvalidArgument"),
        ("/hdfsb?list-type=3", "InvalidArgument"),
        ("/hdfsb?list-type=2&max-keys=-1", "InvalidArgument"),
        ("/hdfsb?list-type=2&continuation-token=garbage%21", "InvalidArgument"),
        ("/hdfsb?list-type=2&encoding-type=base64", "InvalidArgument"),
        ("/Bad_Bucket/x", "InvalidBucketName"),
    ],
)
def test_malformed_requests_get_4xx_with_an_s3_error_body(
    gateway: GatewayProcess, raw_path: str, code: str
) -> None:
    r = _signed(gateway, "GET", raw_path)
    assert 400 <= r.status_code < 500, r.text
    assert f"<Code>{code}</Code>" in r.text
    assert "<RequestId>" in r.text and r.headers["x-amz-request-id"]


def test_bad_headers(gateway: GatewayProcess) -> None:
    r = _signed(gateway, "GET", "/hdfsb/a0", {"Range": "bytes=abc"})
    assert r.status_code == 400 and "<Code>InvalidArgument</Code>" in r.text
    r = _signed(gateway, "GET", "/hdfsb/a0", {"Range": "bytes=0-1,3-4"})
    assert r.status_code == 200 and r.content == b"zero"  # a range list is served whole, as S3 does
    r = httpx.get(
        f"{gateway.endpoint}/hdfsb/a0", headers={"Authorization": "AWS4-HMAC-SHA256 garbage"}
    )
    assert r.status_code in (400, 403) and b"<Error>" in r.content
    r = httpx.get(f"{gateway.endpoint}/hdfsb/a0", headers={"X-Big": "x" * 70_000})
    assert 400 <= r.status_code < 500
    r = httpx.get(f"{gateway.endpoint}/hdfsb/a0", headers={"X-Big": "x" * 20_000})
    assert r.status_code in (400, 403, 431) and r.headers.get("x-amz-request-id")


def test_unsupported_methods_are_clear(gateway: GatewayProcess) -> None:
    r = _signed(gateway, "GET", "/hdfsb?acl")
    assert r.status_code == 501 and "<Code>NotImplemented</Code>" in r.text
    r = _signed(gateway, "PATCH", "/hdfsb/a0")
    assert r.status_code == 405 and "<Code>MethodNotAllowed</Code>" in r.text


def test_large_object_streams_with_bounded_memory(
    gateway: GatewayProcess, hdfs: HdfsCluster
) -> None:
    client = hdfs_native.Client(hdfs.url)
    path = urllib.parse.urlsplit(gateway.config["mounts"][1]["uri"]).path + "/huge.bin"
    block = bytes(range(256)) * 4096  # 1 MiB
    with client.create(path) as fh:
        for _ in range(300):
            fh.write(block)
    s3 = gateway.client()
    total = 0
    body = s3.get_object(Bucket="scratch", Key="huge.bin")["Body"]
    for chunk in body.iter_chunks(1 << 20):
        total += len(chunk)
    assert total == 300 * len(block)
    assert gateway.peak_rss_bytes() < 250 * 1024 * 1024
