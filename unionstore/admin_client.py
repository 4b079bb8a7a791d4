"""A client of a gateway's admin API (``/_unionstore/v1/``), signed with SigV4 by botocore.

Used by ``unionstore cache ...`` and by the prefetch daemon.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from unionstore.errors import ServiceUnavailable, UnionstoreError


class AdminError(UnionstoreError):
    """The gateway answered an admin call with an error (``http_status`` says which)."""

    def __init__(self, message: str, *, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


class AdminClient:
    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        region: str = "us-east-1",
        timeout: float = 300.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._signer = SigV4Auth(Credentials(access_key, secret_key), "s3", region)
        self._http = httpx.AsyncClient(timeout=timeout, trust_env=False)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, action: str, **params: str) -> dict[str, Any]:
        url = f"{self.endpoint}/_unionstore/v1/{action}"
        if params:
            url += "?" + urlencode(sorted(params.items()), safe="", quote_via=quote)
        req = AWSRequest(
            method=method, url=url, headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
        )
        self._signer.add_auth(req)
        try:
            resp = await self._http.request(method, url, headers=dict(req.headers.items()))
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"gateway {self.endpoint} unreachable: {exc}") from None
        if resp.status_code >= 400:
            raise AdminError(
                f"{self.endpoint}: HTTP {resp.status_code}: {resp.text.strip()}",
                http_status=resp.status_code,
            )
        result: dict[str, Any] = json.loads(resp.text)
        return result

    async def invalidate(
        self, bucket: str, prefix: str = "", *, data: bool = False, exact: bool = False
    ) -> dict[str, Any]:
        flags = {"data": str(data).lower(), "exact": str(exact).lower()}
        return await self.call("POST", "invalidate", bucket=bucket, prefix=prefix, **flags)

    async def warm(self, bucket: str, key: str) -> dict[str, Any]:
        return await self.call("POST", "warm", bucket=bucket, key=key)

    async def stats(self) -> dict[str, Any]:
        return await self.call("GET", "stats")
