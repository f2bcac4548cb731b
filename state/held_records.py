"""Listed records the worker cannot take, or not yet: kept so that their conference is not
abandoned while they wait, and shown to the operator (``status``, the metrics).

A record is *held* when the record gate rejects it (``rejected``: an unsafe id, an unknown
status, a malformed checksum...) or when it is still being made (``in_progress``:
PROCESSING, ARTIFACT_GATHERING_COMPLETE, PACKING). Abandon works per conference, and for
all the documents say it may schedule every archive of the conference for deletion, so a
held record blocks the abandon of its conference (state.abandon_rule); one whose conference
cannot be read blocks every conference, since it could belong to any.

Each listing marks the records it holds with its own token; once a listing has read every
page, the rows it did not mark are forgotten (Flexperto mended the record, it became
AVAILABLE, or it went away). A listing cut short forgets nothing.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from sync_worker.core.untrusted import storable
from sync_worker.state.db import Database, differ, transaction

REJECTED = "rejected"
IN_PROGRESS = "in_progress"
KINDS = (REJECTED, IN_PROGRESS)
# Untrusted text kept in the state file is cut to this length.
TEXT_LIMIT = 200


@dataclass(frozen=True)
class HeldRecord:
    key: str  # the record's id as given, or a digest of the record when it has none
    conference_id: str | None  # None: unreadable, so every conference is held back
    kind: str
    reason: str
    first_seen_at: float
    last_seen_at: float


def new_listing() -> str:
    """A token for one listing's marks."""
    return secrets.token_hex(8)


def record_key(raw: object) -> str:
    """What names a listed record: its id when it is a string SQLite can keep, else a
    digest of it."""
    ident = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(ident, str) and ident and storable(ident):
        return ident[:TEXT_LIMIT]
    text = json.dumps(raw, sort_keys=True, default=repr)
    return "record-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def record_conference(raw: object) -> str | None:
    """The conference a listed record names, if it names one as a string."""
    subject = raw.get("subject") if isinstance(raw, dict) else None
    conference = subject.get("conference_id") if isinstance(subject, dict) else None
    if isinstance(conference, str) and 0 < len(conference) <= TEXT_LIMIT and storable(conference):
        return conference
    return None


def hold(
    db: Database,
    raw: object,
    kind: str,
    reason: str,
    listing: str,
    now: float,
) -> None:
    """Hold a listed record (or keep holding it), marked as seen by ``listing``. Two
    records of one listing under one key in two conferences hold back every conference
    (either could be lost)."""
    key, conference = record_key(raw), record_conference(raw)
    with transaction(db):
        db.execute(
            "insert into held_records (key, conference_id, kind, reason, listing, "
            "first_seen_at, last_seen_at) values (?, ?, ?, ?, ?, ?, ?) on conflict (key) do "
            "update set conference_id = case when held_records.listing = excluded.listing and "
            f"{differ('held_records.conference_id', 'excluded.conference_id')} then null "
            "else excluded.conference_id end, kind = excluded.kind, "
            "reason = excluded.reason, listing = excluded.listing, "
            "last_seen_at = excluded.last_seen_at",
            [key, conference, kind, reason[:TEXT_LIMIT], listing, now, now],
        )


def forget_unseen(db: Database, listing: str) -> int:
    """After a complete ``listing``: forget what it did not hold; returns how many."""
    with transaction(db):
        return db.execute("delete from held_records where listing != ?", [listing]).rowcount


def get(db: Database, key: str) -> HeldRecord | None:
    row = next(db.query("select * from held_records where key = ?", [key]), None)
    return None if row is None else _held(row)


def blocking(db: Database, conference_id: str) -> list[HeldRecord]:
    """The held records that hold ``conference_id`` back: its own, and those of no
    readable conference."""
    rows = db.query(
        "select * from held_records where conference_id = ? or conference_id is null "
        "order by first_seen_at, key",
        [conference_id],
    )
    return [_held(row) for row in rows]


def listed(db: Database, limit: int) -> tuple[list[HeldRecord], int]:
    """Up to ``limit`` held records, oldest first, and how many there are."""
    total = db.execute("select count(*) from held_records").fetchone()[0]
    rows = db.query("select * from held_records order by first_seen_at, key limit ?", [limit])
    return [_held(row) for row in rows], total


def counts(db: Database) -> dict[str, int]:
    """Held records per kind."""
    return dict(db.execute("select kind, count(*) from held_records group by kind").fetchall())


def _held(row: dict[str, Any]) -> HeldRecord:
    return HeldRecord(
        key=row["key"],
        conference_id=row["conference_id"],
        kind=row["kind"],
        reason=row["reason"],
        first_seen_at=row["first_seen_at"],
        last_seen_at=row["last_seen_at"],
    )
