"""The sandbox Flexperto: archive records, their lifecycle, and the "S3" download host.

Archive files live on disk under ``data_dir/blobs``; the download endpoint redirects to a
separate server (the storage host) with a pre-signed, expiring URL, and that server refuses
any request carrying the Flexperto api-key.

Listings are ordered by ``created_at`` then ``id``; records added with
:meth:`FakeFlexperto.add_raw_record` and repeats from
:meth:`FakeFlexperto.duplicate_in_listing` follow, in the order they were added, whatever
their status. A PACKING record turns AVAILABLE once it has been through ``packing_listings``
listings that could show it as AVAILABLE (offset 0, no status filter or one naming
AVAILABLE).

The :class:`~sync_worker.sandbox.dialect.Dialect` decides where the endpoints live, what the
list takes and answers, which fields records show (raw records are always shown exactly as
given) and what abandon answers. Archive files are the same in every dialect.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import io
import json
import os
import random
import re
import secrets
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from sync_worker.core.clock import Clock
from sync_worker.sandbox.dialect import Dialect
from sync_worker.sandbox.http import FakeService, Incoming, Reply
from sync_worker.sandbox.webhooks import Webhooks

LIST = "/communication/conferences/archives"
RECORD = "/communication/archives/archives/([^/]+)"
DOWNLOAD = "/communication/archives/archives/([^/]+)/download"
ABANDON = "/communication/conferences/conferences/([^/]+)/archive/abandon"
SUBSCRIBE = "/communication/subscriptions/subscriptions/webhook"
SUBSCRIPTION = "/communication/subscriptions/subscriptions/([^/]+)"
DEFAULT_LIMIT = 100
S3_OBJECT = re.compile(r"/archives/([^/]+)\.zip")
URL_LIFETIME_SECONDS = 300
MAX_LIMIT = 500
FILL_BLOCK = 1024 * 1024
FIRST_MEETING = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@dataclass
class Blob:
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class _Raw:
    """A listing entry from :meth:`FakeFlexperto.add_raw_record`: any value, shown as is."""

    value: Any


class FakeFlexperto(FakeService):
    """Archive records and files, and the Flexperto API over them."""

    name = "flexperto"

    def __init__(
        self,
        clock: Clock,
        data_dir: Path,
        api_key: str,
        packing_listings: int,
        dialect: Dialect,
    ) -> None:
        super().__init__(clock)
        self.api_key = api_key
        self.dialect = dialect
        self.s3_url = ""  # set once the storage host is bound
        self.signing_key = secrets.token_bytes(16)
        self._blob_dir = data_dir / "blobs"
        self._blob_dir.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict[str, Any]] = {}
        self._ordered: list[dict[str, Any]] = []  # records by (created_at, id)
        self._extras: list[_Raw | dict[str, Any]] = []  # raw records and repeats, listed last
        self._by_conference: dict[str, list[dict[str, Any]]] = {}
        self._blobs: dict[str, Blob] = {}
        self._abandoned_at: dict[str, float] = {}
        self._packing_until: dict[str, int] = {}  # archive id -> listings it stays PACKING for
        self._packing_listings = packing_listings
        self._listings = 0
        self._added = 0
        api = re.escape(dialect.flexperto_prefix)
        self._routes = tuple(
            (method, re.compile(api + path), action)
            for method, path, action in (
                ("GET", LIST, self._list),
                ("GET", DOWNLOAD, self._download),
                ("GET", RECORD, self._get),
                ("POST", ABANDON, self._abandon),
                ("POST", SUBSCRIBE, self._subscribe),
                *(
                    [("DELETE", SUBSCRIPTION, self._unsubscribe)]
                    if dialect.flexperto_subscription_id
                    else []
                ),
            )
        )
        self.webhooks = Webhooks()

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
        """Create an archive and its file; return (a copy of) its record.

        Without ``start`` the meetings follow each other an hour apart from 2026-11-20 09:00
        UTC. The file is a small real zip, or ``content``, or ``size`` pseudo-random bytes
        (written in blocks, never held in memory).
        """
        archive_id = archive_id or str(uuid.uuid4())
        with self.lock:
            if archive_id in self._records:
                raise ValueError(f"archive {archive_id!r} exists already")
            self._added += 1
            number = self._added
        start = start or FIRST_MEETING + timedelta(hours=number - 1)
        end = end or start + timedelta(minutes=45)
        subject = {
            "conference_id": conference_id or f"c-{4700 + number}",
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
            self._by_conference.setdefault(subject["conference_id"], []).append(record)
            bisect.insort(self._ordered, record, key=_listing_order)
            if status == "PACKING":
                self._packing_until[archive_id] = self._listings + self._packing_listings
            added = _copy(record)
        if status == "AVAILABLE":
            self.webhooks.archive_available(added)
        return added

    def add_raw_record(self, record: Any) -> None:
        """List ``record`` exactly as given, however malformed (it has no file)."""
        with self.lock:
            self._extras.append(_Raw(record))

    def remove_raw_records(self) -> None:
        """List none of the records added with :meth:`add_raw_record` any more (Flexperto
        mended them)."""
        with self.lock:
            self._extras = [e for e in self._extras if not isinstance(e, _Raw)]

    def duplicate_in_listing(self, archive_id: str) -> None:
        """List the record a second time, after all the others."""
        with self.lock:
            self._extras.append(self._records[archive_id])

    def records(self) -> list[dict[str, Any]]:
        """Copies of the archive records, in the order they were added."""
        with self.lock:
            return [_copy(r) for r in self._records.values()]

    def record(self, archive_id: str) -> dict[str, Any]:
        with self.lock:
            return _copy(self._records[archive_id])

    def set_status(self, archive_id: str, status: str) -> None:
        with self.lock:
            self._records[archive_id]["status"] = status
            self._packing_until.pop(archive_id, None)
            record = _copy(self._records[archive_id])
        if status == "AVAILABLE":
            self.webhooks.archive_available(record)

    def set_checksum(self, archive_id: str, sha256: str) -> None:
        with self.lock:
            self._records[archive_id]["sha256CheckSum"] = sha256

    def blob_sha256(self, archive_id: str) -> str:
        """The sha256 of the bytes the storage host serves now."""
        digest = hashlib.sha256()
        with self._blob(archive_id).path.open("rb") as handle:
            while chunk := handle.read(FILL_BLOCK):
                digest.update(chunk)
        return digest.hexdigest()

    def corrupt_blob(self, archive_id: str) -> None:
        """Flip a byte in the middle of the stored file: it no longer matches its checksum."""
        blob = self._blob(archive_id)
        with self.lock, blob.path.open("r+b") as handle:
            handle.seek(blob.size // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))

    def abandoned_at(self, archive_id: str) -> float | None:
        """Clock time at which the archive was abandoned, None if it was not."""
        with self.lock:
            return self._abandoned_at.get(archive_id)

    def blob(self, archive_id: str) -> Blob | None:
        with self.lock:
            return self._blobs.get(archive_id)

    def _blob(self, archive_id: str) -> Blob:
        blob = self.blob(archive_id)
        if blob is None:
            raise KeyError(archive_id)
        return blob

    # --- HTTP ---------------------------------------------------------------------

    def error(self, status: int, message: str) -> Reply:
        return Reply.json(status, {"code": status, "message": message})

    def handle(self, request: Incoming) -> Reply:
        if request.headers.get("api-key") != self.api_key:
            return self.error(401, "missing or invalid api-key")
        for method, pattern, action in self._routes:
            match = pattern.fullmatch(request.path)
            if match:
                if request.method != method:
                    return self.error(405, "method not allowed")
                return action(request, *map(unquote, match.groups()))
        return self.error(404, "no such endpoint")

    def _list(self, request: Incoming) -> Reply:
        if request.query and not self.dialect.flexperto_list_params:
            return self.error(400, f"unknown query parameter '{next(iter(request.query))}'")
        try:
            offset, limit = self._window(request.query)
        except ValueError as problem:
            return self.error(400, str(problem))
        wanted = set(filter(None, request.query.get("status", "").split(",")))
        with self.lock:
            if offset == 0 and (not wanted or "AVAILABLE" in wanted):
                self._count_listing()
            listed = self._listed(wanted)
            end = None if limit is None else offset + limit
            answer: dict[str, Any] = {"items": [self._shown(e) for e in listed[offset:end]]}
        if self.dialect.flexperto_list_extras:
            answer.update(total=len(listed), limit=limit, offset=offset)
        return Reply.json(200, answer)

    def _window(self, query: dict[str, str]) -> tuple[int, int | None]:
        """The ``offset`` and ``limit`` asked for; limit None: everything.

        Raises ValueError, with the message for the client, on values out of range.
        """
        # A default page only where the client can ask for the next one and see that it
        # exists; otherwise it would silently hide records.
        paged = self.dialect.flexperto_list_params and self.dialect.flexperto_list_extras
        default = DEFAULT_LIMIT if paged else None
        try:
            limit = int(query["limit"]) if "limit" in query else default
            offset = int(query.get("offset", 0))
        except ValueError:
            raise ValueError("limit and offset must be integers") from None
        if (limit is not None and not 0 < limit <= MAX_LIMIT) or offset < 0:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}, offset >= 0")
        return offset, limit

    def _listed(self, wanted: set[str]) -> list[_Raw | dict[str, Any]]:
        """The entries a listing filtered on ``wanted`` statuses (none: no filter) shows."""
        records = [r for r in self._ordered if self._lists(r["status"], wanted)]
        return records + [e for e in self._extras if not wanted or _status(e) in wanted]

    def _lists(self, status: str, wanted: set[str]) -> bool:
        """Whether a record in ``status`` is listed for the ``wanted`` statuses."""
        if wanted:
            return status in wanted
        return self.dialect.flexperto_list_all_statuses or status == "AVAILABLE"

    def _shown(self, entry: _Raw | dict[str, Any]) -> Any:
        """A copy of a listing entry as the API shows it."""
        return _copy(entry.value) if isinstance(entry, _Raw) else self._public(entry)

    def _public(self, record: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``record`` with only the fields the dialect shows."""
        shown = _copy(record)
        if not self.dialect.flexperto_record_size:
            del shown["size"]
        if not self.dialect.flexperto_record_people:
            shown["subject"] = {"conference_id": record["subject"]["conference_id"]}
        return shown

    def _count_listing(self) -> None:
        """One more listing: PACKING records whose time has come turn AVAILABLE."""
        self._listings += 1
        for archive_id, until in list(self._packing_until.items()):
            if self._listings > until:
                self._records[archive_id]["status"] = "AVAILABLE"
                del self._packing_until[archive_id]
                self.webhooks.archive_available(_copy(self._records[archive_id]))

    def _get(self, _request: Incoming, archive_id: str) -> Reply:
        with self.lock:
            record = self._records.get(archive_id)
            if record is None:
                return self.error(404, "archive not found")
            return Reply.json(200, self._public(record))

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
            f"{self.s3_url}/archives/{quote(archive_id, safe='')}.zip"
            f"?expires={expires}&signature={signature}"
        )
        return Reply(302, b"", {"Location": location})

    def _subscribe(self, request: Incoming) -> Reply:
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            return self.error(400, "body is not JSON")
        if not isinstance(body, dict) or not all(
            isinstance(body.get(key), str) and body[key] for key in ("url", "topic")
        ):
            return self.error(400, "url and topic are required")
        subscription_id = self.webhooks.subscribe(body["url"], body["topic"])
        if not self.dialect.flexperto_subscription_id:
            return Reply.json(201, {})
        return Reply.json(201, {"id": subscription_id, "url": body["url"], "topic": body["topic"]})

    def _unsubscribe(self, _request: Incoming, subscription_id: str) -> Reply:
        if not self.webhooks.unsubscribe(subscription_id):
            return self.error(404, "subscription not found")
        return Reply(204, b"", {})

    def _abandon(self, _request: Incoming, conference_id: str) -> Reply:
        with self.lock:
            records = self._by_conference.get(conference_id)
            if not records:
                return self.error(404, "conference not found")
            for record in records:
                if record["status"] == "AVAILABLE":
                    record["status"] = "ABANDONED"
                    self._abandoned_at[record["id"]] = self.clock.now()
        if not self.dialect.flexperto_abandon_body:
            return Reply(204)
        return Reply.json(200, {"conference_id": conference_id, "status": "ABANDONED"})

    def _write_blob(
        self, archive_id: str, subject: dict[str, Any], size: int | None, content: bytes | None
    ) -> Blob:
        path = self._blob_dir / f"{archive_id}.zip"
        digest = hashlib.sha256()
        written = 0
        with path.open("wb") as handle:
            for chunk in _blob_chunks(archive_id, subject, size, content):
                handle.write(chunk)
                digest.update(chunk)
                written += len(chunk)
        return Blob(path, digest.hexdigest(), written)


