"""Warming through gateways: admin calls with retry (:class:`Delivery`, shared with the
daemon), listing via the S3 API (:class:`S3Lister`), and ``unionstore warm s3://bucket/prefix``.

The command lists the prefix through the first gateway, then warms every object on every
gateway, ``concurrency`` at a time, and shows a progress bar on a terminal (files, bytes,
rate, ETA) or one plain line per object otherwise. Each finished object is appended to a
state file (key + ETag); a rerun after an interruption skips objects whose ETag did not
change. The state file is removed when a run completes. ``--dry-run`` lists, ``--evict``
drops the prefix (metadata and blocks) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import json
import logging
import os
import random
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlencode

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from unionstore.admin_client import AdminClient, AdminError
from unionstore.errors import ServiceUnavailable

log = logging.getLogger("unionstore.prefetch")
S3NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
Observer = Callable[[str, str, str], None]  # (action, result, gateway)


def _status(exc: Exception) -> int | None:
    if isinstance(exc, AdminError):
        return exc.http_status
    return exc.status if isinstance(exc, ServiceUnavailable) else None


class Delivery:
    """One admin call on every gateway; a gateway that is down or answers 5xx/429 is retried
    with exponential backoff (and jitter) until it answers (or ``max_tries`` calls failed).
    404 is a result ("missing"); other 4xx are logged and given up (retrying would not help)."""

    def __init__(
        self,
        clients: list[AdminClient],
        observer: Observer | None = None,
        *,
        backoff: tuple[float, float] = (0.2, 10.0),
        max_tries: int | None = None,
    ) -> None:
        self.clients = clients
        self.observer = observer or (lambda a, r, g: None)
        self.backoff = backoff
        self.max_tries = max_tries

    async def close(self) -> None:
        for c in self.clients:
            await c.close()

    async def invalidate(
        self, bucket: str, prefix: str, data: bool, *, exact: bool = False
    ) -> list[dict[str, Any] | None]:
        return await self._each(
            "invalidate", lambda c: c.invalidate(bucket, prefix, data=data, exact=exact)
        )

    async def warm(self, bucket: str, key: str) -> list[dict[str, Any] | None]:
        return await self._each("warm", lambda c: c.warm(bucket, key))

    async def _each(
        self, action: str, call: Callable[[AdminClient], Awaitable[dict[str, Any]]]
    ) -> list[dict[str, Any] | None]:
        return list(await asyncio.gather(*(self._retry(action, c, call) for c in self.clients)))

    async def _retry(
        self, action: str, client: AdminClient, call: Callable[[AdminClient], Awaitable[Any]]
    ) -> dict[str, Any] | None:
        delay, failures = self.backoff[0], 0
        while True:
            try:
                result: dict[str, Any] = await call(client)
            except Exception as exc:  # down, 5xx, or an answer we cannot read: try again
                status = _status(exc) if isinstance(exc, ServiceUnavailable | AdminError) else None
                if status == 404:
                    self.observer(action, "missing", client.endpoint)
                    return None
                failures += 1
                permanent = status is not None and status < 500 and status not in (408, 429)
                if permanent or (self.max_tries is not None and failures >= self.max_tries):
                    log.error("%s on %s failed for good: %s", action, client.endpoint, exc)
                    self.observer(action, "failed", client.endpoint)
                    return None
                self.observer(action, "retry", client.endpoint)
                loud = failures == 1 or failures % 10 == 0
                log.log(
                    logging.WARNING if loud else logging.DEBUG,
                    "%s on %s (try %d): %s",
                    action,
                    client.endpoint,
                    failures,
                    exc,
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff[1])
                continue
            if failures:
                log.info(
                    "%s on %s went through after %d retries", action, client.endpoint, failures
                )
            self.observer(action, "ok", client.endpoint)
            return result


class PriorityGate:
    """At most ``limit`` holders; waiters get in by priority (high first), then FIFO."""

    def __init__(self, limit: int) -> None:
        self.limit, self.active = limit, 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0

    @contextlib.asynccontextmanager
    async def hold(self, priority: int = 0) -> AsyncIterator[None]:
        if self.active < self.limit and not self._waiters:
            self.active += 1
        else:
            fut = asyncio.get_running_loop().create_future()
            self._seq += 1
            heapq.heappush(self._waiters, (-priority, self._seq, fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()  # granted just as we were cancelled: pass it on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            fut = heapq.heappop(self._waiters)[2]
            if not fut.done():
                fut.set_result(None)  # the place passes straight to the waiter
                return
        self.active -= 1


@dataclass(frozen=True, slots=True)
class S3Object:
    key: str
    size: int
    etag: str


class S3Lister:
    """ListObjectsV2 through a gateway, signed with SigV4 by botocore."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1"):
        self.endpoint = endpoint.rstrip("/")
        self._signer = SigV4Auth(Credentials(access_key, secret_key), "s3", region)
        self._http = httpx.AsyncClient(timeout=120.0, trust_env=False)

    async def close(self) -> None:
        await self._http.aclose()

    async def list(self, bucket: str, prefix: str) -> AsyncIterator[S3Object]:
        token: str | None = None
        while True:
            params = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
            if token:
                params["continuation-token"] = token
            url = f"{self.endpoint}/{quote(bucket)}?" + urlencode(
                sorted(params.items()), safe="", quote_via=quote
            )
            req = AWSRequest(
                method="GET", url=url, headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
            )
            self._signer.add_auth(req)
            try:
                resp = await self._http.get(url, headers=dict(req.headers.items()))
            except httpx.HTTPError as exc:
                raise ServiceUnavailable(f"gateway {self.endpoint} unreachable: {exc}") from None
            if resp.status_code != 200:
                raise AdminError(
                    f"list s3://{bucket}/{prefix}: HTTP {resp.status_code}: {resp.text}",
                    http_status=resp.status_code,
                )
            root = ET.fromstring(resp.content)
            for c in root.iter(f"{S3NS}Contents"):
                yield S3Object(
                    c.findtext(f"{S3NS}Key", ""),
                    int(c.findtext(f"{S3NS}Size", "0")),
                    c.findtext(f"{S3NS}ETag", "").strip('"'),
                )
            token = root.findtext(f"{S3NS}NextContinuationToken")
            if root.findtext(f"{S3NS}IsTruncated") != "true" or not token:
                return


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """A bar redrawn in place on a terminal; one line per object otherwise."""

    def __init__(self, files: int, size: int, out: TextIO, tty: bool) -> None:
        self.files, self.size, self.out, self.tty = files, size, out, tty
        self.done_files = self.done_bytes = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def status(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done_bytes / elapsed
        left = self.size - self.done_bytes
        eta = "--:--" if rate <= 0 else time.strftime("%H:%M:%S", time.gmtime(left / rate))
        return (
            f"{self.done_files}/{self.files} files  {human(self.done_bytes)}/{human(self.size)}"
            f"  {human(rate)}/s  ETA {eta}"
        )

    def advance(self, obj: S3Object, what: str = "warmed") -> None:
        self.done_files += 1
        self.done_bytes += obj.size
        if not self.tty:
            print(
                f"{what} {obj.key} ({human(obj.size)})  [{self.status()}]",
                file=self.out,
                flush=True,
            )
            return
        now = time.monotonic()
        if now - self._drawn >= 0.1 or self.done_files == self.files:
            self._drawn = now
            frac = (
                self.done_bytes / self.size if self.size else self.done_files / max(self.files, 1)
            )
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            print(f"\r[{bar}] {self.status()}\x1b[K", end="", file=self.out, flush=True)

    def finish(self) -> None:
        if self.tty:
            print(file=self.out, flush=True)


def state_file(state_dir: Path, endpoint: str, bucket: str, prefix: str) -> Path:
    digest = hashlib.sha1(f"{endpoint}\0{bucket}\0{prefix}".encode(), usedforsecurity=False)
    return state_dir / f"warm-{digest.hexdigest()[:16]}.jsonl"


def read_state(path: Path) -> dict[str, str]:
    done: dict[str, str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return done
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            done[str(rec["key"])] = str(rec["etag"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line after a kill
    return done


@dataclass
class WarmJob:
    gateways: list[str]
    access_key: str
    secret_key: str
    bucket: str
    prefix: str
    state_dir: Path
    concurrency: int = 4
    dry_run: bool = False
    evict: bool = False
    force: bool = False
    tty: bool | None = None


async def run_warm(job: WarmJob, out: TextIO = sys.stdout) -> int:
    clients = [AdminClient(g, job.access_key, job.secret_key) for g in job.gateways]
    delivery = Delivery(clients, backoff=(0.2, 5.0), max_tries=8)
    lister = S3Lister(job.gateways[0], job.access_key, job.secret_key)
    target = f"s3://{job.bucket}/{job.prefix}"
    try:
        objects = [o async for o in lister.list(job.bucket, job.prefix)]
        if job.evict:
            if job.dry_run:
                for o in objects:
                    print(f"would evict {o.key} ({human(o.size)})", file=out)
                return 0
            results = await delivery.invalidate(job.bucket, job.prefix, True)
            dropped = sum(int(r.get("dropped", 0)) for r in results if r)
            print(f"evicted {target}: {dropped} cache entries dropped", file=out, flush=True)
            return 0
        job.state_dir.mkdir(parents=True, exist_ok=True)
        spath = state_file(job.state_dir, job.gateways[0], job.bucket, job.prefix)
        done = {} if job.force else read_state(spath)
        todo = [o for o in objects if done.get(o.key) != o.etag]
        skipped = len(objects) - len(todo)
        total = sum(o.size for o in todo)
        print(
            f"{target}: {len(objects)} objects; {skipped} already warm (state {spath}); "
            f"{'would warm' if job.dry_run else 'warming'} {len(todo)} ({human(total)})",
            file=out,
            flush=True,
        )
        if job.dry_run:
            for o in todo:
                print(f"would warm {o.key} ({human(o.size)})", file=out, flush=True)
            return 0
        tty = out.isatty() if job.tty is None else job.tty
        progress = Progress(len(todo), total, out, tty)
        failed = await _warm_all(delivery, job, todo, spath, progress)
        progress.finish()
        if failed:
            print(f"{failed} objects failed; run again to retry them", file=out, flush=True)
            return 1
        spath.unlink(missing_ok=True)
        print(f"done: {progress.status()}", file=out, flush=True)
        return 0
    finally:
        await lister.close()
        await delivery.close()


async def _warm_all(
    delivery: Delivery, job: WarmJob, todo: list[S3Object], spath: Path, progress: Progress
) -> int:
    gate = PriorityGate(max(1, job.concurrency))
    fd = os.open(spath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    failed = 0

    async def one(obj: S3Object) -> None:
        nonlocal failed
        async with gate.hold():
            results = await delivery.warm(job.bucket, obj.key)
        if any(r is None for r in results):
            failed += 1
            progress.advance(obj, "FAILED")
            return
        os.write(
            fd, (json.dumps({"key": obj.key, "etag": obj.etag, "size": obj.size}) + "\n").encode()
        )
        progress.advance(obj)

    try:
        await asyncio.gather(*(one(o) for o in todo))
    finally:
        os.close(fd)
    return failed


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "unionstore"
