"""XML of the write path: parsing request documents (DeleteObjects, CompleteMultipartUpload,
CreateBucketConfiguration) and building the responses. Pure functions.

Request documents are small; they are read whole up to :data:`MAX_XML_BYTES`, DOCTYPEs are
refused (no entity expansion), and anything malformed is MalformedXML (400).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from xml.sax.saxutils import escape

from unionstore.errors import MalformedXML
from unionstore.namespace.objmeta import Part, Upload
from unionstore.s3.http import iso_date
from unionstore.s3.xml import HEAD, NS

MAX_XML_BYTES = 2 << 20
MAX_DELETE_KEYS = 1000


def _el(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def _parse(body: bytes) -> ET.Element:
    if len(body) > MAX_XML_BYTES or b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise MalformedXML()
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise MalformedXML() from None
    return root


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(node: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in node if _local(c.tag) == name]


def _text(node: ET.Element, name: str) -> str | None:
    found = _children(node, name)
    return (found[0].text or "") if found else None


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """DeleteObjects: (keys, quiet)."""
    root = _parse(body)
    if _local(root.tag) != "Delete":
        raise MalformedXML()
    keys = []
    for obj in _children(root, "Object"):
        key = _text(obj, "Key")
        if not key:
            raise MalformedXML()
        keys.append(key)
    if not keys or len(keys) > MAX_DELETE_KEYS:
        raise MalformedXML()
    quiet = (_text(root, "Quiet") or "false").strip().lower() == "true"
    return keys, quiet


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """CompleteMultipartUpload: [(part number, etag)] in the order given."""
    root = _parse(body)
    if _local(root.tag) != "CompleteMultipartUpload":
        raise MalformedXML()
    parts = []
    for part in _children(root, "Part"):
        number, etag = _text(part, "PartNumber"), _text(part, "ETag")
        if number is None or etag is None or not number.strip().isdigit():
            raise MalformedXML()
        parts.append((int(number), etag.strip()))
    if not parts:
        raise MalformedXML()
    return parts


def parse_location(body: bytes) -> str | None:
    """CreateBucketConfiguration's LocationConstraint (None without a body)."""
    if not body.strip():
        return None
    root = _parse(body)
    return _text(root, "LocationConstraint")


def delete_result(deleted: Iterable[str], errors: Iterable[tuple[str, str, str]]) -> bytes:
    parts = [HEAD, f'<DeleteResult xmlns="{NS}">']
    parts += [f"<Deleted>{_el('Key', k)}</Deleted>" for k in deleted]
    for key, code, message in errors:
        parts.append(
            f"<Error>{_el('Key', key)}{_el('Code', code)}{_el('Message', message)}</Error>"
        )
    parts.append("</DeleteResult>")
    return "".join(parts).encode()


def copy_result(tag: str, etag: str, mtime_ns: int) -> bytes:
    return (
        f'{HEAD}<{tag} xmlns="{NS}">{_el("LastModified", iso_date(mtime_ns))}'
        f"{_el('ETag', etag)}</{tag}>"
    ).encode()


def initiate_result(bucket: str, key: str, upload_id: str) -> bytes:
    return (
        f'{HEAD}<InitiateMultipartUploadResult xmlns="{NS}">{_el("Bucket", bucket)}'
        f"{_el('Key', key)}{_el('UploadId', upload_id)}</InitiateMultipartUploadResult>"
    ).encode()


def complete_result(location: str, bucket: str, key: str, etag: str) -> bytes:
    return (
        f'{HEAD}<CompleteMultipartUploadResult xmlns="{NS}">{_el("Location", location)}'
        f"{_el('Bucket', bucket)}{_el('Key', key)}{_el('ETag', etag)}"
        "</CompleteMultipartUploadResult>"
    ).encode()


def list_parts(
    upload: Upload, parts: list[Part], *, marker: int, max_parts: int, truncated: bool
) -> bytes:
    out = [HEAD, f'<ListPartsResult xmlns="{NS}">', _el("Bucket", upload.bucket)]
    out += [_el("Key", upload.key), _el("UploadId", upload.upload_id)]
    out += [_el("PartNumberMarker", marker), _el("MaxParts", max_parts)]
    if truncated and parts:
        out.append(_el("NextPartNumberMarker", parts[-1].number))
    out.append(_el("IsTruncated", "true" if truncated else "false"))
    owner = f"{_el('ID', upload.owner)}{_el('DisplayName', upload.owner)}"
    out += [f"<Initiator>{owner}</Initiator>", f"<Owner>{owner}</Owner>"]
    out.append("<StorageClass>STANDARD</StorageClass>")
    for p in parts:
        out.append(
            f"<Part>{_el('PartNumber', p.number)}"
            f"{_el('LastModified', iso_date(int(p.modified * 1e9)))}"
            f"{_el('ETag', p.etag)}{_el('Size', p.size)}</Part>"
        )
    out.append("</ListPartsResult>")
    return "".join(out).encode()


def list_uploads(bucket: str, uploads: list[Upload], *, prefix: str, max_uploads: int) -> bytes:
    out = [HEAD, f'<ListMultipartUploadsResult xmlns="{NS}">', _el("Bucket", bucket)]
    out += ["<KeyMarker></KeyMarker>", "<UploadIdMarker></UploadIdMarker>"]
    out += [_el("Prefix", prefix), _el("MaxUploads", max_uploads)]
    truncated = len(uploads) > max_uploads
    out.append(_el("IsTruncated", "true" if truncated else "false"))
    for up in uploads[:max_uploads]:
        owner = f"{_el('ID', up.owner)}{_el('DisplayName', up.owner)}"
        out.append(
            f"<Upload>{_el('Key', up.key)}{_el('UploadId', up.upload_id)}"
            f"<Initiator>{owner}</Initiator><Owner>{owner}</Owner>"
            f"<StorageClass>STANDARD</StorageClass>"
            f"{_el('Initiated', iso_date(int(up.initiated * 1e9)))}</Upload>"
        )
    out.append("</ListMultipartUploadsResult>")
    return "".join(out).encode()
