"""Archive checkpoints: what the worker knows about each Flexperto archive (its lifecycle:
state.lifecycles.ArchiveState)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sync_worker.adapters.flexperto.records import ArchiveRecord, OfArchive, read_record
from sync_worker.state.db import Database, execute_many, transaction
from sync_worker.state.lifecycles import (
    ARCHIVE_FAILING,
    ARCHIVE_OPEN,
    ARCHIVE_SAFE,
    ArchiveState,
    ParticipantState,
    sql_list,
)

SAFE = sql_list(ARCHIVE_SAFE)


@dataclass(frozen=True)
class ArchiveRow(OfArchive):
    """One archive as the state file knows it: its record (as last listed, or as stored),
    and where the worker is with it."""

    record: ArchiveRecord
    state: ArchiveState
    remote_status: str
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    path: str | None
    stored_at: float | None


def get(db: Database, archive_id: str) -> ArchiveRow | None:
    row = next(db.query("select * from archives where archive_id = ?", [archive_id]), None)
    return None if row is None else _archive_row(row)


def _archive_row(row: dict[str, Any]) -> ArchiveRow:
    """The row with its record read (it passed parse_record when it was listed)."""
    return ArchiveRow(
        record=read_record(json.loads(row["record"])),
        state=ArchiveState(row["state"]),
        remote_status=row["remote_status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        path=row["path"],
        stored_at=row["stored_at"],
    )


def note_listed(db: Database, records: Iterable[ArchiveRecord], now: float) -> list[str]:
    """Remember listed archives, in one transaction: a first sighting is created pending,
    with the status it was first listed with, a known one gets its latest status (and
    record, until stored). Claimed ones are left alone. Returns the ids seen for the first
    time."""
    new = []
    with transaction(db):
        for item in records:
            known = next(
                db.query("select state from archives where archive_id = ?", [item.archive_id]),
                None,
            )
            if known is not None and known["state"] == ArchiveState.CLAIMED:
                continue
            if known is None:
                new.append(item.archive_id)
            db.execute(
                "insert into archives (archive_id, conference_id, state, remote_status, sha256, "
                "record, first_seen_at, first_seen_status, attempts) "
                "values (?, ?, ?, ?, ?, ?, ?, ?, 0) "
                "on conflict (archive_id) do update set remote_status = excluded.remote_status, "
                f"record = {_unless_safe('record')}, sha256 = {_unless_safe('sha256')}, "
                f"conference_id = {_unless_safe('conference_id')}",
                [
                    item.archive_id,
                    item.conference_id,
                    ArchiveState.PENDING,
                    item.status,
                    item.sha256,
                    json.dumps(item.raw),
                    now,
                    item.status,
                ],
            )
    return new


def _unless_safe(column: str) -> str:
    """In an upsert: the listed value of ``column``, unless the archive is stored already."""
    return f"case when archives.state in {SAFE} then archives.{column} else excluded.{column} end"


def mark_stored(
    db: Database,
    archive_id: str,
    path: str,
    size: int,
    now: float,
    participants: Iterable[tuple[str, str]],
    moderator_email: str | None,
) -> None:
    """Checkpoint a stored archive and queue its participants, in one transaction.

    Not fsynced here: the archive job makes all of a pass's checkpoints durable at once
    (state.db.make_durable) before it abandons anything.
    """
    with transaction(db):
        db.execute(
            "update archives set state = ?, path = ?, size = ?, stored_at = ?, attempts = 0, "
            "last_error = null, next_attempt_at = null where archive_id = ?",
            [ArchiveState.STORED, path, size, now, archive_id],
        )
        db.execute(
            "insert into audits (archive_id, audited_at) values (?, 0) on conflict do nothing",
            [archive_id],
        )
        execute_many(
            db,
            "insert into participants (archive_id, email, name, moderator_email, state, "
            "attempts) values (?, ?, ?, ?, ?, 0) on conflict do nothing",
            [
                (archive_id, email, name, moderator_email, ParticipantState.PENDING)
                for email, name in participants
            ],
        )


def mark_claimed(db: Database, archive_id: str, now: float) -> None:
    """One archive is claimed (found already abandoned at Flexperto)."""
    with transaction(db):
        _claim(db, "archive_id = ?", [archive_id], now)


def mark_conference_claimed(db: Database, conference_id: str, now: float) -> int:
    """Abandon succeeded for a conference: every stored archive of it is claimed."""
    with transaction(db):
        return _claim(
            db, "conference_id = ? and state = ?", [conference_id, ArchiveState.STORED], now
        )


def _claim(db: Database, where: str, params: list[Any], now: float) -> int:
    return db.execute(
        "update archives set state = ?, claimed_at = ?, attempts = 0, last_error = null, "
        f"next_attempt_at = null where {where}",
        [ArchiveState.CLAIMED, now, *params],
    ).rowcount


def open_work(db: Database) -> list[ArchiveRow]:
    """Archives not yet claimed nor parked, oldest first."""
    rows = db.query(
        f"select * from archives where state in {sql_list(ARCHIVE_OPEN)} "
        "order by first_seen_at, archive_id",
    )
    return [_archive_row(row) for row in rows]


def of_conference(db: Database, conference_id: str) -> list[tuple[str, str, str]]:
    """Every archive of the conference the ledger knows, in any state: (archive_id, state,
    remote_status)."""
    return db.execute(
        "select archive_id, state, remote_status from archives where conference_id = ? "
        "order by archive_id",
        [conference_id],
    ).fetchall()


def retry_failed(db: Database, archive_id: str | None = None) -> int:
    """Put failing and parked archives (one, or all) back to work at once; returns how many."""
    # "state in" leads with the state index: the claimed ledger is not scanned
    where = (
        f"state in {sql_list(ARCHIVE_FAILING)} "
        f"and (state = '{ArchiveState.GIVEN_UP}' or last_error is not null)"
    )
    params = []
    if archive_id:
        where += " and archive_id = ?"
        params.append(archive_id)
    with transaction(db):
        cursor = db.execute(
            "update archives set state = case when state != ? then state "
            "when stored_at is null then ? else ? end, "
            f"attempts = 0, next_attempt_at = null where {where}",
            [ArchiveState.GIVEN_UP, ArchiveState.PENDING, ArchiveState.STORED, *params],
        )
    return cursor.rowcount
