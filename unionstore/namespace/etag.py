"""The ETag rule: stable per file version, and never shaped like an MD5."""

from __future__ import annotations

import functools
import hashlib

from unionstore.ufs.base import FileStatus


@functools.lru_cache(maxsize=65536)
def etag_of(status: FileStatus) -> str:
    """A stable ETag per file version (size, mtime, checksum). 40 hex digits: it must not look
    like an MD5 (32 hex), which clients such as rclone would check the content against."""
    version = f"{status.size}:{status.mtime_ns}:{status.checksum or ''}".encode()
    return '"' + hashlib.sha1(version, usedforsecurity=False).hexdigest() + '"'
