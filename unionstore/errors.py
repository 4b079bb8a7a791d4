"""The one exception tree of unionstore.

Every failure that can reach a client is a :class:`UnionstoreError`. Each class carries the
S3 error code and HTTP status it is rendered as; rendering to XML happens in exactly one place
(``unionstore.s3.app``). Foreign errors (hdfs-native, pyarrow, OS) are mapped to this tree in
one table per backend (``unionstore.ufs.*``), never ad hoc.

::

    UnionstoreError                      500 InternalError
    ├── ClientError                      400 InvalidRequest
    │   ├── InvalidArgument              400
    │   ├── InvalidBucketName            400
    │   ├── KeyTooLong / InvalidKey      400
    │   ├── MalformedXML                 400
    │   ├── InvalidRange                 416
    │   ├── PreconditionFailed           412
    │   ├── NotModified                  304 (not an error to the client, but a short-cut)
    │   ├── MethodNotAllowed             405
    │   ├── NotImplementedOp             501 NotImplemented
    │   ├── RequestHeaderTooLarge        400
    │   └── AuthError                    403 AccessDenied
    │       ├── InvalidAccessKeyId       403
    │       ├── SignatureDoesNotMatch    403
    │       ├── RequestTimeTooSkewed     403
    │       ├── ExpiredToken (presign)   403 AccessDenied "Request has expired"
    │       └── AuthorizationHeaderMalformed 400
    ├── NotFound                         404
    │   ├── NoSuchBucket                 404
    │   └── NoSuchKey                    404
    ├── AccessDenied                     403  (UFS permission errors too)
    ├── QuotaExceeded                    507  (UFS quota or space)
    └── ServiceUnavailable               503  (UFS unreachable)
        └── SlowDown                     503

    write path: ClientError > Conflict (409: BucketAlreadyOwnedByYou, BucketNotEmpty),
    InvalidPart, InvalidPartOrder, EntityTooSmall (400); NotFound > NoSuchUpload (404)

    request bodies (unionstore.s3.bodies), all ClientError, 400: BadDigest, InvalidDigest,
    XAmzContentSHA256Mismatch, IncompleteBody, EntityTooLarge, MalformedTrailerError
"""

from __future__ import annotations


class UnionstoreError(Exception):
    """Base of every error a client can see. ``code`` and ``status`` say how it renders."""

    code = "InternalError"
    status = 500
    default_message = "We encountered an internal error. Please try again."

    def __init__(self, message: str | None = None, *, resource: str | None = None) -> None:
        self.message = message or self.default_message
        self.resource = resource
        super().__init__(self.message)

    def headers(self) -> dict[str, str]:
        """Extra response headers this error carries (Retry-After, for example)."""
        return {}


class ClientError(UnionstoreError):
    code = "InvalidRequest"
    status = 400
    default_message = "Invalid request."


class InvalidArgument(ClientError):
    code = "InvalidArgument"
    default_message = "Invalid argument."


class InvalidBucketName(ClientError):
    code = "InvalidBucketName"
    default_message = "The specified bucket is not valid."


class KeyTooLong(ClientError):
    code = "KeyTooLongError"
    default_message = "Your key is too long."


class InvalidKey(InvalidArgument):
    default_message = "The object key is not valid for this store."


class MalformedXML(ClientError):
    code = "MalformedXML"
    default_message = "The XML you provided was not well-formed or did not validate."


class InvalidRange(ClientError):
    code = "InvalidRange"
    status = 416
    default_message = "The requested range is not satisfiable."

    def __init__(self, size: int, message: str | None = None, *, resource: str | None = None):
        super().__init__(message, resource=resource)
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class PreconditionFailed(ClientError):
    code = "PreconditionFailed"
    status = 412
    default_message = "At least one of the pre-conditions you specified did not hold."


class NotModified(ClientError):
    code = "NotModified"
    status = 304
    default_message = "Not Modified"

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self._headers = headers or {}

    def headers(self) -> dict[str, str]:
        return self._headers


class MethodNotAllowed(ClientError):
    code = "MethodNotAllowed"
    status = 405
    default_message = "The specified method is not allowed against this resource."


class NotImplementedOp(ClientError):
    code = "NotImplemented"
    status = 501
    default_message = (
        "A header or query you provided implies functionality that is not implemented."
    )


class RequestHeaderTooLarge(ClientError):
    code = "RequestHeaderSectionTooLarge"
    default_message = "Your request header section exceeds the maximum allowed size."


