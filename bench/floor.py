"""The server's floor: what hypercorn itself costs per request, with an app that does nothing.

    python -m bench.floor PORT [WORKERS]

An ASGI app that answers the read-path runner's requests (bench/run.py: GET and HEAD of the
100 KiB objects, ListObjectsV2 pages, a 404) from memory, with the headers a gateway sends,
behind hypercorn with the same settings and the same uvloop worker as `unionstore serve`.
It checks no signature, looks nothing up and reads no file: its req/s is the most any app on
this server stack can reach on this machine, the ceiling against which the gateway's own
per-request cost can be judged. It is a reference, not a gateway: it only knows the bench's
keys, and it serves no 1 GiB object.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import BUCKET  # noqa: E402
from bench.run import (  # noqa: E402
    LIST_PAGE,
    SMALL_COUNT,
    SMALL_PREFIX,
    list_start_afters,
    small_bytes,
    small_key,
)

LAST_MODIFIED = b"Mon, 23 Nov 2026 00:00:00 GMT"
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
ENV = "UNIONSTORE_FLOOR_WORKERS"

Headers = list[tuple[bytes, bytes]]


def _object_headers(body: bytes) -> Headers:
    etag = b'"' + hashlib.md5(body).hexdigest().encode() + b'"'
    return [
        (b"content-type", b"binary/octet-stream"),
        (b"etag", etag),
        (b"last-modified", LAST_MODIFIED),
        (b"accept-ranges", b"bytes"),
        (b"content-length", str(len(body)).encode()),
    ]


def _list_page(start_after: str) -> bytes:
    keys = sorted(small_key(i) for i in range(SMALL_COUNT))
    page = [k for k in keys if k > start_after][:LIST_PAGE]
    contents = "".join(
        f"<Contents><Key>{escape(k)}</Key><LastModified>2026-11-23T00:00:00.000Z</LastModified>"
        f'<ETag>"0"</ETag><Size>{len(small_bytes(0))}</Size>'
        "<StorageClass>STANDARD</StorageClass></Contents>"
        for k in page
    )
    truncated = "true" if page and page[-1] != keys[-1] else "false"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{S3_NS}">'
        f"<Name>{BUCKET}</Name><Prefix>{SMALL_PREFIX}</Prefix><StartAfter>{escape(start_after)}"
        f"</StartAfter><KeyCount>{len(page)}</KeyCount><MaxKeys>{LIST_PAGE}</MaxKeys>"
        f"<IsTruncated>{truncated}</IsTruncated>{contents}</ListBucketResult>"
    ).encode()


class FloorApp:
    """Every answer is built before the first request; a request is two dict lookups."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[Headers, bytes]] = {}
        for i in range(SMALL_COUNT):
            body = small_bytes(i)
            self.objects[f"/{BUCKET}/{small_key(i)}"] = (_object_headers(body), body)
        self.pages: dict[str, bytes] = {s: _list_page(s) for s in list_start_afters()}
        self.missing = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code>'
            b"<Message>The specified key does not exist.</Message></Error>"
        )
        self.request_id = os.urandom(8).hex().upper().encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        head = scope["method"] == "HEAD"
        rid = [(b"x-amz-request-id", self.request_id), (b"x-amz-id-2", self.request_id)]
        path: str = scope["path"]
        status, headers, body = 404, [(b"content-type", b"application/xml")], self.missing
        if path in self.objects:
            status, (obj_headers, body) = 200, self.objects[path]
            headers = obj_headers
        elif path.rstrip("/") == f"/{BUCKET}":
            query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
            page = self.pages.get(query.get("start-after", ""))
            if page is not None:
                status, body = 200, page
        if status != 200 or path not in self.objects:
            headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers + rid})
        await send({"type": "http.response.body", "body": b"" if head else body})


def app_from_env() -> FloorApp:
    """The app of one hypercorn worker process."""
    return FloorApp()


def main(argv: list[str]) -> None:
    from hypercorn.run import run as run_workers

    from unionstore import config as config_module
    from unionstore.server import hypercorn_config

    port, workers = int(argv[0]), int(argv[1]) if len(argv) > 1 else 1
    hc = hypercorn_config(config_module.from_mapping({"listen": f"127.0.0.1:{port}"}))
    hc.workers = 0 if workers == 1 else workers  # one worker runs in-process, as ours does
    hc.worker_class = "uvloop"
    hc.application_path = "bench.floor:app_from_env()"
    run_workers(hc)


if __name__ == "__main__":
    main(sys.argv[1:])
