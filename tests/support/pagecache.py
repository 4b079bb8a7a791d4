"""Dropping a file's pages from the OS page cache, so its next read comes from the disk."""

from __future__ import annotations

import os
from pathlib import Path


def drop_from_page_cache(path: Path | str) -> None:
    """fsync (dirty pages are not dropped), then posix_fadvise(DONTNEED)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
