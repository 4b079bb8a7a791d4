"""S3 write operations: PutObject, CopyObject, DeleteObject(s), buckets, multipart uploads.

Same shape as :mod:`unionstore.s3.operations`: parse the request, check grants, call the core
(``gw.writes``, ``gw.multipart``), render. Bodies go through :class:`BodyReader`, which decodes
aws-chunked framing and verifies signatures, Content-MD5 and x-amz-checksum-* as the bytes
stream past; the core publishes only after the reader has ended cleanly.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote

from starlette.responses import Response

from unionstore.errors import (
    AccessDenied,
    InvalidArgument,
    InvalidRange,
    NotModified,
    PreconditionFailed,
    UnionstoreError,
)
from unionstore.gateway import Gateway, ObjectInfo
from unionstore.s3 import xmlio
from unionstore.s3.bodies import BodyReader, stored_content_encoding
from unionstore.s3.http import check_preconditions, parse_range
from unionstore.s3.operations import S3Call

XML = "application/xml"
STORED_HEADERS = (
    "content-type",
    "content-encoding",
    "content-language",
    "content-disposition",
    "cache-control",
    "expires",
)


def object_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers S3 keeps with an object."""
    kept = {h: headers[h] for h in STORED_HEADERS if h in headers}
    kept.update({k: v for k, v in headers.items() if k.startswith("x-amz-meta-")})
    encoding = stored_content_encoding(kept.pop("content-encoding", None))
    if encoding:
        kept["content-encoding"] = encoding
    return kept


def _reader(call: S3Call, max_size: int | None = None) -> BodyReader:
    """The verified payload of the request; ``max_size`` bounds small XML documents."""
    if max_size is None:
        return BodyReader(call.body, call.headers, call.auth)
    return BodyReader(call.body, call.headers, call.auth, max_size=max_size)


async def _document(call: S3Call) -> bytes:
    """A small request document (XML), read whole."""
    return b"".join([chunk async for chunk in _reader(call, xmlio.MAX_XML_BYTES)])


def _checksum_headers(reader: BodyReader) -> dict[str, str]:
    return dict(reader.checksums)


async def put_object(gw: Gateway, call: S3Call) -> Response:
    assert call.bucket is not None and call.key is not None
    if "x-amz-copy-source" in call.headers:
        return await copy_object(gw, call)
    gw.authorize(call.principal, call.bucket, call.key, "write")
    if_none_match = call.headers.get("if-none-match")
    if if_none_match is not None and if_none_match.strip() != "*":
        raise InvalidArgument("If-None-Match on PutObject takes only '*'")
    reader = _reader(call)
    written = await gw.writes.put(
        call.bucket,
        call.key,
        call.principal,
        reader.__aiter__(),
        etag=lambda: f'"{reader.md5_hex}"',
        headers=object_headers(call.headers),
        late_headers=lambda: _checksum_headers(reader),
        create_only=if_none_match is not None,
    )
    return Response(status_code=200, headers={"ETag": written.etag, **_checksum_headers(reader)})


def copy_source(call: S3Call) -> tuple[str, str]:
    raw = unquote(call.headers["x-amz-copy-source"]).lstrip("/")
    raw = raw.partition("?versionId=")[0]
    bucket, _, key = raw.partition("/")
    if not bucket or not key:
        raise InvalidArgument("x-amz-copy-source must be /bucket/key")
    return bucket, key


async def _source(gw: Gateway, call: S3Call) -> ObjectInfo:
    bucket, key = copy_source(call)
    gw.authorize(call.principal, bucket, key, "read")
    src = await gw.stat_object(bucket, key)
    try:
        check_preconditions(
            call.headers, src.etag, src.status.mtime_ns, prefix="x-amz-copy-source-if-"
        )
    except NotModified:
        raise PreconditionFailed() from None
    return src


async def copy_object(gw: Gateway, call: S3Call) -> Response:
    assert call.bucket is not None and call.key is not None
    gw.authorize(call.principal, call.bucket, call.key, "write")
    src = await _source(gw, call)
    directive = call.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise InvalidArgument("Unknown metadata directive.")
    headers = object_headers(call.headers) if directive == "REPLACE" else None
    written = await gw.writes.copy(src, call.bucket, call.key, call.principal, headers=headers)
    body = xmlio.copy_result("CopyObjectResult", written.etag, written.mtime_ns)
    return Response(body, media_type=XML)


async def delete_object(gw: Gateway, call: S3Call) -> Response:
    assert call.bucket is not None and call.key is not None
    if "uploadId" in call.query:
        gw.authorize(call.principal, call.bucket, call.key, "write")
        await gw.multipart.abort(call.bucket, call.key, call.query["uploadId"])
        return Response(status_code=204)
    gw.authorize(call.principal, call.bucket, call.key, "write")
    await gw.writes.delete(call.bucket, call.key, call.principal)
    return Response(status_code=204)


