"""S3 XML documents, built as strings (fast, and the shapes are fixed). Pure functions."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from urllib.parse import quote
from xml.sax.saxutils import escape

from unionstore.namespace.etag import etag_of
from unionstore.namespace.listing import Page
from unionstore.s3.http import iso_date
from unionstore.ufs.base import FileStatus

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'


def _el(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def error(code: str, message: str, resource: str | None, request_id: str) -> bytes:
    parts = [HEAD, "<Error>", _el("Code", code), _el("Message", message)]
    if resource:
        parts.append(_el("Resource", resource))
    parts += [_el("RequestId", request_id), "</Error>"]
    return "".join(parts).encode()


def list_buckets(buckets: Iterable[tuple[str, int]], owner: str) -> bytes:
    parts = [HEAD, f'<ListAllMyBucketsResult xmlns="{NS}">']
    parts.append(f"<Owner>{_el('ID', owner)}{_el('DisplayName', owner)}</Owner><Buckets>")
    for name, created in buckets:
        created_at = _el("CreationDate", iso_date(created))
        parts.append(f"<Bucket>{_el('Name', name)}{created_at}</Bucket>")
    parts.append("</Buckets></ListAllMyBucketsResult>")
    return "".join(parts).encode()


def location(region: str) -> bytes:
    value = "" if region == "us-east-1" else escape(region)
    return f'{HEAD}<LocationConstraint xmlns="{NS}">{value}</LocationConstraint>'.encode()


def _encoder(encoding_type: str | None) -> Callable[[str], str]:
    if encoding_type == "url":
        return lambda s: quote(s, safe="/")
    return lambda s: s


@functools.lru_cache(maxsize=100_000)
def _contents(key: str, st: FileStatus, etag: str | None, url: bool, fetch_owner: bool) -> str:
    """One ``<Contents>`` element; cached, since the same entries are listed again and again."""
    owner = ""
    if fetch_owner:
        name = st.owner or "unionstore"
        owner = f"<Owner>{_el('ID', name)}{_el('DisplayName', name)}</Owner>"
    shown = quote(key, safe="/") if url else key
    return (
        f"<Contents>{_el('Key', shown)}{_el('LastModified', iso_date(st.mtime_ns))}"
        f"{_el('ETag', etag or etag_of(st))}{_el('Size', st.size)}{owner}"
        "<StorageClass>STANDARD</StorageClass></Contents>"
    )


def list_objects_v2(
    bucket: str,
    page: Page,
    *,
    prefix: str,
    delimiter: str,
    max_keys: int,
    encoding_type: str | None,
    token: str | None,
    start_after: str,
    fetch_owner: bool,
) -> bytes:
    enc = _encoder(encoding_type)
    parts = [HEAD, f'<ListBucketResult xmlns="{NS}">', _el("Name", bucket)]
    parts.append(_el("Prefix", enc(prefix)))
    if delimiter:
        parts.append(_el("Delimiter", enc(delimiter)))
    parts.append(_el("MaxKeys", max_keys))
    if encoding_type:
        parts.append(_el("EncodingType", encoding_type))
    parts.append(_el("KeyCount", len(page.entries)))
    if token:
        parts.append(_el("ContinuationToken", token))
    if start_after:
        parts.append(_el("StartAfter", enc(start_after)))
    parts.append(_el("IsTruncated", "true" if page.is_truncated else "false"))
    if page.next_token:
        parts.append(_el("NextContinuationToken", page.next_token))
    _entries(parts, page, enc, fetch_owner, encoding_type == "url")
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def list_objects_v1(
    bucket: str,
    page: Page,
    *,
    prefix: str,
    delimiter: str,
    max_keys: int,
    encoding_type: str | None,
    marker: str,
) -> bytes:
    enc = _encoder(encoding_type)
    parts = [HEAD, f'<ListBucketResult xmlns="{NS}">', _el("Name", bucket)]
    parts.append(_el("Prefix", enc(prefix)))
    parts.append(_el("Marker", enc(marker)))
    if delimiter:
        parts.append(_el("Delimiter", enc(delimiter)))
    parts.append(_el("MaxKeys", max_keys))
    if encoding_type:
        parts.append(_el("EncodingType", encoding_type))
    parts.append(_el("IsTruncated", "true" if page.is_truncated else "false"))
    if page.is_truncated and page.last_key is not None:
        parts.append(_el("NextMarker", enc(page.last_key)))
    _entries(parts, page, enc, True, encoding_type == "url")
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def _entries(
    parts: list[str], page: Page, enc: Callable[[str], str], owner: bool, url: bool
) -> None:
    prefixes = []
    etags = page.etags or {}
    for entry in page.entries:
        if entry.is_prefix:
            prefixes.append(f"<CommonPrefixes>{_el('Prefix', enc(entry.key))}</CommonPrefixes>")
        else:
            assert entry.status is not None
            parts.append(_contents(entry.key, entry.status, etags.get(entry.key), url, owner))
    parts.extend(prefixes)


def versioning() -> bytes:
    return f'{HEAD}<VersioningConfiguration xmlns="{NS}"/>'.encode()
