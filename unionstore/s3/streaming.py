"""A lean streaming response for object bodies.

starlette's StreamingResponse runs its body loop in an anyio task group; on the hot path of a
cached GET that costs a fifth of the throughput (measured: 2.0 vs 2.6 GB/s on loopback). This
one sends ASGI messages directly and watches for the client's disconnect in one side task, so
a client that goes away stops the stream (and the cache fills it drives) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class ObjectStream(Response):
    def __init__(
        self, chunks: AsyncIterator[bytes], status_code: int, headers: Mapping[str, str]
    ) -> None:
        super().__init__(None, status_code=status_code, headers=headers)
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body = asyncio.ensure_future(self._body(send))
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({body, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not body.done():
                body.cancel()
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            with contextlib.suppress(asyncio.CancelledError):
                await body
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _body(self, send: Send) -> None:
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
