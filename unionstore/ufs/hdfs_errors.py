"""What hdfs-native raises, mapped onto the unionstore error tree: one table of rules."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from unionstore.errors import (
    AccessDenied,
    InvalidArgument,
    InvalidKey,
    KeyTooLong,
    NotFound,
    NotImplementedOp,
    QuotaExceeded,
    ServiceUnavailable,
    UnionstoreError,
)

# ---- one error table ------------------------------------------------------------------------
# hdfs-native 0.14.7 raises (seen against Hadoop 2.7.3):
#   FileNotFoundError        missing path; reading a directory ("Path is not a file"); rename src
#   FileExistsError          create over a file/dir; mkdirs over or under a file; a lease held by
#                            another writer (AlreadyBeingCreatedException)
#   IsADirectoryError        read() of a directory (client-side check)
#   NotImplementedError      erasure coding / encryption
#   OSError                  I/O with the NameNode/DataNode (e.g. "Connection refused (os error
#                            111)" from list_status once its retries run out)
#   RuntimeError             every other HdfsError, as its Debug text: 'RPCError("java.class",
#                            "message")', 'DataTransferError("...")', 'ChecksumError', ...
#   pyo3_runtime.PanicException (a BaseException!)  "there is no reactor running ..." when an RPC
#                            cannot connect; "Cannot read past end of the file" (avoided here)
# Rules: (what raised it, Java class / HdfsError variant or None, message part or None) -> ours.
# The first matching rule wins.
_RULES: list[tuple[str, str | None, str | None, type[UnionstoreError]]] = [
    # Java exceptions carried by RPCError("class", "message")
    ("rpc", "java.io.FileNotFoundException", None, NotFound),
    ("rpc", "org.apache.hadoop.security.AccessControlException", None, AccessDenied),
    ("rpc", "QuotaExceededException", None, QuotaExceeded),  # DS/NS quota, in any package
    ("rpc", "org.apache.hadoop.hdfs.protocol.AclException", None, AccessDenied),
    ("rpc", "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException", None, InvalidArgument),
    ("rpc", "org.apache.hadoop.fs.ParentNotDirectoryException", None, InvalidKey),
    ("rpc", "org.apache.hadoop.fs.InvalidPathException", None, InvalidKey),
    ("rpc", "org.apache.hadoop.fs.FileAlreadyExistsException", None, InvalidKey),
    ("rpc", "java.lang.IllegalStateException", "is not a directory", InvalidKey),
    ("rpc", "java.io.IOException", "must both be directories", InvalidKey),
    ("rpc", "java.io.IOException", "under source", InvalidKey),
    ("rpc", "PathComponentTooLongException", None, KeyTooLong),
    ("rpc", "MaxDirectoryItemsExceededException", None, InvalidArgument),
    ("rpc", "org.apache.hadoop.ipc.StandbyException", None, ServiceUnavailable),
    ("rpc", "org.apache.hadoop.ipc.RetriableException", None, ServiceUnavailable),
    ("rpc", "SafeModeException", None, ServiceUnavailable),
    # other HdfsError variants, as RuntimeError("Variant(...)")
    ("variant", "FatalRPCError", None, ServiceUnavailable),
    ("variant", "InvalidRPCResponse", None, ServiceUnavailable),
    ("variant", "DataTransferError", None, ServiceUnavailable),
    ("variant", "ChecksumError", None, ServiceUnavailable),
    ("variant", "BlocksNotFound", None, ServiceUnavailable),
    ("variant", "SASLError", None, AccessDenied),
    ("variant", "GSSAPIError", None, AccessDenied),
    ("variant", "NoSASLMechanism", None, AccessDenied),
    ("variant", "InvalidPath", None, InvalidKey),
    ("variant", "InvalidArgument", None, InvalidArgument),
    # Python exception types
    ("type", "FileNotFoundError", None, NotFound),
    ("type", "IsADirectoryError", None, NotFound),
    ("type", "NotADirectoryError", None, NotFound),
    ("type", "FileExistsError", "lease is currently owned", ServiceUnavailable),
    ("type", "FileExistsError", None, InvalidKey),
    ("type", "PermissionError", None, AccessDenied),
    ("type", "NotImplementedError", None, NotImplementedOp),
    ("type", "OSError", None, ServiceUnavailable),  # socket errors to the NameNode/DataNodes
    ("type", "PanicException", "no reactor running", ServiceUnavailable),  # connect failed
]
_RPC_RE = re.compile(r'^RPCError\("([^"]+)", "(.*)', re.S)
_VARIANT_RE = re.compile(r"^([A-Za-z]+)\b")


def map_hdfs_error(exc: BaseException, path: str) -> UnionstoreError:
    """Translate what hdfs-native raised into the unionstore tree (see ``_RULES``)."""
    text = str(exc)
    java = variant = None
    if isinstance(exc, RuntimeError):
        if m := _RPC_RE.match(text):
            java, text = m.group(1), m.group(2)
        elif m := _VARIANT_RE.match(text):
            variant = m.group(1)
    names = {cls.__name__ for cls in type(exc).__mro__}

    def hit(kind: str, key: str | None, needle: str | None) -> bool:
        if kind == "rpc":
            found = java is not None and key is not None and (java == key or java.endswith(key))
        elif kind == "variant":
            found = variant == key
        else:
            found = key in names
        return found and (needle is None or needle in text)

    ours = next((c for kind, key, needle, c in _RULES if hit(kind, key, needle)), UnionstoreError)
    first_line = text.split("\n", 1)[0].replace("\\n", " ")[:300]
    return ours(f"HDFS: {first_line} ({path!r})", resource=path)


def is_panic(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"


@contextmanager
def hdfs_errors(path: str) -> Iterator[None]:
    try:
        yield
    except UnionstoreError:
        raise
    except BaseException as exc:
        if isinstance(exc, Exception) or is_panic(exc):
            raise map_hdfs_error(exc, path) from exc
        raise
