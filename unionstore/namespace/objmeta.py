"""What a UFS cannot hold about an object: its S3 headers and its ETag, and the state of
multipart uploads. One SQLite file in the gateway's state folder, shared by worker processes,
kept across restarts.

An object's record is keyed by its file id (mount URI + path) and remembers the file version
(size and mtime) it was written as: if the file was changed behind the gateway's back (in HDFS
directly), the record no longer matches and is ignored, so stale headers or a stale MD5 ETag
are never served. Renames and deletes through the gateway move or drop the record.

All methods block; callers run them in a thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    file_id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    etag TEXT NOT NULL,
    headers TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    headers TEXT NOT NULL,
    initiated REAL NOT NULL,
    owner TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_by_key ON uploads (bucket, key);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    modified REAL NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);
"""


@dataclass(frozen=True, slots=True)
class StoredObject:
    etag: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    headers: dict[str, str]
    initiated: float
    owner: str


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    etag: str
    size: int
    modified: float


class ObjectMetaStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    # -- objects ---------------------------------------------------------------------------
    def get(self, file_id: str, version: str) -> StoredObject | None:
        row = (
            self._db()
            .execute(
                "SELECT etag, headers FROM objects WHERE file_id = ? AND version = ?",
                (file_id, version),
            )
            .fetchone()
        )
        return StoredObject(row[0], json.loads(row[1])) if row else None

    def get_many(self, wanted: Mapping[str, str]) -> dict[str, StoredObject]:
        """Many objects at once: ``{file_id: version}`` -> ``{file_id: stored}`` (those found
        at that version)."""
        found: dict[str, StoredObject] = {}
        ids = list(wanted)
        for i in range(0, len(ids), 500):
            batch = ids[i : i + 500]
            marks = ",".join("?" * len(batch))
            query = (
                f"SELECT file_id, version, etag, headers FROM objects WHERE file_id IN ({marks})"
            )
            rows = self._db().execute(query, batch).fetchall()
            found.update(
                {
                    fid: StoredObject(tag, json.loads(headers))
                    for fid, ver, tag, headers in rows
                    if wanted.get(fid) == ver
                }
            )
        return found

    def put(self, file_id: str, version: str, etag: str, headers: Mapping[str, str]) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)",
            (file_id, version, etag, json.dumps(dict(headers))),
        )

    def delete(self, file_id: str) -> None:
        self._db().execute("DELETE FROM objects WHERE file_id = ?", (file_id,))

    def delete_tree(self, prefix: str) -> None:
        self._db().execute(
            "DELETE FROM objects WHERE substr(file_id, 1, ?) = ?", (len(prefix), prefix)
        )

    # -- multipart uploads ------------------------------------------------------------------
    def create_upload(self, upload: Upload) -> None:
        self._db().execute(
            "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
            (
                upload.upload_id,
                upload.bucket,
                upload.key,
                json.dumps(upload.headers),
                upload.initiated,
                upload.owner,
            ),
        )

    def get_upload(self, upload_id: str) -> Upload | None:
        row = (
            self._db()
            .execute(
                "SELECT upload_id, bucket, key, headers, initiated, owner FROM uploads "
                "WHERE upload_id = ?",
                (upload_id,),
            )
            .fetchone()
        )
        return _upload(row) if row else None

    def list_uploads(self, bucket: str, prefix: str = "") -> list[Upload]:
        rows = (
            self._db()
            .execute(
                "SELECT upload_id, bucket, key, headers, initiated, owner FROM uploads "
                "WHERE bucket = ? AND substr(key, 1, ?) = ? ORDER BY key, initiated",
                (bucket, len(prefix), prefix),
            )
            .fetchall()
        )
        return [_upload(r) for r in rows]

    def expired_uploads(self, older_than: float) -> list[Upload]:
        rows = (
            self._db()
            .execute(
                "SELECT upload_id, bucket, key, headers, initiated, owner FROM uploads "
                "WHERE initiated < ?",
                (older_than,),
            )
            .fetchall()
        )
        return [_upload(r) for r in rows]

    def drop_upload(self, upload_id: str) -> None:
        db = self._db()
        db.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
        db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))

    def put_part(self, upload_id: str, number: int, etag: str, size: int) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?)",
            (upload_id, number, etag, size, time.time()),
        )

    def parts(self, upload_id: str) -> list[Part]:
        rows = (
            self._db()
            .execute(
                "SELECT part_number, etag, size, modified FROM parts WHERE upload_id = ? "
                "ORDER BY part_number",
                (upload_id,),
            )
            .fetchall()
        )
        return [Part(*r) for r in rows]

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _upload(row: tuple[str, str, str, str, float, str]) -> Upload:
    return Upload(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])
