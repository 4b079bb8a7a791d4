"""SigV4 header signing for the bridge's requests: pure (no I/O), so tests check it against
botocore's signer byte for byte.

A cold 100 KB file is one signed GET, so signing is paid once per file: botocore's signer
builds an ``AWSRequest``, parses the URL twice and derives the signing key (four HMACs) for
every request. Here the signing key is derived once per day, the ``X-Amz-Date`` value once
per second, and a request costs its canonical form, two hashes and one HMAC.

What is signed is what botocore signs for S3: every header the caller gives (less the ones
proxies may change, ``SIGNED_HEADERS_BLACKLIST``), ``host``, ``x-amz-date``,
``x-amz-content-sha256`` (the payload hash, computed by the caller) and, with temporary
credentials, ``x-amz-security-token``. The path is signed as sent (S3 does not normalise
it), the query sorted as encoded.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from unionstore.s3.sigwire import signing_key

ALGORITHM = "AWS4-HMAC-SHA256"
# botocore's list: headers a hop may add, drop or rewrite are never signed
SIGNED_HEADERS_BLACKLIST = frozenset(
    {
        "authorization",
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)
DEFAULT_PORTS = {"http": 80, "https": 443}


def host_header(endpoint: str) -> str:
    """The ``Host`` an HTTP client sends for ``endpoint``: lower case, no default port."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def canonical_query(query: str) -> str:
    """``a=1&b`` -> ``a=1&b=``, pairs sorted as encoded."""
    if not query:
        return ""
    pairs = sorted(pair.partition("=")[::2] for pair in query.split("&"))
    return "&".join(f"{k}={v}" for k, v in pairs)


class Signer:
    def __init__(
        self,
        access_key: str,
        secret_key: str,
        region: str,
        *,
        session_token: str | None = None,
        service: str = "s3",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.access_key = access_key
        self.session_token = session_token
        self.region, self.service = region, service
        self.clock = clock
        self._secret = secret_key
        self._second = -1
        self._amz_date = ""

    def signing_key(self, day: str) -> bytes:
        """The key for ``day`` (``YYYYMMDD``), derived once per day (the gateway's cache)."""
        return signing_key(self._secret, day, self.region, self.service)

    def _now(self) -> str:
        second = int(self.clock())
        if second != self._second:
            self._second = second
            self._amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
        return self._amz_date

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        payload_sha256: str,
    ) -> dict[str, str]:
        """``headers`` and the ones that authenticate them, to send with ``method path?query``
        (both already encoded) to ``host``."""
        amz_date = self._now()
        day = amz_date[:8]
        out = dict(headers)
        out["X-Amz-Date"] = amz_date
        out["X-Amz-Content-SHA256"] = payload_sha256
        if self.session_token:
            out["X-Amz-Security-Token"] = self.session_token
        signed = {"host": host}
        for name, value in out.items():
            lname = name.lower()
            if lname not in SIGNED_HEADERS_BLACKLIST:
                signed[lname] = " ".join(value.split())
        names = sorted(signed)
        signed_names = ";".join(names)
        canonical = "\n".join(
            (
                method,
                path or "/",
                canonical_query(query),
                "".join(f"{n}:{signed[n]}\n" for n in names),
                signed_names,
                payload_sha256,
            )
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = (
            f"{ALGORITHM}\n{amz_date}\n{scope}\n" + hashlib.sha256(canonical.encode()).hexdigest()
        )
        signature = hmac.new(self.signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        out["Authorization"] = (
            f"{ALGORITHM} Credential={self.access_key}/{scope}, "
            f"SignedHeaders={signed_names}, Signature={signature}"
        )
        return out
