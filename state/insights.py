"""The insight outbox and ledger.

``participants`` is the outbox the archive job fills when it stores an archive: one row per
participant email, to be matched against Total Expert contacts. ``insights`` is the ledger:
one row per (archive, contact), moved ``pending → sending → sent``. A row left in
``sending`` means a POST whose outcome is unknown, so it is looked up in Total Expert before
being posted again. The insights of an archive listed ABANDONED before this worker abandoned
it (first seen so: rescued after the state was lost; or abandoned by another worker) start
in ``sending``: another POST may have been made for them. When that look-up cannot be
trusted (TE's insight list does not show the ``data`` we sent), the row is parked as
``unverified``: posting it again could double it, so an operator decides. A participant
whose address too many contacts share is parked as ``ambiguous`` for an operator too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from sync_worker.adapters.flexperto.records import ArchiveRecord, OfArchive, read_record
from sync_worker.state.db import Database, execute_many, transaction
from sync_worker.state.lifecycles import (
    INSIGHT_OPEN,
    INSIGHT_RETRIED,
    PARTICIPANT_OPEN,
    PARTICIPANT_PARKED,
    InsightState,
    ParticipantState,
    sql_list,
)


@dataclass(frozen=True)
class ParticipantRow:
    """A participant of a stored archive, to be matched with TE contacts."""

    archive_id: str
    conference_id: str
    email: str
    moderator_email: str | None
    next_attempt_at: float | None


@dataclass(frozen=True)
class InsightRow(OfArchive):
    """An insight to post for one archive and contact, with the archive's record."""

    record: ArchiveRecord
    contact_id: int
    owner_id: int
    state: InsightState
    next_attempt_at: float | None


def open_participants(db: Database) -> list[ParticipantRow]:
    """Participants still to be matched, oldest archive first."""
    rows = db.query(
        "select p.archive_id, a.conference_id, p.email, p.moderator_email, p.next_attempt_at "
        "from participants p join archives a using (archive_id) "
        f"where p.state in {sql_list(PARTICIPANT_OPEN)} "
        "order by a.first_seen_at, p.archive_id, p.email",
    )
    return [ParticipantRow(**row) for row in rows]


def queue_insights(
    db: Database,
    archive_id: str,
    email: str,
    contacts: Iterable[tuple[int, int]],
) -> None:
    """Queue one insight per (contact id, owner id) and close the participant, atomically.
    Those of an archive abandoned elsewhere are queued ``sending``: looked for first."""
    contacts = list(contacts)
    with transaction(db):
        state = (
            InsightState.SENDING if _abandoned_elsewhere(db, archive_id) else InsightState.PENDING
        )
        execute_many(
            db,
            "insert into insights (archive_id, contact_id, owner_id, email, state, attempts) "
            "values (?, ?, ?, ?, ?, 0) on conflict do nothing",
            [(archive_id, contact_id, owner_id, email, state) for contact_id, owner_id in contacts],
        )
        _close_participant(
            db,
            archive_id,
            email,
            ParticipantState.MATCHED if contacts else ParticipantState.NO_MATCH,
        )


def park_participant(db: Database, archive_id: str, email: str, error: str) -> None:
    """Park a participant as ``ambiguous`` (too many contacts share its address), with why."""
    with transaction(db):
        _close_participant(db, archive_id, email, ParticipantState.AMBIGUOUS, error[:500])


def _abandoned_elsewhere(db: Database, archive_id: str) -> bool:
    """Whether the archive was listed ABANDONED before this worker abandoned it: first seen
    so, or so since (the listing does not update a claimed archive)."""
    row = db.execute(
        "select first_seen_status, remote_status from archives where archive_id = ?",
        [archive_id],
    ).fetchone()
    return row is not None and "ABANDONED" in row


def _close_participant(
    db: Database,
    archive_id: str,
    email: str,
    state: ParticipantState,
    error: str | None = None,
) -> None:
    db.execute(
        "update participants set state = ?, last_error = ?, next_attempt_at = null "
        "where archive_id = ? and email = ?",
        [state, error, archive_id, email],
    )


