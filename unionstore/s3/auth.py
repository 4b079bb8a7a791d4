"""Request authentication for the S3 edge: SigV4 (header, presigned query) and SigV2.

Pure functions over a :class:`SignedRequest`: no I/O, no framework types, the clock is a
parameter. The edge builds a ``SignedRequest`` from the wire, calls :func:`authenticate` with a
secret lookup and gets an :class:`AuthResult` or an :class:`~unionstore.errors.AuthError` (or,
for conflicting or unsupported auth, :class:`~unionstore.errors.InvalidArgument`). Garbage input
never escapes as anything else.

Wire text: ``raw_path``, ``raw_query`` and header values are the wire bytes decoded as latin-1
(what ASGI servers and starlette do for headers). Non-ASCII is mapped back to those bytes here.

Canonicalisation, where S3 differs from generic SigV4:

* The path is never normalised (``//``, ``.``, ``..`` stay) nor double-encoded: it is
  percent-decoded once and re-encoded per RFC 3986 keeping ``/``, which is what the SDKs send.
  If that does not verify, the path exactly as sent is tried, for clients that encode more or
  less than RFC 3986 (``%7E``, a raw ``+``).
* Query names and values are decoded (``+`` is a space, as in form encoding) and re-encoded,
  then sorted. So the edge must read ``+`` in the query as a space and ``+`` in the path as a
  plus (starlette does both).

SigV2 lives in :mod:`unionstore.s3.sigv2`; what both share (the request and result types, wire
text decoding) in :mod:`unionstore.s3.sigwire`.

Derived SigV4 signing keys are cached per (secret, date, region).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote_from_bytes, unquote_to_bytes

from unionstore.errors import (
    AuthError,
    AuthorizationHeaderMalformed,
    ClientError,
    InvalidArgument,
    RequestExpired,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
)
from unionstore.s3.sigv2 import sigv2_header, sigv2_query
from unionstore.s3.sigwire import (
    AMZ_DATE_FORMAT,
    NO_DATE,
    AuthResult,
    SignedRequest,
    parse_amz_date,
    parse_http_date,
    query_pairs,
    query_params,
    secret_of,
    signing_key,
    single,
    utf8,
    wire_bytes,
)

__all__ = [
    "MAX_PRESIGN_EXPIRES",
    "STREAMING_PAYLOADS",
    "UNSIGNED_PAYLOAD",
    "AuthResult",
    "SignedRequest",
    "authenticate",
    "chunk_signature",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOADS = frozenset(
    f"STREAMING-{kind}"
    for kind in (
        "AWS4-HMAC-SHA256-PAYLOAD",
        "AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "UNSIGNED-PAYLOAD-TRAILER",
    )
)
MAX_PRESIGN_EXPIRES = 604800  # seven days, in seconds
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_HEX = frozenset("0123456789abcdefABCDEF")
_V4_QUERY_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)
_ONE_MECHANISM = (
    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query "
    "string parameter or the Authorization header should be specified"
)


ANONYMOUS = AuthResult(access_key=None, method="anonymous")


def authenticate(
    req: SignedRequest,
    secret_for: Callable[[str], str | None],
    *,
    now: datetime | None = None,
    max_skew: timedelta = timedelta(minutes=15),
) -> AuthResult:
    """Verify ``req``'s signature; raise an error from ``unionstore.errors`` if it fails."""
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    pairs = query_pairs(req.raw_query)
    params = query_params(pairs)
    authorization = req.headers.get("authorization")
    v4_query = any(k in params for k in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"))
    v2_query = "AWSAccessKeyId" in params or "Signature" in params
    if (authorization is not None) + v4_query + v2_query > 1:
        raise InvalidArgument(_ONE_MECHANISM)
    if authorization is not None:
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme == ALGORITHM:
            claim = _v4_header_claim(req, rest)
            secret = secret_of(secret_for, claim.access_key)
            if abs(now - claim.when) > max_skew:
                raise RequestTimeTooSkewed()
            return _verify_v4(req, claim, secret, pairs, "sigv4-header")
        if scheme == "AWS":
            return sigv2_header(req, rest, secret_for, now, max_skew)
        if not scheme:
            raise AuthorizationHeaderMalformed("The Authorization header is empty.")
        raise InvalidArgument("Unsupported Authorization Type")
    if v4_query:
        claim, expires = _v4_query_claim(params)
        secret = secret_of(secret_for, claim.access_key)
        if claim.when - now > max_skew:
            raise AuthError("Request is not yet valid")
        if now - claim.when > timedelta(seconds=expires):
            raise RequestExpired()
        unsigned = [(n, v) for n, v in pairs if n != b"X-Amz-Signature"]
        return _verify_v4(req, claim, secret, unsigned, "sigv4-query")
    if v2_query:
        return sigv2_query(req, params, secret_for, now)
    return ANONYMOUS


def chunk_signature(
    key: bytes, amz_date: str, scope: str, previous_signature: str, chunk_sha256_hex: str
) -> str:
    """Signature of one ``aws-chunked`` chunk (STREAMING-AWS4-HMAC-SHA256-PAYLOAD)."""
    string_to_sign = (
        f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous_signature}\n"
        f"{_EMPTY_SHA256}\n{chunk_sha256_hex}"
    )
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


