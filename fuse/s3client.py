"""A small async S3 client for one bucket: ``transport.HttpClient`` (keep-alive HTTP/1.1) to
talk, ``sigv4.Signer`` to sign.

Path-style URLs, keys percent-encoded once here. Retries live in one place (:meth:`_send`):
transport failures, 5xx and SlowDown are retried with exponential back-off; every other error
is raised at once as :class:`~unionstore.fuse.s3errors.S3Error` (which carries the errno).
Request counts and byte counts per operation are kept in :attr:`stats` for the mount's stats.
"""

from __future__ import annotations

import asyncio
import calendar
import errno
import hashlib
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote_plus, urlsplit

from unionstore.fuse.config import Credentials
from unionstore.fuse.s3errors import S3Error, from_response, from_transport, parse_error_body
from unionstore.fuse.sigv4 import Signer, host_header
from unionstore.fuse.transport import HttpClient, HttpError, Response

log = logging.getLogger("unionstore.fuse.s3")

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_COPY = 5 << 30  # CopyObject limit; larger objects are copied part by part


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    key: str
    size: int
    etag: str  # without quotes
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class ListPage:
    objects: list[ObjectMeta]
    prefixes: list[str]
    next_token: str | None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(el: ET.Element) -> dict[str, str]:
    return {_local(c.tag): (c.text or "") for c in el}


def _ns(dt: datetime) -> int:
    """Exact nanoseconds since the epoch (no float rounding)."""
    return calendar.timegm(dt.utctimetuple()) * 1_000_000_000 + dt.microsecond * 1000


def _iso_ns(text: str) -> int:
    return _ns(datetime.fromisoformat(text.replace("Z", "+00:00")))


def _etag(raw: str | None) -> str:
    return (raw or "").strip().strip('"')


def encode_key(key: str) -> str:
    return quote(key, safe="/~")


