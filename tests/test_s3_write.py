"""The write path end to end with boto3 (default checksums on and off) against a real gateway
over HDFS, the object-store driver (moto) and local files, plus the fault cases."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import os
import socket
import subprocess
import uuid
import zlib
from typing import Any

import hdfs_native
import pytest
from botocore.exceptions import ClientError

from tests.support.gateway import (
    ADMIN_KEY,
    ADMIN_SECRET,
    ALICE,
    ALICE_SECRET,
    GatewayProcess,
)
from tests.support.gateway import WREADER as READER
from tests.support.gateway import WREADER_SECRET as READER_SECRET
from tests.support.hadoop import classpath
from tests.support.hdfs import HdfsCluster
from tests.support.ports import poll_until

MiB = 1 << 20


BUCKETS = ["hbkt", "lbkt", "obkt"]


def client(
    gw: GatewayProcess, checksums: bool = True, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET
) -> Any:
    mode = "when_supported" if checksums else "when_required"
    return gw.client(
        key, secret, request_checksum_calculation=mode, response_checksum_validation=mode
    )


@pytest.mark.parametrize("checksums", [True, False], ids=["crc32", "plain"])
@pytest.mark.parametrize("bucket", BUCKETS)
def test_put_get_with_headers_and_md5_etag(
    wgw: GatewayProcess, bucket: str, checksums: bool
) -> None:
    s3 = client(wgw, checksums)
    body = os.urandom(3 * MiB + 5)
    key = f"put/{uuid.uuid4().hex}.bin"
    r = s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType="application/x-test",
        CacheControl="max-age=5",
        ContentDisposition="attachment",
        Metadata={"team": "ml", "v": "2"},
    )
    md5 = hashlib.md5(body).hexdigest()
    assert r["ETag"] == f'"{md5}"'
    assert "x-amz-version-id" not in r["ResponseMetadata"]["HTTPHeaders"]
    got = s3.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == body
    assert got["ETag"] == f'"{md5}"'
    assert got["ContentType"] == "application/x-test"
    assert got["CacheControl"] == "max-age=5" and got["ContentDisposition"] == "attachment"
    assert got["Metadata"] == {"team": "ml", "v": "2"}
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]
    assert listed[0]["ETag"] == f'"{md5}"' and listed[0]["Size"] == len(body)


def test_read_your_writes_despite_a_long_ttl(wgw: GatewayProcess) -> None:
    s3 = client(wgw)
    key = f"ryw/{uuid.uuid4().hex}"
    with pytest.raises(ClientError):
        s3.head_object(Bucket="hbkt", Key=key)  # a negative entry is now cached
    s3.put_object(Bucket="hbkt", Key=key, Body=b"one")
    assert s3.get_object(Bucket="hbkt", Key=key)["Body"].read() == b"one"
    s3.put_object(Bucket="hbkt", Key=key, Body=b"two!")
    assert s3.get_object(Bucket="hbkt", Key=key)["Body"].read() == b"two!"
    s3.delete_object(Bucket="hbkt", Key=key)
    with pytest.raises(ClientError):
        s3.get_object(Bucket="hbkt", Key=key)


def test_bad_digests_write_nothing(wgw: GatewayProcess) -> None:
    s3 = client(wgw, checksums=False)
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="hbkt", Key="bad-md5", Body=b"data", ContentMD5=wrong_md5)
    assert err.value.response["Error"]["Code"] == "BadDigest"
    wrong_crc = base64.b64encode(zlib.crc32(b"other").to_bytes(4, "big")).decode()
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="hbkt", Key="bad-crc", Body=b"data", ChecksumCRC32=wrong_crc)
    assert err.value.response["Error"]["Code"] == "BadDigest"
    for key in ("bad-md5", "bad-crc"):
        with pytest.raises(ClientError):
            s3.head_object(Bucket="hbkt", Key=key)


def test_checksum_is_verified_and_returned(wgw: GatewayProcess) -> None:
    s3 = client(wgw)
    r = s3.put_object(Bucket="lbkt", Key="crc", Body=b"hello", ChecksumAlgorithm="SHA256")
    assert r["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b"hello").digest()).decode()
    got = s3.get_object(Bucket="lbkt", Key="crc", ChecksumMode="ENABLED")
    assert got["Body"].read() == b"hello"


def test_create_only_put(wgw: GatewayProcess) -> None:
    s3 = client(wgw)
    key = f"once/{uuid.uuid4().hex}"
    s3.put_object(Bucket="hbkt", Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="hbkt", Key=key, Body=b"second", IfNoneMatch="*")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket="hbkt", Key=key)["Body"].read() == b"first"


@pytest.mark.parametrize("bucket", BUCKETS)
def test_multipart_upload(wgw: GatewayProcess, bucket: str) -> None:
    s3 = client(wgw)
    key = f"mpu/{uuid.uuid4().hex}.bin"
    parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(MiB + 3)]
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType="model/x")["UploadId"]
    assert any(
        u["UploadId"] == up for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    )
    etags = [
        s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=i + 1, Body=d)["ETag"]
        for i, d in enumerate(parts_data)
    ]
    listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=up)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 2, 3]
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key=key)  # nothing visible before Complete
    r = s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]},
    )
    want = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in parts_data)).hexdigest()
    assert r["ETag"] == f'"{want}-3"'
    got = s3.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == b"".join(parts_data)
    assert got["ETag"] == f'"{want}-3"' and got["ContentType"] == "model/x"
    with pytest.raises(ClientError) as err:
        s3.list_parts(Bucket=bucket, Key=key, UploadId=up)
    assert err.value.response["Error"]["Code"] == "NoSuchUpload"
    assert all(
        not k.startswith(".unionstore")
        for k in (c["Key"] for c in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
    )


def test_multipart_errors_and_abort(wgw: GatewayProcess) -> None:
    s3 = client(wgw)
    key = f"mpu-err/{uuid.uuid4().hex}"
    up = s3.create_multipart_upload(Bucket="hbkt", Key=key)["UploadId"]
    small = s3.upload_part(Bucket="hbkt", Key=key, UploadId=up, PartNumber=1, Body=b"x" * 100)[
        "ETag"
    ]
    last = s3.upload_part(Bucket="hbkt", Key=key, UploadId=up, PartNumber=2, Body=b"y")["ETag"]

    def complete(parts: list[tuple[int, str]]) -> str:
        with pytest.raises(ClientError) as err:
            s3.complete_multipart_upload(
                Bucket="hbkt",
                Key=key,
                UploadId=up,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]},
            )
        return str(err.value.response["Error"]["Code"])

    assert complete([(1, small), (2, last)]) == "EntityTooSmall"
    assert complete([(2, last), (1, small)]) == "InvalidPartOrder"
    assert complete([(1, '"00000000000000000000000000000000"')]) == "InvalidPart"
    assert complete([(3, last)]) == "InvalidPart"
    s3.abort_multipart_upload(Bucket="hbkt", Key=key, UploadId=up)
    with pytest.raises(ClientError) as err:
        s3.upload_part(Bucket="hbkt", Key=key, UploadId=up, PartNumber=1, Body=b"z")
    assert err.value.response["Error"]["Code"] == "NoSuchUpload"


def test_upload_part_copy_with_ranges(wgw: GatewayProcess) -> None:
    s3 = client(wgw)
    src = os.urandom(12 * MiB)
    s3.put_object(Bucket="lbkt", Key="upc-src", Body=src)
    key = f"upc/{uuid.uuid4().hex}"
    up = s3.create_multipart_upload(Bucket="hbkt", Key=key)["UploadId"]
    e1 = s3.upload_part_copy(
        Bucket="hbkt",
        Key=key,
        UploadId=up,
        PartNumber=1,
        CopySource={"Bucket": "lbkt", "Key": "upc-src"},
        CopySourceRange=f"bytes=0-{6 * MiB - 1}",
    )["CopyPartResult"]["ETag"]
    e2 = s3.upload_part_copy(
        Bucket="hbkt",
        Key=key,
        UploadId=up,
        PartNumber=2,
        CopySource={"Bucket": "lbkt", "Key": "upc-src"},
        CopySourceRange=f"bytes={10 * MiB}-{12 * MiB - 1}",
    )["CopyPartResult"]["ETag"]
    s3.complete_multipart_upload(
        Bucket="hbkt",
        Key=key,
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
    )
    assert s3.get_object(Bucket="hbkt", Key=key)["Body"].read() == src[: 6 * MiB] + src[10 * MiB :]


def test_copy_object_across_backends_and_directives(wgw: GatewayProcess) -> None:
    s3 = client(wgw)
    body = os.urandom(2 * MiB)
    s3.put_object(Bucket="obkt", Key="copy-src", Body=body, ContentType="a/b", Metadata={"k": "v"})
    etag = s3.head_object(Bucket="obkt", Key="copy-src")["ETag"]
    r = s3.copy_object(
        Bucket="hbkt", Key="copied", CopySource={"Bucket": "obkt", "Key": "copy-src"}
    )
    assert r["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket="hbkt", Key="copied")
    assert (
        got["Body"].read() == body and got["ContentType"] == "a/b" and got["Metadata"] == {"k": "v"}
    )
    s3.copy_object(
        Bucket="lbkt",
        Key="copied2",
        CopySource={"Bucket": "obkt", "Key": "copy-src"},
        MetadataDirective="REPLACE",
        ContentType="c/d",
        Metadata={"n": "1"},
    )
    got = s3.head_object(Bucket="lbkt", Key="copied2")
    assert got["ContentType"] == "c/d" and got["Metadata"] == {"n": "1"}
    with pytest.raises(ClientError) as err:
        s3.copy_object(
            Bucket="lbkt",
            Key="copied3",
            CopySource={"Bucket": "obkt", "Key": "copy-src"},
            CopySourceIfNoneMatch=etag,
        )
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as err:
        s3.copy_object(
            Bucket="obkt", Key="copy-src", CopySource={"Bucket": "obkt", "Key": "copy-src"}
        )
    assert err.value.response["Error"]["Code"] == "InvalidArgument"


def test_delete_objects_quiet_and_per_key_errors(wgw: GatewayProcess) -> None:
    s3 = client(wgw)
    keys = [f"del/{i}" for i in range(5)]
    for k in keys:
        s3.put_object(Bucket="hbkt", Key=k, Body=b"x")
    r = s3.delete_objects(
        Bucket="hbkt", Delete={"Objects": [{"Key": k} for k in [*keys, "del/missing"]]}
    )
    assert sorted(d["Key"] for d in r["Deleted"]) == sorted([*keys, "del/missing"])
    assert s3.list_objects_v2(Bucket="hbkt", Prefix="del/")["KeyCount"] == 0
    assert "del/" not in [
        p["Prefix"]
        for p in s3.list_objects_v2(Bucket="hbkt", Delimiter="/").get("CommonPrefixes", [])
    ]
    s3.put_object(Bucket="hbkt", Key="del/keep", Body=b"x")
    reader = client(wgw, key=READER, secret=READER_SECRET)
    r = reader.delete_objects(
        Bucket="hbkt", Delete={"Objects": [{"Key": "del/keep"}], "Quiet": True}
    )
    assert r["Errors"][0]["Code"] == "AccessDenied" and "Deleted" not in r
    assert s3.get_object(Bucket="hbkt", Key="del/keep")["Body"].read() == b"x"


def test_buckets_under_the_root(wgw: GatewayProcess) -> None:
    s3 = client(wgw)
    name = f"nb-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as err:
        s3.create_bucket(Bucket=name)
    assert err.value.response["Error"]["Code"] == "BucketAlreadyOwnedByYou"
    s3.put_object(Bucket=name, Key="a/b", Body=b"x")
    with pytest.raises(ClientError) as err:
        s3.delete_bucket(Bucket=name)
    assert err.value.response["Error"]["Code"] == "BucketNotEmpty"
    s3.delete_object(Bucket=name, Key="a/b")
    s3.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as err:
        s3.head_bucket(Bucket=name)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as err:
        s3.delete_bucket(Bucket="lbkt")
    assert err.value.response["Error"]["Code"] == "AccessDenied"


def test_identity_and_grants(wgw: GatewayProcess, hdfs: HdfsCluster, wroot: str) -> None:
    alice = client(wgw, key=ALICE, secret=ALICE_SECRET)
    alice.put_object(Bucket="alicebkt", Key="mine.txt", Body=b"by alice")
    owner = hdfs_native.Client(hdfs.url).get_file_info(f"{wroot}/alice/mine.txt").owner
    assert owner == "alice"
    with pytest.raises(ClientError) as err:  # HDFS refuses alice here: AccessDenied, not 500
        alice.put_object(Bucket="rootonly", Key="nope.txt", Body=b"x")
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    reader = client(wgw, key=READER, secret=READER_SECRET)
    with pytest.raises(ClientError) as err:
        reader.put_object(Bucket="hbkt", Key="ro", Body=b"x")
    assert err.value.response["Error"]["Code"] == "AccessDenied"


def test_client_disconnect_mid_upload_leaves_nothing(
    wgw: GatewayProcess, hdfs: HdfsCluster, wroot: str
) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{wgw.endpoint}/hbkt/cut-short.bin"
    req = AWSRequest(
        method="PUT",
        url=url,
        headers={
            "Host": f"127.0.0.1:{wgw.port}",
            "Content-Length": str(20 * MiB),
            "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        },
    )
    S3SigV4Auth(Credentials(ADMIN_KEY, ADMIN_SECRET), "s3", "us-east-1").add_auth(req)
    with socket.create_connection(("127.0.0.1", wgw.port)) as sock:
        head = (
            "PUT /hbkt/cut-short.bin HTTP/1.1\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
            + "\r\n"
        )
        sock.sendall(head.encode() + os.urandom(3 * MiB))
    client_ = hdfs_native.Client(hdfs.url)

    def leftovers() -> list[str]:
        return [
            s.path
            for s in client_.list_status(f"{wroot}/buckets/hbkt")
            if "cut-short" in s.path or ".unionstore-tmp-" in s.path
        ]

    poll_until(lambda: not leftovers(), timeout=30, what="the aborted upload to be cleaned up")
    with pytest.raises(ClientError):
        client(wgw).head_object(Bucket="hbkt", Key="cut-short.bin")


def test_hdfs_failure_mid_stream_is_a_clear_error(
    wgw: GatewayProcess, hdfs: HdfsCluster, wroot: str
) -> None:
    quota_dir = f"{wroot}/buckets/hbkt/quota"
    hdfs_native.Client(hdfs.url).mkdirs(quota_dir, create_parent=True)
    subprocess.run(
        [
            "java",
            "-cp",
            classpath(hdfs.conf_dir),
            "org.apache.hadoop.hdfs.tools.DFSAdmin",
            "-fs",
            hdfs.url,
            "-setSpaceQuota",
            "2m",
            quota_dir,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    s3 = client(wgw)
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="hbkt", Key="quota/too-big.bin", Body=os.urandom(8 * MiB))
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] in (403, 500, 503, 507)
    assert err.value.response["Error"]["Code"] != "InternalError"
    with pytest.raises(ClientError):
        s3.head_object(Bucket="hbkt", Key="quota/too-big.bin")
    assert [s.path for s in hdfs_native.Client(hdfs.url).list_status(quota_dir)] == []


def test_concurrent_uploads_of_one_key_never_mix(wgw: GatewayProcess) -> None:
    """The winner's body, its checksum and its metadata go together (the stored record once
    belonged to whichever upload stat'ed last, so a GET failed its CRC32 check)."""
    bodies = [bytes([i]) * (12 * MiB) for i in range(4)]

    def put(i: int) -> None:
        client(wgw).put_object(
            Bucket="hbkt", Key="race.bin", Body=bodies[i], Metadata={"n": str(i)}
        )

    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(put, range(4)))
        got = client(wgw).get_object(Bucket="hbkt", Key="race.bin", ChecksumMode="ENABLED")
        body = got["Body"].read()  # botocore checks the CRC32 the gateway stored
        assert body in bodies
        assert got["Metadata"] == {"n": str(body[0])}