class AuthError(ClientError):
    code = "AccessDenied"
    status = 403
    default_message = "Access Denied"


class InvalidAccessKeyId(AuthError):
    code = "InvalidAccessKeyId"
    default_message = "The AWS Access Key Id you provided does not exist in our records."


class SignatureDoesNotMatch(AuthError):
    code = "SignatureDoesNotMatch"
    default_message = (
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method."
    )


class RequestTimeTooSkewed(AuthError):
    code = "RequestTimeTooSkewed"
    default_message = "The difference between the request time and the current time is too large."


class RequestExpired(AuthError):
    code = "AccessDenied"
    default_message = "Request has expired"


class AuthorizationHeaderMalformed(AuthError):
    code = "AuthorizationHeaderMalformed"
    status = 400
    default_message = "The authorization header is malformed."


class MissingSecurityHeader(AuthError):
    code = "MissingSecurityHeader"
    status = 400
    default_message = "Your request is missing a required header."


class NotFound(UnionstoreError):
    code = "NoSuchKey"
    status = 404
    default_message = "The specified key does not exist."


class NoSuchBucket(NotFound):
    code = "NoSuchBucket"
    default_message = "The specified bucket does not exist."


class NoSuchKey(NotFound):
    code = "NoSuchKey"
    default_message = "The specified key does not exist."


class AccessDenied(UnionstoreError):
    code = "AccessDenied"
    status = 403
    default_message = "Access Denied"


class ServiceUnavailable(UnionstoreError):
    code = "ServiceUnavailable"
    status = 503
    default_message = "The storage behind this bucket is unavailable. Please retry."

    def __init__(
        self,
        message: str | None = None,
        *,
        resource: str | None = None,
        retry_after: int = 1,
    ) -> None:
        super().__init__(message, resource=resource)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class QuotaExceeded(UnionstoreError):
    """The UFS refused the write for lack of space or quota (HDFS quotas, a full disk)."""

    code = "QuotaExceeded"
    status = 507
    default_message = "The storage behind this bucket has no room (quota or space) for the write."


class SlowDown(ServiceUnavailable):
    code = "SlowDown"
    default_message = "Please reduce your request rate."


# -- the write path -------------------------------------------------------------------------
class Conflict(ClientError):
    code = "OperationAborted"
    status = 409
    default_message = "A conflicting operation is in progress."


class BucketAlreadyOwnedByYou(Conflict):
    code = "BucketAlreadyOwnedByYou"
    default_message = (
        "Your previous request to create the named bucket succeeded and you already own it."
    )


class BucketNotEmpty(Conflict):
    code = "BucketNotEmpty"
    default_message = "The bucket you tried to delete is not empty."


class NoSuchUpload(NotFound):
    code = "NoSuchUpload"
    default_message = (
        "The specified multipart upload does not exist. The upload ID may be invalid, "
        "or the upload may have been aborted or completed."
    )


class InvalidPart(ClientError):
    code = "InvalidPart"
    default_message = (
        "One or more of the specified parts could not be found. The part may not have been "
        "uploaded, or the specified entity tag may not match the part's entity tag."
    )


class InvalidPartOrder(ClientError):
    code = "InvalidPartOrder"
    default_message = (
        "The list of parts was not in ascending order. Parts must be ordered by part number."
    )


class EntityTooSmall(ClientError):
    code = "EntityTooSmall"
    default_message = "Your proposed upload is smaller than the minimum allowed object size."


# -- request bodies (unionstore.s3.bodies) -------------------------------------------------
class BadDigest(ClientError):
    code = "BadDigest"
    default_message = "The Content-MD5 you specified did not match what we received."


class InvalidDigest(ClientError):
    code = "InvalidDigest"
    default_message = "The Content-MD5 you specified is not valid."


class XAmzContentSHA256Mismatch(ClientError):
    code = "XAmzContentSHA256Mismatch"
    default_message = "The provided 'x-amz-content-sha256' header does not match what was computed."


class IncompleteBody(ClientError):
    code = "IncompleteBody"
    default_message = (
        "You did not provide the number of bytes specified by the Content-Length HTTP header."
    )


class EntityTooLarge(ClientError):
    code = "EntityTooLarge"
    default_message = "Your proposed upload exceeds the maximum allowed size."


class MalformedTrailerError(ClientError):
    code = "MalformedTrailerError"
    default_message = (
        "The request contained trailing data that was not well-formed or did not conform to "
        "our published schema."
    )
