"""UFS drivers, registered by URI scheme and imported on first use (like fsspec's registry)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from urllib.parse import urlsplit

from unionstore.errors import InvalidArgument
from unionstore.ufs.base import FileStatus, UfsWriter, UnderFileSystem

__all__ = ["REGISTRY", "FileStatus", "UfsWriter", "UnderFileSystem", "open_ufs"]

#: scheme -> "module:Class"
REGISTRY: dict[str, str] = {
    "hdfs": "unionstore.ufs.hdfs:HdfsUfs",
    "s3": "unionstore.ufs.s3:S3Ufs",
    "file": "unionstore.ufs.local:LocalUfs",
}


def open_ufs(uri: str, options: Mapping[str, str] | None = None) -> UnderFileSystem:
    """Build the driver for ``uri``; ``options`` are backend settings (endpoint, keys, user)."""
    scheme = urlsplit(uri).scheme
    target = REGISTRY.get(scheme)
    if target is None:
        raise InvalidArgument(f"unsupported UFS scheme {scheme!r} in {uri!r}")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    ufs: UnderFileSystem = cls(uri, dict(options or {}))
    return ufs