async def delete_objects(gw: Gateway, call: S3Call) -> Response:
    assert call.bucket is not None
    await gw.head_bucket(call.bucket)
    keys, quiet = xmlio.parse_delete(await _document(call))
    deleted: list[str] = []
    errors: list[tuple[str, str, str]] = []
    for key in keys:
        try:
            gw.authorize(call.principal, call.bucket, key, "write")
            await gw.writes.delete(call.bucket, key, call.principal)
            deleted.append(key)
        except UnionstoreError as err:
            errors.append((key, err.code, err.message))
    return Response(xmlio.delete_result([] if quiet else deleted, errors), media_type=XML)


async def create_bucket(gw: Gateway, call: S3Call) -> Response:
    assert call.bucket is not None
    if not call.principal.admin and call.principal.grants.get("*") != "write":
        raise AccessDenied("Creating buckets needs a key with write access to '*'")
    xmlio.parse_location(await _document(call))
    await gw.writes.create_bucket(call.bucket)
    return Response(status_code=200, headers={"Location": f"/{call.bucket}"})


async def delete_bucket(gw: Gateway, call: S3Call) -> Response:
    assert call.bucket is not None
    gw.authorize(call.principal, call.bucket, "", "write")
    await gw.writes.delete_bucket(call.bucket)
    return Response(status_code=204)


# -- multipart -----------------------------------------------------------------------------
async def post_object(gw: Gateway, call: S3Call) -> Response:
    """POST ?uploads (create) or POST ?uploadId= (complete)."""
    assert call.bucket is not None and call.key is not None
    gw.authorize(call.principal, call.bucket, call.key, "write")
    if "uploads" in call.query:
        upload_id = await gw.multipart.create(
            call.bucket, call.key, call.principal, object_headers(call.headers)
        )
        return Response(xmlio.initiate_result(call.bucket, call.key, upload_id), media_type=XML)
    if "uploadId" in call.query:
        parts = xmlio.parse_complete(await _document(call))
        written = await gw.multipart.complete(
            call.bucket, call.key, call.query["uploadId"], call.principal, parts
        )
        location = f"/{call.bucket}/{call.key}"
        return Response(
            xmlio.complete_result(location, call.bucket, call.key, written.etag), media_type=XML
        )
    raise InvalidArgument("POST on an object needs ?uploads or ?uploadId")


def _part_number(call: S3Call) -> int:
    raw = call.query.get("partNumber", "")
    if not raw.isdigit():
        raise InvalidArgument("partNumber must be an integer between 1 and 10000")
    return int(raw)


async def upload_part(gw: Gateway, call: S3Call) -> Response:
    assert call.bucket is not None and call.key is not None
    gw.authorize(call.principal, call.bucket, call.key, "write")
    number, upload_id = _part_number(call), call.query["uploadId"]
    if "x-amz-copy-source" in call.headers:
        src = await _source(gw, call)
        first, length = 0, src.size
        rng = call.headers.get("x-amz-copy-source-range")
        if rng is not None:
            parsed = parse_range(rng, src.size)
            if parsed is None:
                raise InvalidRange(src.size)
            first, length = parsed[0], parsed[1] - parsed[0] + 1
        tag = await gw.multipart.upload_part_copy(
            call.bucket, call.key, upload_id, number, src, first, length
        )
        body = xmlio.copy_result("CopyPartResult", tag, src.status.mtime_ns)
        return Response(body, media_type=XML)
    reader = _reader(call)
    tag = await gw.multipart.upload_part(
        call.bucket,
        call.key,
        upload_id,
        number,
        reader.__aiter__(),
        etag=lambda: f'"{reader.md5_hex}"',
    )
    return Response(status_code=200, headers={"ETag": tag, **_checksum_headers(reader)})


async def list_parts(gw: Gateway, call: S3Call) -> Response:
    assert call.bucket is not None and call.key is not None
    gw.authorize(call.principal, call.bucket, call.key, "read")
    upload, parts = await gw.multipart.parts(call.bucket, call.key, call.query["uploadId"])
    marker_raw = call.query.get("part-number-marker", "0")
    max_raw = call.query.get("max-parts", "1000")
    if not marker_raw.isdigit() or not max_raw.isdigit():
        raise InvalidArgument("part-number-marker and max-parts must be integers")
    marker, max_parts = int(marker_raw), min(int(max_raw), 1000)
    after = [p for p in parts if p.number > marker]
    page = after[:max_parts]
    body = xmlio.list_parts(
        upload, page, marker=marker, max_parts=max_parts, truncated=len(after) > max_parts
    )
    return Response(body, media_type=XML)


async def list_uploads(gw: Gateway, call: S3Call) -> Response:
    assert call.bucket is not None
    prefix = call.query.get("prefix", "")
    gw.authorize(call.principal, call.bucket, prefix, "read")
    uploads = await gw.multipart.uploads(call.bucket, prefix)
    max_raw = call.query.get("max-uploads", "1000")
    if not max_raw.isdigit():
        raise InvalidArgument("max-uploads must be an integer")
    body = xmlio.list_uploads(
        call.bucket, uploads, prefix=prefix, max_uploads=min(int(max_raw), 1000)
    )
    return Response(body, media_type=XML)
