"""The S3 edge: an ASGI app that turns HTTP requests into operations on the gateway facade.

Request path: error boundary -> split path into bucket and key -> authenticate (SigV4/SigV2)
-> route to an operation in :mod:`unionstore.s3.operations` -> response. The error boundary
here is the *only* place an error becomes an S3 XML body; every response, good or bad,
carries ``x-amz-request-id``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from unionstore.errors import (
    ClientError,
    InvalidArgument,
    InvalidBucketName,
    MethodNotAllowed,
    NotImplementedOp,
    RequestHeaderTooLarge,
    UnionstoreError,
)
from unionstore.gateway import Gateway
from unionstore.limits import Limits
from unionstore.s3 import admin, xml
from unionstore.s3 import operations as ops
from unionstore.s3 import write_ops as writes
from unionstore.s3.auth import SignedRequest, authenticate
from unionstore.s3.operations import S3Call

log = logging.getLogger("unionstore.s3")

Operation = Callable[[Gateway, S3Call], Awaitable[Response]]
MAX_HEADER_BYTES = 16 * 1024
HEALTH_PATH = "/_unionstore/health"
METRICS_PATH = "/metrics"


def _route(method: str, bucket: str | None, key: str | None, query: Mapping[str, str]) -> Operation:
    """The operation for a request: method, path shape and sub-resources decide."""
    if bucket is None:
        if method == "GET":
            return ops.list_buckets
        raise MethodNotAllowed()
    if key is None:
        if method == "GET":
            return writes.list_uploads if "uploads" in query else ops.get_bucket
        if method == "HEAD":
            return ops.head_bucket
        if method == "PUT":
            if set(query) - {""}:
                raise NotImplementedOp(f"PUT ?{min(query)} is not supported by this gateway")
            return writes.create_bucket
        if method == "DELETE":
            return writes.delete_bucket
        if method == "POST" and "delete" in query:
            return writes.delete_objects
        raise MethodNotAllowed()
    if method == "GET":
        return writes.list_parts if "uploadId" in query else ops.get_object
    if method == "HEAD":
        return _head_object
    if method == "PUT":
        if "uploadId" in query or "partNumber" in query:
            return writes.upload_part
        if set(query) & {"acl", "tagging", "retention", "legal-hold"}:
            raise NotImplementedOp("object ACLs, tags and locks are not supported by this gateway")
        return writes.put_object
    if method == "DELETE":
        return writes.delete_object
    if method == "POST":
        return writes.post_object
    raise MethodNotAllowed()


async def _head_object(gw: Gateway, call: S3Call) -> Response:
    return await ops.get_object(gw, call, head=True)


def _egress_limited(
    send: Send, limits: Limits, client: tuple[str, int] | None, who: list[str | None]
) -> Send:
    """``send`` that charges every response body byte to the egress limits first."""
    connection = (client[0], client[1]) if client else None

    async def limited(message: Message) -> None:
        if message["type"] == "http.response.body":
            n = len(message.get("body", b""))
            if n:
                await limits.egress(connection, who[0], n)
        await send(message)

    return limited


class _Body:
    """The request body as it arrives. A client that goes away mid-body is an error, so a
    half-received upload is never published; after an error the rest is drained (up to a
    bound) so the client reads the error response instead of a reset connection."""

    DRAIN_LIMIT = 256 << 20

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while not self.done:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.done = True
                raise ClientError("The client closed the connection before the body was complete")
            if not message.get("more_body", False):
                self.done = True
            chunk = message.get("body", b"")
            if chunk:
                yield chunk

    async def drain(self) -> None:
        drained = 0
        try:
            async for chunk in self.chunks():
                drained += len(chunk)
                if drained > self.DRAIN_LIMIT:
                    return
        except ClientError:
            return


def split_path(raw_path: str) -> tuple[str | None, str | None]:
    """``/bucket/some/key`` -> (bucket, key), percent-decoded; keys keep trailing slashes."""
    path = raw_path.lstrip("/")
    if not path:
        return None, None
    bucket, sep, key = path.partition("/")
    try:
        bucket = unquote(bucket, errors="strict")
        key_s = unquote(key, errors="strict") if sep and key else None
    except UnicodeDecodeError:
        raise InvalidArgument("The request path is not valid UTF-8") from None
    if not bucket:
        raise InvalidBucketName()
    return bucket, key_s


class S3App:
    """The ASGI application."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        request_id = secrets.token_hex(8).upper()
        head = scope["method"] == "HEAD"
        op = "unknown"
        body = _Body(receive)
        limits = self.gateway.limits
        who: list[str | None] = [None]  # the access key, once authenticated
        if limits.egress_limited:
            send = _egress_limited(send, limits, scope.get("client"), who)
        entered = False
        try:
            limits.enter()
            entered = True
            op, response = await self._handle(scope, body, who)
        except UnionstoreError as err:
            response = render_error(err, request_id, head=head, path=scope.get("path", ""))
            await body.drain()
        except Exception:
            log.exception("internal error on %s %s", scope["method"], scope.get("path"))
            response = render_error(UnionstoreError(), request_id, head=head)
            await body.drain()
        response.headers["x-amz-request-id"] = request_id
        response.headers["x-amz-id-2"] = request_id
        try:
            await response(scope, receive, send)
        finally:
            if entered:
                limits.leave()
            self.gateway.metrics.requests.observe(
                op, response.status_code, time.monotonic() - started
            )

    async def _handle(
        self, scope: Scope, body: _Body, who: list[str | None]
    ) -> tuple[str, Response]:
        """(operation name, response) for one request."""
        raw_path_b: bytes = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw_path_b.decode("latin-1").partition("?")[0]
        if raw_path == HEALTH_PATH:
            return "health", PlainTextResponse("ok\n")
        if raw_path == METRICS_PATH:
            text = self.gateway.metrics.render()
            return "metrics", Response(text, media_type="text/plain; version=0.0.4")
        headers = Headers(scope=scope)
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            raise RequestHeaderTooLarge()
        raw_query = scope.get("query_string", b"").decode("latin-1")
        try:
            query = dict(parse_qsl(raw_query, keep_blank_values=True, errors="strict"))
        except (UnicodeDecodeError, ValueError):
            raise InvalidArgument("The query string is not valid") from None
        bucket, key = split_path(raw_path)
        signed = SignedRequest(
            method=scope["method"],
            raw_path=raw_path,
            raw_query=raw_query,
            headers={k: ",".join(headers.getlist(k)) for k in headers},
        )
        result = authenticate(signed, self.gateway.secret_for)
        principal = self.gateway.principal(result.access_key)
        who[0] = principal.access_key
        self.gateway.limits.admit(principal.access_key)
        if raw_path.startswith(admin.PREFIX):
            response = await admin.handle(self.gateway, scope["method"], raw_path, query, principal)
            return "admin", response
        operation = _route(scope["method"], bucket, key, query)
        call = S3Call(
            scope["method"], bucket, key, query, headers, principal, result, body.chunks()
        )
        return operation.__name__.strip("_"), await operation(self.gateway, call)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        janitor: asyncio.Task[None] | None = None
        while True:
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "lifespan.startup":
                janitor = asyncio.create_task(self._expire_uploads())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if janitor is not None:
                    janitor.cancel()
                await self.gateway.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _expire_uploads(self, every: float = 600.0) -> None:
        """Abort multipart uploads abandoned for longer than ``multipart_expiry``."""
        while True:
            try:
                n = await self.gateway.multipart.expire(self.gateway.config.multipart_expiry)
                if n:
                    log.info("aborted %d abandoned multipart uploads", n)
            except Exception:
                log.exception("expiring multipart uploads failed")
            await asyncio.sleep(every)


def render_error(
    err: UnionstoreError, request_id: str, *, head: bool = False, path: str = ""
) -> Response:
    """The one place an error becomes an S3 response."""
    headers = dict(err.headers())
    if head or err.status == 304:
        return Response(status_code=err.status, headers=headers)
    body = xml.error(err.code, err.message, err.resource or path or None, request_id)
    return Response(body, status_code=err.status, headers=headers, media_type="application/xml")