class FakeStorageHost(FakeService):
    """The storage host: serves archive files for valid, unexpired pre-signed URLs."""

    name = "s3"

    def __init__(self, clock: Clock, flexperto: FakeFlexperto) -> None:
        super().__init__(clock)
        self._flexperto = flexperto
        self.api_key_rejections = 0

    def error(self, status: int, message: str, code: str = "AccessDenied") -> Reply:
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        return Reply(status, body.encode(), {"Content-Type": "application/xml"})

    def handle(self, request: Incoming) -> Reply:
        if "api-key" in request.headers:
            with self.lock:
                self.api_key_rejections += 1
            return self.error(403, "Unexpected api-key header")
        if request.method not in ("GET", "HEAD"):
            return self.error(405, "The method is not allowed", "MethodNotAllowed")
        match = S3_OBJECT.fullmatch(request.path)
        key = unquote(match.group(1)) if match else ""
        denied = self._check_signature(key, request.query)
        if denied:  # as on S3: no signature, no answer about whether the key exists
            return self.error(403, denied)
        blob = self._flexperto.blob(key)
        if blob is None:
            return self.error(404, "The specified key does not exist", "NoSuchKey")
        ranges = self._flexperto.dialect.s3_ranges
        return _ranged(blob, request.headers.get("range") if ranges else None)

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