def open_insights(db: Database) -> list[InsightRow]:
    """Insights not yet sent nor parked, oldest archive first, each with its archive's
    record (parsed once per row)."""
    rows = db.query(
        "select a.record, i.contact_id, i.owner_id, i.state, i.next_attempt_at "
        "from insights i join archives a using (archive_id) "
        f"where i.state in {sql_list(INSIGHT_OPEN)} "
        "order by a.first_seen_at, i.archive_id, i.contact_id",
    )
    return [
        InsightRow(
            **{
                **row,
                "record": read_record(json.loads(row["record"])),
                "state": InsightState(row["state"]),
            }
        )
        for row in rows
    ]


def mark_sending(db: Database, keys: Iterable[tuple[str, int]]) -> None:
    """Mark insights (archive id, contact id) as about to be posted, durably: after a crash
    or a power cut, each is looked for in TE before it is posted again."""
    with transaction(db, durable=True):
        for archive_id, contact_id in keys:
            db.execute(
                "update insights set state = ? where archive_id = ? and contact_id = ?",
                [InsightState.SENDING, archive_id, contact_id],
            )


def mark_sent(
    db: Database,
    archive_id: str,
    contact_id: int,
    te_insight_id: int | None,
    now: float,
) -> None:
    """TE has the insight; ``te_insight_id`` is None when TE did not say its id."""
    with transaction(db):
        db.execute(
            "update insights set state = ?, te_insight_id = ?, sent_at = ?, last_error = null, "
            "next_attempt_at = null where archive_id = ? and contact_id = ?",
            [InsightState.SENT, te_insight_id, now, archive_id, contact_id],
        )


def set_te_insight_id(db: Database, archive_id: str, contact_id: int, te_insight_id: int) -> None:
    """Note the id of a sent insight, learnt after the fact."""
    with transaction(db):
        db.execute(
            "update insights set te_insight_id = ? where archive_id = ? and contact_id = ?",
            [te_insight_id, archive_id, contact_id],
        )


def give_up(
    db: Database,
    archive_id: str,
    contact_id: int,
    error: str,
    state: InsightState = InsightState.GIVEN_UP,
) -> None:
    """Park an insight: refused for good by Total Expert (a 4xx other than 401/429), or
    ``UNVERIFIED`` (its POST's outcome cannot be found out)."""
    with transaction(db):
        db.execute(
            "update insights set state = ?, last_error = ?, next_attempt_at = null "
            "where archive_id = ? and contact_id = ?",
            [state, error[:500], archive_id, contact_id],
        )


def retry_failed(db: Database, archive_id: str | None = None) -> int:
    """Put failing and parked participants and insights (of one archive, or all) back to work.
    An ``ambiguous`` participant is matched again (under the ceiling then configured).

    A parked insight may have been posted before it failed, so it is looked for before it is
    posted again; except an ``unverified`` one, which cannot be looked for: the operator who
    retries it has checked that TE does not have it, and it is posted.
    """
    which, params = ("and archive_id = ?", [archive_id]) if archive_id else ("", [])
    with transaction(db):  # each "state in" leads with the state index: no ledger scan
        count = db.execute(
            f"update participants set state = '{ParticipantState.PENDING}', attempts = 0, "
            f"next_attempt_at = null where state in {sql_list(PARTICIPANT_PARKED)} {which}",
            params,
        ).rowcount
        count += db.execute(
            "update insights set state = case when state = ? then ? else ? end, "
            f"attempts = 0, next_attempt_at = null where state in {sql_list(INSIGHT_RETRIED)} "
            f"and (state != ? or last_error is not null) {which}",
            [
                InsightState.UNVERIFIED,
                InsightState.PENDING,
                InsightState.SENDING,
                InsightState.SENDING,
                *params,
            ],
        ).rowcount
    return count