# --- SigV4 -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _V4Claim:
    """What a SigV4 request says about itself, parsed but not yet verified."""

    access_key: str
    date: str  # credential scope date, "20260101"
    region: str
    when: datetime
    amz_date: str  # "20260101T000000Z"
    signed_headers: str
    signature: str
    payload_hash: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/s3/aws4_request"


def _v4_header_claim(req: SignedRequest, rest: str) -> _V4Claim:
    bad = AuthorizationHeaderMalformed
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name in fields:
            raise bad(f"The authorization header is malformed: {item!r}.")
        fields[name] = value.strip()
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not fields.get(k)]
    if missing:
        raise bad(f"The authorization header lacks {', '.join(missing)}.")
    access_key, date, region = _parse_credential(fields["Credential"], bad)
    payload_hash = req.headers.get("x-amz-content-sha256")
    if payload_hash is None:
        raise ClientError("Missing required header for this request: x-amz-content-sha256")
    _check_payload_hash(payload_hash)
    raw_date = req.headers.get("x-amz-date")
    if raw_date is not None:
        when = parse_amz_date(raw_date)
    else:  # SigV4 also accepts a Date header, in either format
        raw_date = req.headers.get("date")
        when = None if raw_date is None else parse_amz_date(raw_date) or parse_http_date(raw_date)
    if when is None:
        raise AuthError(NO_DATE)
    amz_date = when.strftime(AMZ_DATE_FORMAT)
    if date != amz_date[:8]:
        raise bad("Invalid credential date. Date is not the same as X-Amz-Date.")
    return _V4Claim(
        access_key=access_key,
        date=date,
        region=region,
        when=when,
        amz_date=amz_date,
        signed_headers=fields["SignedHeaders"],
        signature=fields["Signature"],
        payload_hash=payload_hash,
    )


