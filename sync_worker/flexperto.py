"""Flexperto: the archive API's shapes and the HTTP client that speaks them.

Every shape that is assumed rather than documented (paging, field names beyond ``id``,
``status``, ``error``, ``subject.conference_id`` and ``sha256CheckSum``) lives in this module,
so a tenant's real spec is one edit away. Records are untrusted input: :func:`parse_record`
turns one into an :class:`ArchiveRecord` or raises :class:`RecordError` saying why not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from sync_worker.config import FlexpertoConfig, HttpConfig, is_loopback
from sync_worker.http import (
    ApiError,
    NetworkTime,
    TransientError,
    json_body,
    new_session,
    raise_for_status,
    retry_policy,
    send,
)

SERVICE = "flexperto"
API_PREFIX = "/api/v2"
LIST_PATH = "/communication/conferences/archives"
RECORD_PATH = "/communication/archives/archives/{archive_id}"
DOWNLOAD_PATH = "/communication/archives/archives/{archive_id}/download"
ABANDON_PATH = "/communication/conferences/conferences/{conference_id}/archive/abandon"

DOWNLOAD_CHUNK_SIZE = 1024 * 1024

KNOWN_STATUSES = frozenset(
    {
        "PROCESSING",
        "ARTIFACT_GATHERING_COMPLETE",
        "PACKING",
        "AVAILABLE",
        "FAILED",
        "ABANDONED",
        "EXPIRED",
    }
)
DOWNLOADABLE = frozenset({"AVAILABLE", "ABANDONED"})

# Ids reach file names: letters, digits, "-", "_", "." only, never leading ".", bounded length.
SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
EMAIL = re.compile(r"[^@\s,]{1,128}@[^@\s,]{1,255}")


class RecordError(ValueError):
    """An archive record that cannot be used; the message says why."""


@dataclass(frozen=True)
class Person:
    email: str
    name: str


@dataclass(frozen=True)
class ArchiveRecord:
    archive_id: str
    conference_id: str
    status: str
    sha256: str | None
    size: int | None
    start: datetime | None
    end: datetime | None
    moderator: Person | None
    participants: tuple[Person, ...]
    raw: dict[str, Any] = field(compare=False, repr=False)

    @property
    def downloadable(self) -> bool:
        return self.status in DOWNLOADABLE


def is_safe_id(value: object) -> bool:
    return isinstance(value, str) and SAFE_ID.fullmatch(value) is not None


def describe_id(value: object) -> str:
    """A log-safe rendering of an untrusted id (bounded, control characters escaped)."""
    return repr(value)[:80]


def parse_record(raw: object) -> ArchiveRecord:
    """Validate one archive record from the API. Raises RecordError."""
    if not isinstance(raw, dict):
        raise RecordError("record is not a JSON object")
    archive_id = raw.get("id")
    if not is_safe_id(archive_id):
        raise RecordError(f"unsafe or missing archive id {describe_id(archive_id)}")
    subject = raw.get("subject")
    if not isinstance(subject, dict):
        raise RecordError("record has no subject object")
    conference_id = subject.get("conference_id")
    if not is_safe_id(conference_id):
        raise RecordError(f"unsafe or missing conference id {describe_id(conference_id)}")
    status = raw.get("status")
    if status not in KNOWN_STATUSES:
        raise RecordError(f"unknown status {describe_id(status)}")
    sha256 = raw.get("sha256CheckSum")
    if isinstance(sha256, str) and SHA256_HEX.fullmatch(sha256):
        sha256 = sha256.lower()
    elif status in DOWNLOADABLE:
        raise RecordError(f"missing or malformed sha256CheckSum {describe_id(sha256)}")
    else:
        sha256 = None
    return ArchiveRecord(
        archive_id=archive_id,
        conference_id=conference_id,
        status=status,
        sha256=sha256,
        size=_size(raw.get("size")),
        start=_timestamp(subject.get("start")),
        end=_timestamp(subject.get("end")),
        moderator=_person(subject.get("moderator")),
        participants=_participants(subject.get("participants")),
        raw=raw,
    )


def _size(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _person(value: object) -> Person | None:
    if not isinstance(value, dict):
        return None
    email = value.get("email")
    if not isinstance(email, str) or not EMAIL.fullmatch(email.strip()):
        return None
    name = value.get("name")
    return Person(email=email.strip().lower(), name=name[:200] if isinstance(name, str) else "")


def _participants(value: object) -> tuple[Person, ...]:
    if not isinstance(value, list):
        return ()
    people: dict[str, Person] = {}
    for item in value:
        person = _person(item)
        if person is not None and person.email not in people:
            people[person.email] = person
    return tuple(people.values())


class FlexpertoClient:
    """The archive endpoints, authenticated by the tenant's api-key."""

    def __init__(
        self, config: FlexpertoConfig, http: HttpConfig, sleep: Callable[[float], None]
    ) -> None:
        self._base = config.base_url + API_PREFIX
        self._page_size = config.page_size
        self._timeout = http.timeout_seconds
        self._retrying = retry_policy(http, sleep)
        self._session = new_session({"api-key": config.api_key, "Accept": "application/json"})
        # The pre-signed download URL points at another host: never send it the api-key.
        self._download_session = new_session()
        self.network = NetworkTime()

    def close(self) -> None:
        self._session.close()
        self._download_session.close()

    def list_records(self, status: str) -> Iterator[object]:
        """Every record with ``status``, page by page; items are raw and unvalidated."""
        offset = 0
        while True:
            params = {"status": status, "limit": self._page_size, "offset": offset}
            body = self._get_json(LIST_PATH, params)
            items = body.get("items") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise ApiError(SERVICE, f"archive list page at offset {offset} has no items list")
            yield from items
            if len(items) < self._page_size:
                return
            offset += len(items)

    def probe(self) -> None:
        """One cheap authenticated call (a list page of one), for ``sync-worker check``."""
        body = self._get_json(LIST_PATH, {"status": "AVAILABLE", "limit": 1, "offset": 0})
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise ApiError(SERVICE, "archive list answered without an items list")

    def get_record(self, archive_id: str) -> object:
        return self._get_json(RECORD_PATH.format(archive_id=archive_id))

    def download_url(self, archive_id: str) -> str:
        """The pre-signed URL the download endpoint redirects to (not followed here)."""
        path = DOWNLOAD_PATH.format(archive_id=archive_id)
        response = self._call("GET", path, allow_redirects=False)
        if response.status_code not in (301, 302, 303, 307, 308):
            raise ApiError(
                SERVICE,
                f"download answered HTTP {response.status_code}, not a redirect",
                response.status_code,
            )
        location = response.headers.get("Location", "")
        url = urljoin(self._base + path, location)
        _check_download_url(url)
        return url

    def open_download(self, url: str, offset: int = 0) -> requests.Response:
        """Start streaming the archive bytes from ``url``, without the api-key."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = send(
            SERVICE,
            lambda: self._download_session.get(
                url, stream=True, timeout=self._timeout, headers=headers, allow_redirects=False
            ),
            self.network,
        )
        if response.status_code >= 300:
            response.close()
            raise_for_status(SERVICE, response)
            raise ApiError(SERVICE, f"download URL answered HTTP {response.status_code}")
        return response

    def iter_chunks(self, response: requests.Response) -> Iterator[bytes]:
        """The body of an open download in large chunks; a broken stream is transient."""
        chunks = response.iter_content(DOWNLOAD_CHUNK_SIZE)
        while True:
            try:
                with self.network.measure():
                    chunk = next(chunks, None)
            except requests.RequestException as exc:
                raise TransientError(
                    SERVICE, f"download interrupted: {type(exc).__name__}"
                ) from None
            if chunk is None:
                return
            yield chunk

    def abandon(self, conference_id: str) -> None:
        """Claim the conference's archive. Tried once: the caller checks the outcome."""
        url = self._base + ABANDON_PATH.format(conference_id=conference_id)
        response = send(
            SERVICE, lambda: self._session.post(url, timeout=self._timeout), self.network
        )
        raise_for_status(SERVICE, response)

    def _get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return json_body(SERVICE, self._call("GET", path, params=params))

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        def attempt() -> requests.Response:
            response = send(
                SERVICE,
                lambda: self._session.request(
                    method, self._base + path, timeout=self._timeout, **kwargs
                ),
                self.network,
            )
            raise_for_status(SERVICE, response)
            return response

        return self._retrying(attempt)


def _check_download_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname or "")):
        return
    raise ApiError(SERVICE, f"download redirect to a refused URL scheme {parts.scheme!r}")
