"""Flexperto's archive records: their shape, and the one gate untrusted records pass.

:func:`parse_record` turns a record from the API into an :class:`ArchiveRecord` or raises
:class:`RecordError` saying why not. Field names beyond ``id``, ``status``, ``error``,
``subject.conference_id`` and ``sha256CheckSum`` are not documented, so every other field
is optional (see docs/assumptions.md, "What we assume about the APIs"): ``size`` if present,
the subject's times and people (without participants, :func:`people_from_archive` reads
them from the archive's own metadata), and the checksum may be hex or base64.

One bad value fails its record, nothing more: a record is refused when it holds a value
the JSON reader could not take as it came (a number too long, sent as
:class:`~sync_worker.adapters.http.OversizedNumber`) or is nested deeper than MAX_RECORD_DEPTH, as
it could not be stored as JSON and read back; ids are refused when they would name a
file the worker keeps in the store's root (``SHA256SUMS``, in any letter case).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

from sync_worker.core.errors import ItemError
from sync_worker.core.untrusted import MAX_INT_DIGITS, storable

# The archive's own metadata is read only up to this size (a zip member can claim anything).
METADATA_LIMIT = 4 * 1024 * 1024
# Records are a few levels deep; deeper ones are refused (they must survive json.dumps).
MAX_RECORD_DEPTH = 32

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
# Still being made: not downloadable yet, but an archive soon.
IN_PROGRESS = frozenset({"PROCESSING", "ARTIFACT_GATHERING_COMPLETE", "PACKING"})

# Ids reach file names: letters, digits, "-", "_", "." only, never leading ".", bounded length.
SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
# Names the worker keeps at the root of a store, as a conference folder would be named (in
# lower case: file systems may ignore case). Every other one starts with ".".
RESERVED_IDS = frozenset({"sha256sums"})  # the store's stores.SUMS_NAME, in lower case
JSON_SCALARS = (str, float, type(None))
INT_LIMIT = 10**MAX_INT_DIGITS
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
SHA256_BASE64 = re.compile(r"[A-Za-z0-9+/]{43}=")
EMAIL = re.compile(r"[^@\s,]{1,128}@[^@\s,]{1,255}")


class RecordError(ItemError, ValueError):
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
    # False when the record does not list participants (a field name the documents do not
    # give): they are then read from the archive's own metadata.
    people_listed: bool = True

    @property
    def downloadable(self) -> bool:
        return self.status in DOWNLOADABLE


class OfArchive:
    """What is about one archive, through its ``record``: the archive's and its
    conference's ids (rows of the state file that carry the record)."""

    record: ArchiveRecord

    @property
    def archive_id(self) -> str:
        return self.record.archive_id

    @property
    def conference_id(self) -> str:
        return self.record.conference_id


def is_safe_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and SAFE_ID.fullmatch(value) is not None


def printable_id(value: object) -> str:
    """A log-safe rendering of an untrusted id (bounded, control characters escaped; a
    JSON object or array by its kind only: its repr could be huge, or too deep to make)."""
    if isinstance(value, dict | list):
        return f"(a JSON {'object' if isinstance(value, dict) else 'array'})"
    if isinstance(value, int) and not -INT_LIMIT < value < INT_LIMIT:
        return f"(a number of more than {MAX_INT_DIGITS} digits)"
    return repr(value[:80] if isinstance(value, str) else value)[:80]


def parse_record(raw: object) -> ArchiveRecord:
    """Validate one archive record from the API. Raises RecordError."""
    _check_values(raw)
    record = read_record(raw)
    for kind, ident in (("archive", record.archive_id), ("conference", record.conference_id)):
        if ident.lower() in RESERVED_IDS:
            raise RecordError(f"{kind} id {ident!r} is reserved: the store keeps a file so named")
    return record


def read_record(raw: object) -> ArchiveRecord:
    """A record as the ledger keeps it. It passed :func:`parse_record` when it was listed,
    maybe in an older version whose gate let more in: only the checks every version made
    are made again, so that a row kept then cannot stop every pass now. Raises
    RecordError."""
    if not isinstance(raw, dict):
        raise RecordError("record is not a JSON object")
    archive_id = _id(raw.get("id"), "archive")
    subject = raw.get("subject")
    if not isinstance(subject, dict):
        raise RecordError("record has no subject object")
    conference_id = _id(subject.get("conference_id"), "conference")
    status = raw.get("status")
    if not isinstance(status, str) or status not in KNOWN_STATUSES:  # a list is unhashable
        raise RecordError(f"unknown status {printable_id(status)}")
    sha256 = _sha256_hex(raw.get("sha256CheckSum"))
    if sha256 is None and status in DOWNLOADABLE:
        raise RecordError(
            f"missing or malformed sha256CheckSum {printable_id(raw.get('sha256CheckSum'))}"
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


def _check_values(raw: object) -> None:
    """Refuse a record holding a value that is no plain JSON, or nested too deeply."""
    pending: list[tuple[object, int]] = [(raw, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, JSON_SCALARS):
            continue
        if isinstance(value, int):  # bool too
            if -INT_LIMIT < value < INT_LIMIT:
                continue
            raise RecordError(f"record holds a number of more than {MAX_INT_DIGITS} digits")
        if not isinstance(value, dict | list):
            raise RecordError(f"record holds an unreadable value: {str(value)[:80]}")
        if depth > MAX_RECORD_DEPTH:
            raise RecordError(f"record nested deeper than {MAX_RECORD_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value
        pending.extend((child, depth + 1) for child in children)


def _id(value: object, kind: str) -> str:
    """An archive or conference id that is safe as a file name. Raises RecordError."""
    if not is_safe_id(value):
        raise RecordError(f"unsafe or missing {kind} id {printable_id(value)}")
    return value


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
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved into UTC
        return None


def _person(value: object) -> Person | None:
    if not isinstance(value, dict):
        return None
    email = value.get("email")
    if not storable(email) or not EMAIL.fullmatch(email.strip()):
        return None
    name = value.get("name")
    return Person(email=email.strip().lower(), name=name[:200] if storable(name) else "")


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
