"""Loopback port helpers for the real-server fixtures.

Nothing here sleeps for a fixed time: callers poll a condition until it holds or a deadline
passes.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def log_tail(path: Path | None, lines: int = 40) -> str:
    """The last `lines` lines of a log file, or a note saying why there are none."""
    if path is None:
        return "(no log file)"
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text.splitlines()[-lines:])


class ProcessDied(RuntimeError):
    """A server process exited while we were waiting for it."""


def check_alive(proc: subprocess.Popen[bytes] | None, what: str, log: Path | None = None) -> None:
    """Raise ProcessDied (with the log tail) if `proc` has exited."""
    if proc is not None and proc.poll() is not None:
        raise ProcessDied(
            f"{what} exited with code {proc.returncode}; log tail ({log}):\n{log_tail(log)}"
        )


def poll_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    interval: float = 0.05,
    max_interval: float = 0.5,
) -> T:
    """Call `condition` until it returns something other than None/False; return that value.

    Raises ProcessDied if `proc` exits, TimeoutError (with the log tail) after `timeout`
    seconds. The pause between calls starts small and doubles up to `max_interval`.
    Exceptions raised by `condition` (other than ProcessDied) count as "not yet" and are
    reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        check_alive(proc, what, log)
        try:
            result = condition()
        except ProcessDied:
            raise
        except Exception as e:  # the server is not ready yet; try again
            last_error = e
            result = None
        if result is not None and result is not False:
            return result
        now = time.monotonic()
        if now >= deadline:
            detail = f"; last error: {last_error!r}" if last_error is not None else ""
            tail = f"\nlog tail ({log}):\n{log_tail(log)}" if log is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{tail}")
        time.sleep(min(interval, max(0.0, deadline - now)))
        interval = min(interval * 2, max_interval)


def port_open(host: str, port: int, connect_timeout: float = 0.5) -> bool:
    """True if a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=connect_timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll until a TCP connect to host:port succeeds.

    Raises ProcessDied with the log tail if `proc` exits first, TimeoutError after `timeout`.
    """
    poll_until(
        lambda: port_open(host, port),
        timeout,
        f"{host}:{port} to accept connections",
        proc=proc,
        log=log,
    )


# Loopback HTTP never goes through a proxy from the environment.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0, method: str = "GET") -> bytes:
    """Fetch a loopback URL directly (ignoring any *_proxy variables); return the body."""
    req = urllib.request.Request(url, method=method)
    with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body
