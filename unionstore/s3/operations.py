"""S3 read operations: one coroutine per operation, from a parsed request to a response.

Each takes an :class:`S3Call` (already authenticated, path split into bucket and key) and the
:class:`~unionstore.gateway.Gateway`, checks grants, and returns a starlette response. Errors
are raised as ``unionstore.errors`` and rendered by the boundary in ``unionstore.s3.app``.
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from starlette.responses import Response

from unionstore.errors import AccessDenied, InvalidArgument, InvalidRange, NotImplementedOp
from unionstore.gateway import Gateway, ObjectInfo, Principal
from unionstore.s3 import xml
from unionstore.s3.auth import AuthResult
from unionstore.s3.http import check_preconditions, http_date, parse_range
from unionstore.s3.streaming import ObjectStream

XML = "application/xml"
MAX_KEYS_LIMIT = 1000
SMALL_BODY = 256 * 1024

#: bucket sub-resources a client may ask for that this gateway does not implement
UNSUPPORTED_BUCKET_SUBRESOURCES = frozenset(
    {
        "acl",
        "policy",
        "cors",
        "lifecycle",
        "tagging",
        "encryption",
        "object-lock",
        "website",
        "logging",
        "notification",
        "replication",
        "accelerate",
        "requestPayment",
        "ownershipControls",
        "publicAccessBlock",
        "analytics",
        "metrics",
        "inventory",
        "intelligent-tiering",
        "policyStatus",
    }
)
UNSUPPORTED_OBJECT_SUBRESOURCES = frozenset(
    {
        "acl",
        "tagging",
        "retention",
        "legal-hold",
        "torrent",
        "attributes",
        "restore",
        "select",
    }
)
RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}


@dataclass(frozen=True, slots=True)
class S3Call:
    method: str
    bucket: str | None
    key: str | None
    query: Mapping[str, str]
    headers: Mapping[str, str]
    principal: Principal
    auth: AuthResult
    body: AsyncIterator[bytes]  # the raw request body, as it arrives


def _xml(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type=XML)


def _max_keys(query: Mapping[str, str]) -> int:
    raw = query.get("max-keys", "1000")
    if not raw.isdigit():
        raise InvalidArgument("max-keys must be a non-negative integer")
    return min(int(raw), MAX_KEYS_LIMIT)


def _encoding_type(query: Mapping[str, str]) -> str | None:
    value = query.get("encoding-type")
    if value not in (None, "url"):
        raise InvalidArgument("Invalid Encoding Method specified in Request")
    return value


async def list_buckets(gw: Gateway, call: S3Call) -> Response:
    if call.principal.access_key is None:
        raise AccessDenied()
    buckets = await gw.list_buckets(call.principal)
    return _xml(xml.list_buckets(buckets, call.principal.user or call.principal.access_key))


async def head_bucket(gw: Gateway, call: S3Call) -> Response:
    assert call.bucket is not None
    await gw.head_bucket(call.bucket)
    gw.authorize(call.principal, call.bucket, "", "read")
    return Response(status_code=200, headers={"x-amz-bucket-region": gw.config.region})


async def get_bucket(gw: Gateway, call: S3Call) -> Response:
    """GET on a bucket: a listing, or one of the sub-resources."""
    assert call.bucket is not None
    q = call.query
    await gw.head_bucket(call.bucket)
    if "location" in q:
        gw.authorize(call.principal, call.bucket, "", "read")
        return _xml(xml.location(gw.config.region))
    if "versioning" in q:
        gw.authorize(call.principal, call.bucket, "", "read")
        return _xml(xml.versioning())
    unsupported = UNSUPPORTED_BUCKET_SUBRESOURCES.intersection(q)
    if unsupported:
        raise NotImplementedOp(f"?{min(unsupported)} is not supported by this gateway")
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    gw.authorize(call.principal, call.bucket, prefix, "read")
    max_keys, encoding = _max_keys(q), _encoding_type(q)
    if q.get("list-type") == "2":
        token = q.get("continuation-token") or None
        start_after = q.get("start-after", "")
        page = await gw.list_objects(
            call.bucket,
            prefix=prefix,
            delimiter=delimiter,
            start_after=start_after,
            token=token,
            max_keys=max_keys,
        )
        body = xml.list_objects_v2(
            call.bucket,
            page,
            prefix=prefix,
            delimiter=delimiter,
            max_keys=max_keys,
            encoding_type=encoding,
            token=token,
            start_after=start_after,
            fetch_owner=q.get("fetch-owner") == "true",
        )
        return _xml(body)
    if "list-type" in q:
        raise InvalidArgument("list-type must be 2")
    marker = q.get("marker", "")
    page = await gw.list_objects(
        call.bucket, prefix=prefix, delimiter=delimiter, start_after=marker, max_keys=max_keys
    )
    body = xml.list_objects_v1(
        call.bucket,
        page,
        prefix=prefix,
        delimiter=delimiter,
        max_keys=max_keys,
        encoding_type=encoding,
        marker=marker,
    )
    return _xml(body)


def _object_headers(obj: ObjectInfo, query: Mapping[str, str], whole: bool) -> dict[str, str]:
    """Response headers of GET/HEAD: validators, what the gateway stored with the object, and
    the response-* overrides of the request."""
    content_type = mimetypes.guess_type(obj.key, strict=False)[0] or "binary/octet-stream"
    headers = {  # lower-case names: stored headers below replace these
        "etag": obj.etag,
        "last-modified": http_date(obj.status.mtime_ns),
        "accept-ranges": "bytes",
        "content-type": content_type,
    }
    if obj.stored is not None:
        for name, value in obj.stored.headers.items():
            if name.startswith("x-amz-checksum-") and not whole:
                continue  # a whole-object checksum would fail a ranged reader's check
            headers[name] = value
    for param, header in RESPONSE_OVERRIDES.items():
        if param in query:
            headers[header] = query[param]
    return headers


async def get_object(gw: Gateway, call: S3Call, *, head: bool = False) -> Response:
    assert call.bucket is not None and call.key is not None
    unsupported = UNSUPPORTED_OBJECT_SUBRESOURCES.intersection(call.query)
    if unsupported:
        raise NotImplementedOp(f"?{min(unsupported)} is not supported by this gateway")
    if call.query.get("partNumber", "1") != "1":
        raise InvalidRange(0, "The requested partnumber is not satisfiable")
    gw.authorize(call.principal, call.bucket, call.key, "read")
    fresh = "no-cache" in call.headers.get("cache-control", "")
    obj = await gw.stat_object(call.bucket, call.key, fresh=fresh)
    check_preconditions(call.headers, obj.etag, obj.status.mtime_ns)
    size = obj.size
    rng = parse_range(call.headers.get("range"), size)
    headers = _object_headers(obj, call.query, whole=rng is None)
    status = 200
    first, length = 0, size
    if rng is not None:
        first, last = rng
        length = last - first + 1
        status = 206
        headers["content-range"] = f"bytes {first}-{last}/{size}"
    headers["content-length"] = str(length)
    if head or length == 0:
        return Response(status_code=status, headers=headers)
    if length <= SMALL_BODY:  # one send, no streaming machinery: small objects are frequent
        body = b"".join([chunk async for chunk in gw.read_object(obj, first, length)])
        return Response(body, status_code=status, headers=headers)
    return ObjectStream(gw.read_object(obj, first, length), status, headers)