class S3Client:
    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        region: str = "us-east-1",
        credentials: Credentials | None = None,
        retries: int = 4,
        timeout: float = 120.0,
        max_connections: int = 64,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.retries = retries
        self.stats: Counter[str] = Counter()
        self._auth: Signer | None = None
        if credentials is not None:
            self._auth = Signer(
                credentials.access_key,
                credentials.secret_key,
                region,
                session_token=credentials.session_token,
            )
        self._host = host_header(self.endpoint)
        self._bucket_path = urlsplit(self.endpoint).path + "/" + quote(bucket, safe="")
        self._http = HttpClient(
            self.endpoint, max_connections=max_connections, timeout=timeout, connect_timeout=10.0
        )

    async def close(self) -> None:
        await self._http.aclose()

    # -- transport ---------------------------------------------------------------------------
    def _path(self, key: str | None) -> str:
        return self._bucket_path if key is None else self._bucket_path + "/" + encode_key(key)

    @staticmethod
    def _query(query: Mapping[str, str] | None) -> str:
        if not query:
            return ""
        return "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" if v != "" else quote(k)
            for k, v in sorted(query.items())
        )

    async def _send(
        self,
        op: str,
        method: str,
        key: str | None = None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        ok: Sequence[int] = (200,),
    ) -> Response:
        path, qs = self._path(key), self._query(query)
        target = path + "?" + qs if qs else path
        payload_hash = EMPTY_SHA256
        if body:
            payload_hash = (
                await asyncio.to_thread(lambda: hashlib.sha256(body).hexdigest())
                if len(body) > 1 << 16
                else hashlib.sha256(body).hexdigest()
            )
        delay = 0.05
        for attempt in range(self.retries + 1):
            hdrs = dict(headers or {})
            if self._auth is not None:
                hdrs = self._auth.sign(method, self._host, path, qs, hdrs, payload_hash)
            self.stats[f"requests.{op}"] += 1
            self.stats["bytes_out"] += len(body)
            try:
                resp = await self._http.request(method, target, hdrs, body)
            except HttpError as exc:
                err = from_transport(op, exc)
            else:
                self.stats["bytes_in"] += len(resp.content)
                if resp.status in ok:
                    return resp
                err = from_response(op, resp.status, resp.content)
            self.stats[f"errors.{op}"] += 1
            if not err.retryable or attempt == self.retries:
                raise err
            log.warning("%s %s: %s; retry %d in %.2fs", op, key, err, attempt + 1, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    # -- reads -------------------------------------------------------------------------------
    async def head_bucket(self) -> None:
        await self._send("HeadBucket", "HEAD")

    async def head(self, key: str) -> ObjectMeta:
        resp = await self._send("HeadObject", "HEAD", key)
        modified = resp.headers.get("last-modified")
        mtime = _ns(parsedate_to_datetime(modified)) if modified else 0
        size = int(resp.headers.get("content-length", "0"))
        return ObjectMeta(key, size, _etag(resp.headers.get("etag")), mtime)

    async def list_page(
        self,
        prefix: str,
        *,
        delimiter: str = "/",
        token: str | None = None,
        max_keys: int = 1000,
        start_after: str | None = None,
    ) -> ListPage:
        query = {
            "list-type": "2",
            "prefix": prefix,
            "max-keys": str(max_keys),
            "encoding-type": "url",
        }
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        if start_after:
            query["start-after"] = start_after
        resp = await self._send("ListObjectsV2", "GET", None, query=query)
        root = ET.fromstring(resp.content)
        objects, prefixes = [], []
        truncated, token_out = False, None
        for el in root:
            tag = _local(el.tag)
            if tag == "Contents":
                f = _children(el)
                mtime = _iso_ns(f["LastModified"]) if f.get("LastModified") else 0
                objects.append(
                    ObjectMeta(
                        unquote_plus(f["Key"]), int(f.get("Size", "0")), _etag(f.get("ETag")), mtime
                    )
                )
            elif tag == "CommonPrefixes":
                prefixes.append(unquote_plus(_children(el)["Prefix"]))
            elif tag == "IsTruncated":
                truncated = (el.text or "").lower() == "true"
            elif tag == "NextContinuationToken":
                token_out = el.text
        return ListPage(objects, prefixes, token_out if truncated else None)

    async def get_range(
        self, key: str, offset: int, length: int, *, if_match: str | None = None
    ) -> bytes:
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        if if_match:
            headers["If-Match"] = f'"{if_match}"'
        resp = await self._send("GetObject", "GET", key, headers=headers, ok=(200, 206))
        data = resp.content
        if resp.status == 200:  # a server that ignores Range
            data = data[offset : offset + length]
        else:
            span = resp.headers.get("content-range", "").partition("/")[0]  # "bytes a-b"
            first, _, last = span.removeprefix("bytes ").partition("-")
            if not (first.isdigit() and last.isdigit() and len(data) == int(last) - int(first) + 1):
                raise S3Error(errno.EIO, f"GetObject {key}: reply does not match its Content-Range")
        self.stats["bytes_fetched"] += len(data)
        return data

    # -- writes ------------------------------------------------------------------------------
    async def put(self, key: str, body: bytes, *, content_type: str | None = None) -> str:
        headers = {"Content-Type": content_type or "application/octet-stream"}
        resp = await self._send("PutObject", "PUT", key, headers=headers, body=body)
        return _etag(resp.headers.get("etag"))

    async def delete(self, key: str) -> None:
        await self._send("DeleteObject", "DELETE", key, ok=(200, 204, 404))

    def _copy_source(self, key: str) -> str:
        return "/" + quote(self.bucket, safe="") + "/" + encode_key(key)

    async def copy(self, src: str, dst: str) -> str:
        headers = {"x-amz-copy-source": self._copy_source(src), "x-amz-metadata-directive": "COPY"}
        resp = await self._send("CopyObject", "PUT", dst, headers=headers)
        return self._etag_in_body("CopyObject", resp, "ETag")

    def _etag_in_body(self, op: str, resp: Response, field: str) -> str:
        """Copy and Complete may answer 200 with an <Error> body."""
        code, _ = parse_error_body(resp.content)
        if code:
            raise from_response(op, 500 if code == "InternalError" else 400, resp.content)
        root = ET.fromstring(resp.content)
        return _etag(_children(root).get(field))

    async def create_multipart(self, key: str) -> str:
        resp = await self._send(
            "CreateMultipartUpload",
            "POST",
            key,
            query={"uploads": ""},
            headers={"Content-Type": "application/octet-stream"},
        )
        upload_id = _children(ET.fromstring(resp.content)).get("UploadId")
        if not upload_id:
            raise S3Error(errno.EIO, "CreateMultipartUpload: no UploadId in reply")
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        resp = await self._send(
            "UploadPart",
            "PUT",
            key,
            query={"partNumber": str(number), "uploadId": upload_id},
            body=body,
        )
        return _etag(resp.headers.get("etag"))

    async def upload_part_copy(
        self, key: str, upload_id: str, number: int, src: str, first: int, last: int
    ) -> str:
        headers = {
            "x-amz-copy-source": self._copy_source(src),
            "x-amz-copy-source-range": f"bytes={first}-{last}",
        }
        resp = await self._send(
            "UploadPartCopy",
            "PUT",
            key,
            query={"partNumber": str(number), "uploadId": upload_id},
            headers=headers,
        )
        return self._etag_in_body("UploadPartCopy", resp, "ETag")

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str:
        body = (
            "<CompleteMultipartUpload>"
            + "".join(
                f'<Part><PartNumber>{n}</PartNumber><ETag>"{etag}"</ETag></Part>'
                for n, etag in parts
            )
            + "</CompleteMultipartUpload>"
        )
        resp = await self._send(
            "CompleteMultipartUpload",
            "POST",
            key,
            query={"uploadId": upload_id},
            body=body.encode(),
            headers={"Content-Type": "application/xml"},
        )
        return self._etag_in_body("CompleteMultipartUpload", resp, "ETag")

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._send(
            "AbortMultipartUpload",
            "DELETE",
            key,
            query={"uploadId": upload_id},
            ok=(200, 204, 404),
        )

    async def copy_large(self, src: str, dst: str, size: int, part: int = 1 << 30) -> str:
        """Copy an object of any size: CopyObject up to 5 GiB, UploadPartCopy beyond."""
        if size <= MAX_COPY:
            return await self.copy(src, dst)
        upload_id = await self.create_multipart(dst)
        try:
            parts = []
            for n, first in enumerate(range(0, size, part), start=1):
                last = min(size, first + part) - 1
                parts.append((n, await self.upload_part_copy(dst, upload_id, n, src, first, last)))
            return await self.complete_multipart(dst, upload_id, parts)
        except BaseException:
            await self.abort_multipart(dst, upload_id)
            raise
