"""Archive checkpoints: what the worker knows about each Flexperto archive.

States (see the README for the diagram)::

    pending ──download+verify+store──▶ stored ──abandon──▶ claimed
       │  ▲                              │
       ▼  │ retry after backoff          ▼ (abandon failed: stays stored, retried)
     failed ──max_attempts──▶ given_up ◀─┘
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

import sqlite_utils
from sync_worker.state.db import transaction

PENDING = "pending"
FAILED = "failed"
STORED = "stored"
CLAIMED = "claimed"
GIVEN_UP = "given_up"

SAFE_STATES = (STORED, CLAIMED)


def get(db: sqlite_utils.Database, archive_id: str) -> dict[str, Any] | None:
    return next(db.query("select * from archives where archive_id = ?", [archive_id]), None)


class Listing(NamedTuple):
    """One archive as Flexperto lists it."""

    archive_id: str
    conference_id: str
    remote_status: str
    sha256: str | None
    record: dict[str, Any]


def note_listed(db: sqlite_utils.Database, listings: Iterable[Listing], now: float) -> list[str]:
    """Remember listed archives, in one transaction: a first sighting is created pending, a
    known one gets its latest status (and record, until stored). Claimed ones are left
    alone. Returns the ids seen for the first time."""
    new = []
    with transaction(db):
        for item in listings:
            known = next(
                db.query("select state from archives where archive_id = ?", [item.archive_id]),
                None,
            )
            if known is not None and known["state"] == CLAIMED:
                continue
            if known is None:
                new.append(item.archive_id)
            db.execute(
                "insert into archives (archive_id, conference_id, state, remote_status, sha256, "
                "record, first_seen_at, attempts) values (?, ?, ?, ?, ?, ?, ?, 0) "
                "on conflict (archive_id) do update set remote_status = excluded.remote_status, "
                "record = iif(state in ('stored', 'claimed'), record, excluded.record), "
                "sha256 = iif(state in ('stored', 'claimed'), sha256, excluded.sha256), "
                "conference_id = iif(state in ('stored', 'claimed'), conference_id, "
                "excluded.conference_id)",
                [
                    item.archive_id,
                    item.conference_id,
                    PENDING,
                    item.remote_status,
                    item.sha256,
                    json.dumps(item.record),
                    now,
                ],
            )
    return new


def record_stored(
    db: sqlite_utils.Database,
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
            [STORED, path, size, now, archive_id],
        )
        # plain SQL on the hot path: sqlite-utils' insert_all inspects the table on each call
        db.conn.executemany(
            "insert or ignore into participants (archive_id, email, name, moderator_email, "
            "state, attempts) values (?, ?, ?, ?, 'pending', 0)",
            [(archive_id, email, name, moderator_email) for email, name in participants],
        )


def mark_claimed(db: sqlite_utils.Database, archive_id: str, now: float) -> None:
    """One archive is claimed (found already abandoned at Flexperto)."""
    with transaction(db):
        _claim(db, "archive_id = ?", [archive_id], now)


def mark_conference_claimed(db: sqlite_utils.Database, conference_id: str, now: float) -> int:
    """Abandon succeeded for a conference: every stored archive of it is claimed."""
    with transaction(db):
        return _claim(db, "conference_id = ? and state = 'stored'", [conference_id], now)


def _claim(db: sqlite_utils.Database, where: str, params: list[Any], now: float) -> int:
    return db.execute(
        "update archives set state = ?, claimed_at = ?, attempts = 0, last_error = null, "
        f"next_attempt_at = null where {where}",
        [CLAIMED, now, *params],
    ).rowcount


def open_work(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Archives not yet claimed nor parked, oldest first."""
    return list(
        db.query(
            "select * from archives where state in (?, ?, ?) order by first_seen_at, archive_id",
            [PENDING, FAILED, STORED],
        )
    )


def unsafe_siblings(db: sqlite_utils.Database, conference_id: str, archive_id: str) -> list[str]:
    """Other downloadable archives of the conference not yet stored.

    Abandon works per conference, so it must wait until all of them are safe.
    """
    rows = db.query(
        "select archive_id from archives where conference_id = ? and archive_id != ? "
        "and state not in (?, ?) and remote_status in ('AVAILABLE', 'ABANDONED')",
        [conference_id, archive_id, *SAFE_STATES],
    )
    return [row["archive_id"] for row in rows]


def retry_failed(db: sqlite_utils.Database, archive_id: str | None = None) -> int:
    """Put failing and parked archives (one, or all) back to work at once; returns how many."""
    where = "state != 'claimed' and (state = 'given_up' or last_error is not null)"
    params = []
    if archive_id:
        where += " and archive_id = ?"
        params.append(archive_id)
    with transaction(db):
        cursor = db.execute(
            "update archives set state = case when state != 'given_up' then state "
            "when stored_at is null then 'pending' else 'stored' end, "
            f"attempts = 0, next_attempt_at = null where {where}",
            params,
        )
    return cursor.rowcount