def _v4_query_claim(params: Mapping[str, list[str]]) -> tuple[_V4Claim, int]:
    bad = AuthorizationHeaderMalformed  # AWS says AuthorizationQueryParametersError (400)
    values: dict[str, str] = {}
    for name in _V4_QUERY_PARAMS:
        if not (value := single(params, name)):
            names = ", ".join(_V4_QUERY_PARAMS)
            raise bad(f"Query-string authentication version 4 requires the {names} parameters.")
        values[name] = value
    if values["X-Amz-Algorithm"] != ALGORITHM:
        raise bad(f'X-Amz-Algorithm only supports "{ALGORITHM}"')
    access_key, date, region = _parse_credential(values["X-Amz-Credential"], bad)
    if (when := parse_amz_date(amz_date := values["X-Amz-Date"])) is None:
        raise bad("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    if date != amz_date[:8]:
        raise bad("Invalid credential date. Date is not the same as X-Amz-Date.")
    expires = values["X-Amz-Expires"]
    seconds = int(expires) if expires.isascii() and expires.isdigit() and len(expires) < 8 else 0
    if not 1 <= seconds <= MAX_PRESIGN_EXPIRES:
        raise bad(f"X-Amz-Expires must be a number of seconds from 1 to {MAX_PRESIGN_EXPIRES}")
    payload_hash = single(params, "X-Amz-Content-Sha256") or UNSIGNED_PAYLOAD
    _check_payload_hash(payload_hash)
    claim = _V4Claim(
        access_key=access_key,
        date=date,
        region=region,
        when=when,
        amz_date=amz_date,
        signed_headers=values["X-Amz-SignedHeaders"],
        signature=values["X-Amz-Signature"],
        payload_hash=payload_hash,
    )
    return claim, seconds


def _verify_v4(
    req: SignedRequest,
    claim: _V4Claim,
    secret: str,
    query: list[tuple[bytes, bytes]],
    method: str,
) -> AuthResult:
    names = claim.signed_headers.split(";")
    if not all(names):
        raise AuthorizationHeaderMalformed(f"Invalid SignedHeaders: {claim.signed_headers!r}.")
    headers = "".join(f"{n.lower()}:{_trimall(req.headers.get(n.lower(), ''))}\n" for n in names)
    encoded = sorted((quote_from_bytes(n, safe=""), quote_from_bytes(v, safe="")) for n, v in query)
    canonical_query = "&".join(f"{n}={v}" for n, v in encoded)
    key = signing_key(secret, claim.date, claim.region)
    wanted = utf8(claim.signature)
    for uri in _candidate_uris(req.raw_path):
        canonical = (
            f"{req.method.upper()}\n{uri}\n{canonical_query}\n{headers}\n"
            f"{claim.signed_headers}\n{claim.payload_hash}"
        )
        digest = hashlib.sha256(utf8(canonical)).hexdigest()
        string_to_sign = f"{ALGORITHM}\n{claim.amz_date}\n{claim.scope}\n{digest}"
        computed = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(computed.encode(), wanted):
            return AuthResult(
                access_key=claim.access_key,
                method=method,
                payload_hash=claim.payload_hash,
                signing_key=key,
                seed_signature=claim.signature,
                scope=claim.scope,
                amz_date=claim.amz_date,
            )
    raise SignatureDoesNotMatch()


def _parse_credential(text: str, bad: type[AuthError]) -> tuple[str, str, str]:
    """``AK/date/region/s3/aws4_request`` -> (access key, date, region)."""
    parts = text.split("/")
    if len(parts) < 5 or not parts[0]:
        raise bad(f"Malformed credential {text!r}; expected AK/date/region/s3/aws4_request.")
    date, region, service, terminator = parts[-4:]
    if not (len(date) == 8 and date.isascii() and date.isdigit()) or not region:
        raise bad(f"Malformed credential {text!r}; expected AK/date/region/s3/aws4_request.")
    if service != "s3":
        raise bad(f'Incorrect service "{service}". This endpoint belongs to "s3".')
    if terminator != "aws4_request":
        raise bad(f'Incorrect terminal "{terminator}". This endpoint uses "aws4_request".')
    return "/".join(parts[:-4]), date, region


def _check_payload_hash(value: str) -> None:
    if value == UNSIGNED_PAYLOAD or value in STREAMING_PAYLOADS:
        return
    if len(value) != 64 or not _HEX.issuperset(value):
        raise InvalidArgument(
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-..., or a valid sha256 value."
        )


def _candidate_uris(raw_path: str) -> list[str]:
    """The path re-encoded per RFC 3986 and, if different, the path as sent."""
    sent = wire_bytes(raw_path or "/")
    canonical = quote_from_bytes(unquote_to_bytes(sent), safe="/")
    as_sent = sent.decode("utf-8", "replace")
    return [canonical] if as_sent == canonical else [canonical, as_sent]


def _trimall(value: str) -> str:
    return " ".join(value.split())
