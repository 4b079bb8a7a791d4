"""SigV2: the Authorization header (``AWS key:signature``) and presigned query strings.

SigV2 signs the path as sent, prefixed with ``/bucket`` for virtual-hosted requests (the edge
passes ``host_bucket``), plus the S3 sub-resources of the query."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from unionstore.errors import (
    AuthError,
    AuthorizationHeaderMalformed,
    RequestExpired,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
)
from unionstore.s3.sigwire import (
    NO_DATE,
    AuthResult,
    SignedRequest,
    parse_amz_date,
    parse_http_date,
    secret_of,
    single,
    unquote,
    utf8,
    wire_bytes,
)

# Query parameters that SigV2 signs as part of the resource (botocore's list, which is AWS's).
_V2_SUBRESOURCE_NAMES = (
    "accelerate acl analytics cors defaultObjectAcl delete inventory lifecycle location logging "
    "metrics notification object-lock partNumber policy replication requestPayment restore "
    "select select-type storageClass tagging torrent uploadId uploads versionId versioning "
    "versions website response-cache-control response-content-disposition "
    "response-content-encoding response-content-language response-content-type "
    "response-expires"
)
_V2_SUBRESOURCES = frozenset(_V2_SUBRESOURCE_NAMES.split())


def sigv2_header(
    req: SignedRequest,
    credentials: str,
    secret_for: Callable[[str], str | None],
    now: datetime,
    max_skew: timedelta,
) -> AuthResult:
    access_key, sep, signature = credentials.strip().rpartition(":")
    if not sep or not access_key or not signature:
        raise AuthorizationHeaderMalformed(
            "AWS authorization header is invalid. Expected AwsAccessKeyId:signature"
        )
    secret = secret_of(secret_for, access_key)
    amz_date = req.headers.get("x-amz-date")
    raw_date = amz_date if amz_date is not None else req.headers.get("date")
    when = None if raw_date is None else parse_http_date(raw_date) or parse_amz_date(raw_date)
    if when is None:
        raise AuthError(NO_DATE)
    if abs(now - when) > max_skew:
        raise RequestTimeTooSkewed()
    # With x-amz-date present AWS signs an empty Date line (botocore signs the Date header).
    date_lines = [(raw_date or "").strip()]
    if amz_date is not None:
        date_lines = ["", req.headers["date"].strip()] if "date" in req.headers else [""]
    _verify_v2(req, secret, date_lines, {}, signature)
    return AuthResult(access_key=access_key, method="sigv2-header")


def sigv2_query(
    req: SignedRequest,
    params: Mapping[str, list[str]],
    secret_for: Callable[[str], str | None],
    now: datetime,
) -> AuthResult:
    access_key = single(params, "AWSAccessKeyId")
    signature = single(params, "Signature")
    expires = single(params, "Expires")
    if not (access_key and signature and expires):
        raise AuthorizationHeaderMalformed(
            "Query-string authentication requires the Signature, Expires and AWSAccessKeyId "
            "parameters"
        )
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
        raise AuthorizationHeaderMalformed("Invalid date (should be seconds since epoch)")
    secret = secret_of(secret_for, access_key)
    if now.timestamp() > int(expires):
        raise RequestExpired()
    # Signers move x-amz-*, content-type and content-md5 into the query of a presigned URL.
    from_query = {
        name.lower(): values[0]
        for name, values in params.items()
        if name.lower().startswith("x-amz-") or name.lower() in ("content-type", "content-md5")
    }
    # Base64 has no spaces: a "+" decoded as a space was a "+" the client did not encode.
    _verify_v2(req, secret, [expires], from_query, signature.replace(" ", "+"))
    return AuthResult(access_key=access_key, method="sigv2-query")


def _verify_v2(
    req: SignedRequest,
    secret: str,
    date_lines: list[str],
    from_query: Mapping[str, str],
    signature: str,
) -> None:
    headers = {**from_query, **req.headers}
    amz = sorted(
        (name, value.strip()) for name, value in headers.items() if name.startswith("x-amz-")
    )
    content = f"{headers.get('content-md5', '').strip()}\n{headers.get('content-type', '').strip()}"
    amz_lines = "".join(f"{name}:{value}\n" for name, value in amz)
    wanted = utf8(signature)
    for date_line in date_lines:
        for resource in _v2_resources(req):
            text = f"{req.method.upper()}\n{content}\n{date_line}\n{amz_lines}{resource}"
            digest = hmac.new(utf8(secret), utf8(text), hashlib.sha1).digest()
            if hmac.compare_digest(base64.b64encode(digest), wanted):
                return
    raise SignatureDoesNotMatch()


def _v2_resources(req: SignedRequest) -> list[str]:
    """The canonical resource; for a bucket-only path, AWS's "/bucket/" first, then as sent."""
    path = wire_bytes(req.raw_path or "/").decode("utf-8", "replace")
    if req.host_bucket:
        path = f"/{req.host_bucket}{path}"
    paths = [path + "/", path] if path.count("/") == 1 and len(path) > 1 else [path]
    subresources: list[tuple[str, str]] = []
    for part in req.raw_query.split("&"):
        name, sep, value = part.partition("=")
        if name in _V2_SUBRESOURCES:
            subresources.append((name, f"{name}={unquote(value, plus=False)}" if sep else name))
    if not subresources:
        return paths
    subresources.sort(key=lambda item: item[0])
    query = "?" + "&".join(text for _, text in subresources)
    return [p + query for p in paths]
