"""Flexperto: the archive API's shapes and the HTTP client that speaks them.

Every shape that is assumed rather than documented lives in this module, each with a way
back when the service disagrees (the README's table "What we assume about the APIs"):

- the ``/api/v2`` prefix, the list's ``status`` filter and its ``limit``/``offset`` paging:
  :class:`ListingForm`; when the service refuses a form (400/404) the next one is tried, down
  to the plain documented request, and a service that ignores paging is noticed;
- record fields beyond ``id``, ``status``, ``error``, ``subject.conference_id`` and
  ``sha256CheckSum`` (``size``, the subject's people and times) are optional; without the
  people, :func:`people_from_archive` reads them from the archive's own metadata file;
- the checksum is hex, or else base64 of the 32 bytes.

Records are untrusted input: :func:`parse_record` turns one into an :class:`ArchiveRecord`
or raises :class:`RecordError` saying why not.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
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
# The archive's own metadata is read only up to this size (a zip member can claim anything).
METADATA_LIMIT = 4 * 1024 * 1024

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
SHA256_BASE64 = re.compile(r"[A-Za-z0-9+/]{43}=")
EMAIL = re.compile(r"[^@\s,]{1,128}@[^@\s,]{1,255}")


class RecordError(ValueError):
    """An archive record that cannot be used; the message says why."""


@dataclass(frozen=True)
class ListingForm:
    """How the archive list is asked for: under which path prefix, and with which of the
    query parameters that the documents do not promise for this endpoint."""

    prefix: str = API_PREFIX
    status_filter: bool = True
    paging: bool = True

    def text(self) -> str:
        return json.dumps(
            {"prefix": self.prefix, "status_filter": self.status_filter, "paging": self.paging}
        )

    @classmethod
    def from_text(cls, text: str) -> ListingForm | None:
        """The form :meth:`text` wrote, or None if ``text`` is not one."""
        try:
            fields = json.loads(text)
            return cls(fields["prefix"], bool(fields["status_filter"]), bool(fields["paging"]))
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        parts = [
            f"prefix {self.prefix or '(none)'}",
            "status filter" if self.status_filter else "no status filter (filtered here)",
            "limit/offset paging" if self.paging else "no paging (one request)",
        ]
        return ", ".join(parts)


PREFERRED_LISTING = ListingForm()
# Tried in this order; the last of each prefix is the plain request the guide shows.
LISTING_FORMS = tuple(
    ListingForm(prefix, status_filter, paging)
    for prefix in (API_PREFIX, "")
    for status_filter, paging in ((True, True), (False, True), (True, False), (False, False))
)


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
    # False when the record does not list participants (a field name the documents do not
    # give): they are then read from the archive's own metadata.
    people_listed: bool = True

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
    sha256 = _sha256_hex(raw.get("sha256CheckSum"))
    if sha256 is None and status in DOWNLOADABLE:
        raise RecordError(
            f"missing or malformed sha256CheckSum {describe_id(raw.get('sha256CheckSum'))}"
        )
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
        people_listed=isinstance(subject.get("participants"), list),
    )


def _sha256_hex(value: object) -> str | None:
    """The checksum as lowercase hex: given as hex (documented as 64 hex digits), or as
    base64 of the 32 bytes, in case the service encodes it that way."""
    if not isinstance(value, str):
        return None
    if SHA256_HEX.fullmatch(value):
        return value.lower()
    if SHA256_BASE64.fullmatch(value):
        try:
            return base64.b64decode(value, validate=True).hex()
        except binascii.Error:
            return None
    return None


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
    return _unique(map(_person, value))


def _unique(people: Iterator[Person | None]) -> tuple[Person, ...]:
    """The people with an email, the first of each address only."""
    found: dict[str, Person] = {}
    for person in people:
        if person is not None and person.email not in found:
            found[person.email] = person
    return tuple(found.values())


def people_from_archive(path: Path) -> tuple[Person | None, tuple[Person, ...]]:
    """The moderator and the other participants named in an archive's own metadata.

    The guide says the archive holds the conference's metadata as JSON in folder ``themis``,
    with the moderator's and participants' e-mails, but not its file name or layout. So:
    every ``themis/*.json`` whose name mentions "meta" is read (up to METADATA_LIMIT), every
    JSON object with an ``email`` in it is a person, and one found under a key mentioning
    "moderator" is the moderator. Anything unreadable yields nobody.
    """
    found: list[tuple[Person, bool]] = []
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename.lower()
                if not (name.startswith("themis/") and name.endswith(".json")):
                    continue
                if "meta" in name and info.file_size <= METADATA_LIMIT:
                    found.extend(_people_in(json.loads(archive.read(info)), False))
    except (OSError, zipfile.BadZipFile, ValueError, RecursionError):
        return None, ()
    moderator = next((person for person, is_moderator in found if is_moderator), None)
    others = (p for p, _ in found if moderator is None or p.email != moderator.email)
    return moderator, _unique(iter(others))


def _people_in(value: object, under_moderator: bool) -> Iterator[tuple[Person, bool]]:
    """Every person in a JSON document, and whether it sits under a "moderator" key."""
    if isinstance(value, dict):
        person = _person(value)
        if person is not None:
            yield person, under_moderator
        for key, item in value.items():
            yield from _people_in(item, under_moderator or "moderator" in str(key).lower())
    elif isinstance(value, list):
        for item in value:
            yield from _people_in(item, under_moderator)


class FlexpertoClient:
    """The archive endpoints, authenticated by the tenant's api-key.

    The endpoints live under the prefix of the listing form in use (:meth:`use`), by
    default ``/api/v2``.
    """

    def __init__(
        self, config: FlexpertoConfig, http: HttpConfig, sleep: Callable[[float], None]
    ) -> None:
        self._root = config.base_url
        self._form = PREFERRED_LISTING
        # An unpaged probe answer is the whole listing: kept for the listing that follows it
        # (form, filters, items), rather than asking for everything twice.
        self._probed: tuple[ListingForm, dict[str, str], list[object]] | None = None
        self._page_size = config.page_size
        self._timeout = http.timeout_seconds
        self._retrying = retry_policy(http, sleep)
        self._session = new_session({"api-key": config.api_key, "Accept": "application/json"})
        # The pre-signed download URL points at another host: never send it the api-key.
        self._download_session = new_session()
        self.network = NetworkTime()

    @property
    def _base(self) -> str:
        return self._root + self._form.prefix

    def close(self) -> None:
        self._session.close()
        self._download_session.close()

    def use(self, form: ListingForm) -> None:
        """Speak ``form`` from now on (its prefix applies to every endpoint)."""
        self._form = form

    @property
    def filters_by_status(self) -> bool:
        return self._form.status_filter

    def negotiate_listing(self) -> ListingForm:
        """The first form of archive list request the service accepts, trying the forms
        that rely on undocumented parameters first. Each try is one small request; a 400
        or 404 moves on to the next form, any other failure is raised."""
        for form in LISTING_FORMS:
            filters = _probe_filters(form)
            try:
                items = self._list_page(form, filters, 1)
            except ApiError as exc:
                if exc.status in (400, 404):
                    continue
                raise
            self._probed = None if form.paging else (form, filters, items)
            return form
        raise ApiError(SERVICE, "the archive list refused every form of request (400/404)")

    def list_records(self, statuses: Sequence[str]) -> Iterator[object]:
        """The records listed with any of ``statuses`` (or, without a status filter, every
        record listed), page by page; items are raw and unvalidated."""
        if not self._form.status_filter:
            yield from self._list(self._form, {})
            return
        for status in statuses:
            yield from self._list(self._form, {"status": status})

    def first_record(self) -> object | None:
        """The first record of a listing (one small request when the form pages), raw."""
        items = self._list_page(self._form, _probe_filters(self._form), 1)
        return items[0] if items else None

    def _list(self, form: ListingForm, filters: dict[str, str]) -> Iterator[object]:
        if not form.paging:
            yield from self._list_page(form, filters, None)
            return
        offset, previous = 0, None
        while True:
            items = self._list_page(form, filters, self._page_size, offset)
            if items == previous:
                return  # the service ignores offset: this page was seen already
            yield from items
            if len(items) != self._page_size:
                return  # the last page, or a service that ignores limit sent everything
            offset, previous = offset + len(items), items

    def _list_page(
        self, form: ListingForm, filters: dict[str, str], limit: int | None, offset: int = 0
    ) -> list[object]:
        if not form.paging and self._probed is not None and self._probed[:2] == (form, filters):
            items, self._probed = self._probed[2], None
            return items
        params: dict[str, Any] = dict(filters)
        if form.paging and limit is not None:
            params.update(limit=limit, offset=offset)
        url = self._root + form.prefix + LIST_PATH
        body = json_body(SERVICE, self._call("GET", url, params=params))
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ApiError(SERVICE, f"archive list page at offset {offset} has no items list")
        return items

    def get_record(self, archive_id: str) -> object:
        url = self._base + RECORD_PATH.format(archive_id=archive_id)
        return json_body(SERVICE, self._call("GET", url))

    def download_url(self, archive_id: str) -> str:
        """The pre-signed URL the download endpoint redirects to (not followed here)."""
        endpoint = self._base + DOWNLOAD_PATH.format(archive_id=archive_id)
        response = self._call("GET", endpoint, allow_redirects=False)
        if response.status_code not in (301, 302, 303, 307, 308):
            raise ApiError(
                SERVICE,
                f"download answered HTTP {response.status_code}, not a redirect",
                response.status_code,
            )
        location = response.headers.get("Location", "")
        url = urljoin(endpoint, location)
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

    def _call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        def attempt() -> requests.Response:
            response = send(
                SERVICE,
                lambda: self._session.request(method, url, timeout=self._timeout, **kwargs),
                self.network,
            )
            raise_for_status(SERVICE, response)
            return response

        return self._retrying(attempt)


def _probe_filters(form: ListingForm) -> dict[str, str]:
    return {"status": "AVAILABLE"} if form.status_filter else {}


def _check_download_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname or "")):
        return
    raise ApiError(SERVICE, f"download redirect to a refused URL scheme {parts.scheme!r}")
