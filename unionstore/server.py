"""Run the S3 app on hypercorn with the uvloop event loop."""

from __future__ import annotations

import asyncio
import logging
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from unionstore.config import Config
from unionstore.gateway import Gateway
from unionstore.s3.app import S3App


def hypercorn_config(cfg: Config) -> HypercornConfig:
    hc = HypercornConfig()
    host, port = cfg.host_port
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 75
    hc.h11_max_incomplete_size = 64 * 1024
    hc.graceful_timeout = 5
    return hc


async def run(cfg: Config) -> None:
    gateway = Gateway.from_config(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(S3App(gateway), hypercorn_config(cfg), shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def main(cfg: Config) -> None:
    import uvloop

    uvloop.run(run(cfg))
