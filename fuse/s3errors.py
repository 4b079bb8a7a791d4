"""Every foreign error the bridge can meet becomes one :class:`S3Error` carrying an errno, here.

    Exception
     └── S3Error            .errno, .status, .code, .retryable
          (built by from_response() from an S3 error reply, or by from_transport() from
           a transport failure)

The tables below are the only place an S3 error code, an HTTP status or a transport failure is
turned into an errno; ``unionstore.fuse.ops`` turns S3Error (and anything unexpected) into a
``FUSEError`` at the boundary.
"""

from __future__ import annotations

import errno
import xml.etree.ElementTree as ET

from unionstore.fuse.transport import HttpError, HttpTimeout

#: S3 error codes, checked first
CODE_ERRNO: dict[str, int] = {
    "NoSuchKey": errno.ENOENT,
    "NotFound": errno.ENOENT,
    "NoSuchBucket": errno.ENOENT,
    "NoSuchUpload": errno.ENOENT,
    "AccessDenied": errno.EACCES,
    "AllAccessDisabled": errno.EACCES,
    "InvalidAccessKeyId": errno.EACCES,
    "SignatureDoesNotMatch": errno.EACCES,
    "ExpiredToken": errno.EACCES,
    "PreconditionFailed": errno.ESTALE,  # the object changed under an open file
    "InvalidRange": errno.EINVAL,
    "NotImplemented": errno.EOPNOTSUPP,  # e.g. a read-only gateway asked to write
    "MethodNotAllowed": errno.EOPNOTSUPP,
    "EntityTooLarge": errno.EFBIG,
    "EntityTooSmall": errno.EINVAL,
    "InvalidPart": errno.EIO,
    "InvalidPartOrder": errno.EIO,
    "BadDigest": errno.EIO,
    "XAmzContentSHA256Mismatch": errno.EIO,
    "BucketNotEmpty": errno.ENOTEMPTY,
    "KeyTooLongError": errno.ENAMETOOLONG,
    "InvalidObjectName": errno.EINVAL,
    "InvalidArgument": errno.EINVAL,
    "QuotaExceeded": errno.EDQUOT,
    "SlowDown": errno.EAGAIN,
    "ServiceUnavailable": errno.EAGAIN,
    "RequestTimeout": errno.ETIMEDOUT,
    "InternalError": errno.EIO,
}

#: HTTP statuses, when the code is unknown or absent (HEAD replies carry no body)
STATUS_ERRNO: dict[int, int] = {
    400: errno.EINVAL,
    403: errno.EACCES,
    404: errno.ENOENT,
    405: errno.EOPNOTSUPP,
    409: errno.EBUSY,
    411: errno.EINVAL,
    412: errno.ESTALE,
    416: errno.EINVAL,
    429: errno.EAGAIN,
    500: errno.EIO,
    501: errno.EOPNOTSUPP,
    503: errno.EAGAIN,
    504: errno.ETIMEDOUT,
}

#: transport failures (no HTTP reply at all), most specific first
TRANSPORT_ERRNO: tuple[tuple[type[BaseException], int], ...] = (
    (HttpTimeout, errno.ETIMEDOUT),
    (HttpError, errno.EIO),
)

RETRYABLE_CODES = frozenset({"SlowDown", "ServiceUnavailable", "RequestTimeout", "InternalError"})


class S3Error(Exception):
    def __init__(
        self,
        errno_: int,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.errno = errno_
        self.status = status
        self.code = code
        self.retryable = retryable

    def __str__(self) -> str:
        what = f"{self.status} {self.code}".strip() or "transport"
        name = errno.errorcode.get(self.errno, str(self.errno))
        return f"{super().__str__()} ({what}; {name})"


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_error_body(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 ``<Error>`` document, or ("", "") if it is not one."""
    if not body or b"<Error" not in body:
        return "", ""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    if _local(root.tag) != "Error":
        return "", ""
    found = {_local(child.tag): (child.text or "") for child in root}
    return found.get("Code", ""), found.get("Message", "")


def errno_for(status: int, code: str) -> int:
    if code in CODE_ERRNO:
        return CODE_ERRNO[code]
    if status in STATUS_ERRNO:
        return STATUS_ERRNO[status]
    return errno.EIO


def from_response(op: str, status: int, body: bytes) -> S3Error:
    code, message = parse_error_body(body)
    retryable = status >= 500 or status == 429 or code in RETRYABLE_CODES
    if status == 501:
        retryable = False
    return S3Error(
        errno_for(status, code),
        f"{op}: {message or 'HTTP ' + str(status)}",
        status=status,
        code=code,
        retryable=retryable,
    )


def from_transport(op: str, exc: BaseException) -> S3Error:
    for kind, err in TRANSPORT_ERRNO:
        if isinstance(exc, kind):
            return S3Error(err, f"{op}: {type(exc).__name__}: {exc}", retryable=True)
    return S3Error(errno.EIO, f"{op}: {type(exc).__name__}: {exc}")