def _blob_chunks(
    archive_id: str, subject: dict[str, Any], size: int | None, content: bytes | None
) -> Iterator[bytes]:
    """``content``; or ``size`` pseudo-random bytes; or else a small real zip."""
    if content is not None:
        yield content
    elif size is not None:
        yield from _filler(size)
    else:
        yield _small_zip(archive_id, subject)


def _filler(size: int) -> Iterator[bytes]:
    """``size`` pseudo-random bytes in blocks of at most 1 MiB, no two blocks alike."""
    block = os.urandom(min(FILL_BLOCK, size))
    remaining = size
    while remaining > 0:
        chunk = block[:remaining]
        yield chunk
        remaining -= len(chunk)
        block = hashlib.sha256(block[:64]).digest() + block[32:]


def _small_zip(archive_id: str, subject: dict[str, Any]) -> bytes:
    """A small archive as Flexperto packs it; the same bytes for the same id and subject."""
    rng = random.Random(archive_id)
    stamp = datetime.fromisoformat(subject["start"]).timetuple()[:6]
    files = {
        "themis/metadata.json": json.dumps(subject, indent=2).encode(),
        "themis/chat.json": json.dumps([{"from": "moderator", "text": "Hallo"}]).encode(),
        "themis/recording.mp4": rng.randbytes(4096),
        "mithra/contract.pdf": b"%PDF-1.4\n% sandbox contract\n%%EOF\n",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, stamp), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _listing_order(record: dict[str, Any]) -> tuple[str, str]:
    return (record["created_at"], record["id"])


def _status(entry: _Raw | dict[str, Any]) -> Any:
    value = entry.value if isinstance(entry, _Raw) else entry
    return value.get("status") if isinstance(value, dict) else None


def _copy(value: Any) -> Any:
    """A deep copy of JSON data, so callers never share the server's dicts."""
    return json.loads(json.dumps(value))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
