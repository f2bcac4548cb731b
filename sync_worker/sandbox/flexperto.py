"""The sandbox Flexperto: archive records, their lifecycle, and the "S3" download host.

Archive files live on disk under ``data_dir/blobs``; the download endpoint redirects to a
separate server (the storage host) with a pre-signed, expiring URL, and that server refuses
any request carrying the Flexperto api-key.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import secrets
import uuid
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sync_worker.clock import Clock
from sync_worker.sandbox.http import Incoming, Reply, ServerState

API = "/api/v2"
LIST = re.compile(rf"{API}/communication/conferences/archives")
RECORD = re.compile(rf"{API}/communication/archives/archives/([^/]+)")
DOWNLOAD = re.compile(rf"{API}/communication/archives/archives/([^/]+)/download")
ABANDON = re.compile(rf"{API}/communication/conferences/conferences/([^/]+)/archive/abandon")
S3_OBJECT = re.compile(r"/archives/([^/]+)\.zip")
URL_LIFETIME_SECONDS = 300
MAX_LIMIT = 500
FILL_BLOCK = 1024 * 1024


@dataclass
class Blob:
    path: Path
    sha256: str
    size: int


class FlexpertoState(ServerState):
    name = "flexperto"

    def __init__(self, clock: Clock, data_dir: Path, api_key: str, packing_listings: int) -> None:
        super().__init__(clock)
        self.api_key = api_key
        self.s3_url = ""  # set once the storage host is listening
        self.signing_key = secrets.token_bytes(16)
        self._blob_dir = data_dir / "blobs"
        self._blob_dir.mkdir(parents=True, exist_ok=True)
        self._entries: list[dict[str, Any]] = []  # listing order, raw records included
        self._records: dict[str, dict[str, Any]] = {}
        self._blobs: dict[str, Blob] = {}
        self._abandoned_at: dict[str, float] = {}
        self._packing: dict[str, int] = {}  # archive id -> listings it stays PACKING for
        self._packing_listings = packing_listings
        self._listings = 0
        self._conference_seq = 4700

    # --- test and seed API --------------------------------------------------------

    def add_archive(
        self,
        conference_id: str | None = None,
        archive_id: str | None = None,
        status: str = "AVAILABLE",
        moderator: dict[str, Any] | None = None,
        participants: list[dict[str, Any]] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        size: int | None = None,
        content: bytes | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        """Create an archive (and its file) and return its record."""
        with self.lock:
            self._conference_seq += 1
            conference_id = conference_id or f"c-{self._conference_seq}"
        archive_id = archive_id or str(uuid.uuid4())
        start = start or datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
        end = end or start + timedelta(minutes=45)
        subject = {
            "conference_id": conference_id,
            "start": _iso(start),
            "end": _iso(end),
            "moderator": moderator,
            "participants": participants or [],
        }
        blob = self._write_blob(archive_id, subject, size, content)
        record = {
            "id": archive_id,
            "status": status,
            "error": error,
            "sha256CheckSum": blob.sha256,
            "created_at": _iso(end + timedelta(minutes=17)),
            "size": blob.size,
            "subject": subject,
        }
        with self.lock:
            self._blobs[archive_id] = blob
            self._records[archive_id] = record
            self._entries.append(record)
            if status == "PACKING":
                self._packing[archive_id] = self._packing_listings
        return record

    def add_raw_record(self, record: Any) -> None:
        """List ``record`` exactly as given, however malformed."""
        with self.lock:
            self._entries.append(record)

    def duplicate_in_listing(self, archive_id: str) -> None:
        with self.lock:
            self._entries.append(self._records[archive_id])

    def records(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(json.dumps(r)) for r in self._records.values()]

    def record(self, archive_id: str) -> dict[str, Any]:
        with self.lock:
            return json.loads(json.dumps(self._records[archive_id]))

    def set_status(self, archive_id: str, status: str) -> None:
        with self.lock:
            self._records[archive_id]["status"] = status
            self._packing.pop(archive_id, None)

    def set_checksum(self, archive_id: str, sha256: str) -> None:
        with self.lock:
            self._records[archive_id]["sha256CheckSum"] = sha256

    def blob_sha256(self, archive_id: str) -> str:
        """The sha256 of the bytes the storage host serves now."""
        blob = self._blobs[archive_id]
        digest = hashlib.sha256()
        with blob.path.open("rb") as handle:
            while chunk := handle.read(FILL_BLOCK):
                digest.update(chunk)
        return digest.hexdigest()

    def corrupt_blob(self, archive_id: str) -> None:
        """Flip bytes in the stored file so that it no longer matches its checksum."""
        path = self._blobs[archive_id].path
        with path.open("r+b") as handle:
            handle.seek(self._blobs[archive_id].size // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))

    def abandoned_at(self, archive_id: str) -> float | None:
        with self.lock:
            return self._abandoned_at.get(archive_id)

    def blob(self, archive_id: str) -> Blob | None:
        with self.lock:
            return self._blobs.get(archive_id)

    # --- HTTP ---------------------------------------------------------------------

    def error(self, status: int, message: str) -> Reply:
        return Reply.json(status, {"code": status, "message": message})

    def handle(self, request: Incoming) -> Reply:
        if request.headers.get("api-key") != self.api_key:
            return self.error(401, "missing or invalid api-key")
        routes = (
            ("GET", LIST, self._list),
            ("GET", DOWNLOAD, self._download),
            ("GET", RECORD, self._get),
            ("POST", ABANDON, self._abandon),
        )
        for method, pattern, action in routes:
            match = pattern.fullmatch(request.path)
            if match:
                if request.method != method:
                    return self.error(405, "method not allowed")
                return action(request, *match.groups())
        return self.error(404, "no such endpoint")

    def _list(self, request: Incoming) -> Reply:
        try:
            limit = int(request.query.get("limit", 100))
            offset = int(request.query.get("offset", 0))
        except ValueError:
            return self.error(400, "limit and offset must be integers")
        if not 0 < limit <= MAX_LIMIT or offset < 0:
            return self.error(400, f"limit must be 1..{MAX_LIMIT}, offset >= 0")
        wanted = set(filter(None, request.query.get("status", "").split(",")))
        with self.lock:
            if offset == 0 and (not wanted or "AVAILABLE" in wanted):
                self._count_listing()
            entries = [e for e in self._entries if not wanted or _status(e) in wanted]
            page = json.loads(json.dumps(entries[offset : offset + limit]))
        return Reply.json(
            200, {"items": page, "total": len(entries), "limit": limit, "offset": offset}
        )

    def _count_listing(self) -> None:
        self._listings += 1
        for archive_id, listings in list(self._packing.items()):
            if self._listings > listings:
                self._records[archive_id]["status"] = "AVAILABLE"
                del self._packing[archive_id]

    def _get(self, _request: Incoming, archive_id: str) -> Reply:
        with self.lock:
            record = self._records.get(archive_id)
            return Reply.json(200, record) if record else self.error(404, "archive not found")

    def _download(self, _request: Incoming, archive_id: str) -> Reply:
        with self.lock:
            record = self._records.get(archive_id)
            if record is None:
                return self.error(404, "archive not found")
            if record["status"] not in ("AVAILABLE", "ABANDONED"):
                return self.error(409, f"archive not downloadable in status {record['status']}")
        expires = int(self.clock.now()) + URL_LIFETIME_SECONDS
        signature = sign(self.signing_key, archive_id, expires)
        location = (
            f"{self.s3_url}/archives/{archive_id}.zip?expires={expires}&signature={signature}"
        )
        return Reply(302, b"", {"Location": location})

    def _abandon(self, _request: Incoming, conference_id: str) -> Reply:
        with self.lock:
            records = [
                r for r in self._records.values() if r["subject"]["conference_id"] == conference_id
            ]
            if not records:
                return self.error(404, "conference not found")
            for record in records:
                if record["status"] == "AVAILABLE":
                    record["status"] = "ABANDONED"
                    self._abandoned_at[record["id"]] = self.clock.now()
        return Reply.json(200, {"conference_id": conference_id, "status": "ABANDONED"})

    def _write_blob(
        self, archive_id: str, subject: dict[str, Any], size: int | None, content: bytes | None
    ) -> Blob:
        path = self._blob_dir / f"{archive_id}.zip"
        digest = hashlib.sha256()
        written = 0
        with path.open("wb") as handle:
            for chunk in _blob_chunks(subject, size, content):
                handle.write(chunk)
                digest.update(chunk)
                written += len(chunk)
        return Blob(path, digest.hexdigest(), written)


class S3State(ServerState):
    """The storage host: serves archive files for valid, unexpired pre-signed URLs."""

    name = "s3"

    def __init__(self, clock: Clock, flexperto: FlexpertoState) -> None:
        super().__init__(clock)
        self._flexperto = flexperto
        self.api_key_rejections = 0

    def error(self, status: int, message: str) -> Reply:
        body = f"<Error><Code>AccessDenied</Code><Message>{message}</Message></Error>"
        return Reply(status, body.encode(), {"Content-Type": "application/xml"})

    def handle(self, request: Incoming) -> Reply:
        if "api-key" in request.headers:
            with self.lock:
                self.api_key_rejections += 1
            return self.error(403, "Unexpected api-key header")
        match = S3_OBJECT.fullmatch(request.path)
        blob = self._flexperto.blob(match.group(1)) if match else None
        if blob is None or request.method not in ("GET", "HEAD"):
            return self.error(404, "NoSuchKey")
        denied = self._check_signature(match.group(1), request.query)
        if denied:
            return self.error(403, denied)
        return _ranged(blob, request.headers.get("range"))

    def _check_signature(self, archive_id: str, query: dict[str, str]) -> str | None:
        try:
            expires = int(query.get("expires", ""))
        except ValueError:
            return "Missing expiry"
        expected = sign(self._flexperto.signing_key, archive_id, expires)
        if not hmac.compare_digest(expected, query.get("signature", "")):
            return "Signature does not match"
        if self.clock.now() > expires:
            return "Request has expired"
        return None


def sign(key: bytes, archive_id: str, expires: int) -> str:
    return hmac.new(key, f"{archive_id}|{expires}".encode(), hashlib.sha256).hexdigest()


def _ranged(blob: Blob, range_header: str | None) -> Reply:
    headers = {"Content-Type": "application/zip", "Accept-Ranges": "bytes"}
    if not range_header:
        return Reply(200, headers=headers, file=blob.path, length=blob.size)
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
    if not match:
        return Reply(416, headers={"Content-Range": f"bytes */{blob.size}"})
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) else blob.size - 1
    if first >= blob.size or last < first:
        return Reply(416, headers={"Content-Range": f"bytes */{blob.size}"})
    last = min(last, blob.size - 1)
    headers["Content-Range"] = f"bytes {first}-{last}/{blob.size}"
    return Reply(206, headers=headers, file=blob.path, offset=first, length=last - first + 1)


def _blob_chunks(subject: dict[str, Any], size: int | None, content: bytes | None):
    """A small real zip by default; ``size`` pseudo-random bytes for big test archives."""
    if content is not None:
        yield content
        return
    if size is None:
        yield _small_zip(subject)
        return
    block = os.urandom(min(FILL_BLOCK, size))
    remaining = size
    while remaining > 0:
        chunk = block[: min(len(block), remaining)]
        yield chunk
        remaining -= len(chunk)
        # vary each block so that no two regions of the file are alike
        block = hashlib.sha256(block[:64]).digest() + block[32:]


def _small_zip(subject: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("themis/metadata.json", json.dumps(subject, indent=2))
        archive.writestr("themis/chat.json", json.dumps([{"from": "moderator", "text": "Hallo"}]))
        archive.writestr("themis/recording.mp4", os.urandom(4096))
        archive.writestr("mithra/contract.pdf", b"%PDF-1.4\n% sandbox contract\n%%EOF\n")
    return buffer.getvalue()


def _status(entry: Any) -> Any:
    return entry.get("status") if isinstance(entry, dict) else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
