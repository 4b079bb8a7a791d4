"""The admin HTTP API under ``/_unionstore/v1/``: cache control for operators and the
prefetch daemon. Requests are signed like any S3 request (SigV4/SigV2) and must come from an
admin key.

| method | path | query | does |
|---|---|---|---|
| POST | /_unionstore/v1/invalidate | bucket, prefix, data, exact | drop cached metadata/blocks |
| POST | /_unionstore/v1/warm | bucket, key | fill every block; 503 if some failed |
| GET  | /_unionstore/v1/stats | | cache statistics as JSON |
| GET  | /_unionstore/v1/limits | | the rate limits in force |
| POST | /_unionstore/v1/limits | see below | change limits live |

``POST limits`` takes any of global, per_connection, per_key, requests_per_key, max_in_flight and
origin, with rates like ``50MB/s``, ``100/s`` or ``unlimited``.

Unauthenticated: ``GET /metrics`` (Prometheus) and ``GET /_unionstore/health``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.responses import Response

from unionstore.config import limits_from
from unionstore.errors import AccessDenied, InvalidArgument, MethodNotAllowed, NotFound
from unionstore.gateway import Gateway, Principal
from unionstore.ratelimit import format_rate

PREFIX = "/_unionstore/v1/"


def _json(data: object, status: int = 200) -> Response:
    return Response(json.dumps(data, indent=1), status_code=status, media_type="application/json")


def _flag(query: Mapping[str, str], name: str) -> bool:
    return query.get(name, "false").lower() in ("1", "true", "yes")


async def handle(
    gw: Gateway, method: str, path: str, query: Mapping[str, str], who: Principal
) -> Response:
    if not who.admin:
        raise AccessDenied("The admin API needs an admin key")
    action = path[len(PREFIX) :]
    if action == "limits":
        if method == "POST":
            gw.limits.apply(limits_from(dict(query), gw.limits.config))
        elif method != "GET":
            raise MethodNotAllowed()
        return _json(limits_json(gw))
    if action == "stats":
        if method != "GET":
            raise MethodNotAllowed()
        return _json(stats(gw))
    if action not in ("invalidate", "warm"):
        raise NotFound(f"no admin action {action!r}", resource=path)
    if method != "POST":
        raise MethodNotAllowed()
    bucket = query.get("bucket")
    if not bucket:
        raise InvalidArgument("bucket is required")
    if action == "invalidate":
        prefix = query.get("prefix", "")
        dropped = await gw.invalidate(
            bucket, prefix, data=_flag(query, "data"), exact=_flag(query, "exact")
        )
        return _json({"bucket": bucket, "prefix": prefix, "dropped": dropped})
    key = query.get("key")
    if not key:
        raise InvalidArgument("key is required")
    obj, present, blocks = await gw.warm(bucket, key)
    result = {
        "bucket": bucket,
        "key": key,
        "size": obj.size,
        "etag": obj.etag,
        "blocks": blocks,
        "present": present,
        "complete": present == blocks,
    }
    return _json(result, status=200 if present == blocks else 503)


def limits_json(gw: Gateway) -> dict[str, object]:
    c = gw.limits.config
    return {
        "global": format_rate(c.global_egress),
        "per_connection": format_rate(c.per_connection),
        "per_key": format_rate(c.per_key),
        "requests_per_key": format_rate(c.requests_per_key, unit=""),
        "max_in_flight": c.max_in_flight,
        "origin": format_rate(c.origin),
        "origins": {o: format_rate(b.rate) for o, b in gw.limits.origins.items()},
    }


def stats(gw: Gateway) -> dict[str, object]:
    out: dict[str, object] = {}
    if gw.blocks is not None:
        out["blocks"] = {
            mount: {
                "hits": s.hits,
                "misses": s.misses,
                "ufs_bytes": s.ufs_bytes,
                "served_bytes": s.served_bytes,
                "read_amplification": s.read_amplification,
                "fallbacks": s.fallbacks,
                "fill_failures": s.fill_failures,
                "evictions": s.evictions,
            }
            for mount, s in gw.blocks.stats.items()
        }
        out["fills"] = {"active": gw.blocks.active, "queued": gw.blocks.queued}
        out["cache_bytes"] = gw.blocks.store.volume()
    return out
