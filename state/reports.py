"""Read-only queries for ``sync-worker status`` and the demo, each costing what is at hand,
not the years of history a state file holds.

Counts come from aggregates over the ``(state, next_attempt_at)`` indexes; failing items
are found through the same indexes (a claimed or sent row is never looked at); archives are
read in pages along the ``(first_seen_at, archive_id)`` index, each page with its insights
in one query, so that memory stays flat however many archives there are. A page filtered by
state is read along that index too (``state || ''`` keeps the engine off the state index): from
the state index every page would sort all the matching rows again, a cost that grows with
the square of the history, where reading along the age index grows with it linearly.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

from sync_worker.adapters.flexperto.records import read_record
from sync_worker.state.db import Database
from sync_worker.state.lifecycles import (
    ARCHIVE_FAILING,
    ARCHIVE_SAFE,
    INSIGHT_FAILING,
    PARTICIPANT_FAILING,
    PARTICIPANT_WITHOUT_INSIGHT,
    ParticipantState,
    sql_list,
)

PAGE = 500
ARCHIVE_FIELDS = (
    "archive_id",
    "conference_id",
    "state",
    "remote_status",
    "path",
    "sha256",
    "size",
    "attempts",
    "last_error",
    "next_attempt_at",
    "first_seen_at",
    "stored_at",
    "claimed_at",
)


def counts(db: Database) -> dict[str, dict[str, int]]:
    """Archives per state; insights per state, with participants that got none (no_match,
    ambiguous, or not matched yet) counted by their own state."""
    archives = dict(db.execute("select state, count(*) from archives group by state").fetchall())
    insights = Counter(
        dict(db.execute("select state, count(*) from insights group by state").fetchall())
    )
    insights.update(
        dict(
            db.execute(
                "select state, count(*) from participants "
                f"where state in {sql_list(PARTICIPANT_WITHOUT_INSIGHT)} group by state"
            ).fetchall()
        )
    )
    return {"archives": archives, "insights": dict(insights)}


def failing(db: Database, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Up to ``limit`` items that failed or are parked, with their last error, oldest
    archive first; and how many there are in all."""
    # the states in which an item can carry an error (the indexes lead with the state)
    archives = sql_list(ARCHIVE_FAILING)
    insights = sql_list(INSIGHT_FAILING)
    participants = sql_list(PARTICIPANT_FAILING)
    union = (
        "select archive_id, 'archive' as item, state, attempts, next_attempt_at, last_error "
        f"from archives where state in {archives} and last_error is not null "
        "union all select archive_id, 'insight ' || email, state, attempts, null, last_error "
        f"from insights where state in {insights} and last_error is not null "
        "union all select archive_id, 'insight ' || email, state, attempts, null, last_error "
        f"from participants where state in {participants} and last_error is not null"
    )
    total = db.execute(f"select count(*) from ({union}) f").fetchone()[0]
    rows = db.query(
        f"select f.* from ({union}) f join archives a using (archive_id) "
        "order by a.first_seen_at, f.archive_id, f.item limit ?",
        [limit],
    )
    return list(rows), total


def archives_with_insights(
    db: Database,
    states: tuple[str, ...] = (),
    since: float | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Every archive (of ``states``, first seen at or after ``since``; at most ``limit``)
    oldest first, each with its insights and its participants that got none."""
    where, params = ["true"], []
    if states:
        # || '': no index on the expression, so paged along the age index
        where.append(f"state || '' in {_in(states)}")
        params.extend(states)
    if since is not None:
        where.append("first_seen_at >= ?")
        params.append(since)
    after: list[Any] = []  # the last (first_seen_at, archive_id) of the page before
    left = limit
    while left is None or left > 0:
        page_size = PAGE if left is None else min(PAGE, left)
        keyset = ["(first_seen_at, archive_id) > (?, ?)"] if after else []
        page = list(
            db.query(
                f"select {', '.join(ARCHIVE_FIELDS)} from archives "
                f"where {' and '.join(where + keyset)} "
                "order by first_seen_at, archive_id limit ?",
                [*params, *after, page_size],
            )
        )
        if not page:
            return
        outcomes = _outcomes_of([row["archive_id"] for row in page], db)
        for row in page:
            yield {**row, "insights": outcomes.get(row["archive_id"], [])}
        after = [page[-1]["first_seen_at"], page[-1]["archive_id"]]
        if left is not None:
            left -= len(page)


def _outcomes_of(archive_ids: list[str], db: Database) -> dict[str, list[dict]]:
    """The insights and unmatched participants of the given archives, by archive."""
    ids = _in(archive_ids)
    rows = db.query(
        "select archive_id, email, contact_id, state, te_insight_id, attempts, last_error, "
        f"sent_at from insights where archive_id in {ids} "
        "union all select archive_id, email, null, state, null, attempts, last_error, null "
        f"from participants where archive_id in {ids} and state != '{ParticipantState.MATCHED}' "
        # nulls first: SQLite's order, the participants before the insights (PostgreSQL
        # puts nulls last)
        "order by archive_id, contact_id nulls first, email",
        [*archive_ids, *archive_ids],
    )
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(row.pop("archive_id"), []).append(row)
    return found


def _in(values: tuple[str, ...] | list[str]) -> str:
    """``(?, ?, ...)`` for ``values``."""
    return "(" + ", ".join("?" * len(values)) + ")"


MANIFEST_FIELDS = (
    "archive_id",
    "conference_id",
    "start",
    "end",
    "moderator",
    "participants",
    "size",
    "sha256",
    "stored_at",
    "abandoned_at",
    "location",
    "last_audit_at",
    "last_audit_result",
    "te_insight_ids",
)


def manifest(db: Database, since: float | None = None) -> Iterator[dict[str, Any]]:
    """One row per stored archive (stored at or after ``since``), for an auditor: what it
    was, where it is, when it was last verified, and the insights it gave, a page at a
    time along the ledger's age index."""
    after: list[Any] = []
    while True:
        keyset = ["(a.first_seen_at, a.archive_id) > (?, ?)"] if after else []
        # || '': no index on the expression, so paged along the age index
        where = [f"a.state || '' in {sql_list(ARCHIVE_SAFE)}", *keyset]
        params: list[Any] = [*after]
        if since is not None:
            where.append("a.stored_at >= ?")
            params.append(since)
        page = list(
            db.query(
                "select a.archive_id, a.conference_id, a.record, a.size, a.sha256, a.stored_at, "
                "a.claimed_at as abandoned_at, a.path as location, a.first_seen_at, "
                "u.audited_at as last_audit_at, u.result as last_audit_result "
                "from archives a left join audits u using (archive_id) "
                f"where {' and '.join(where)} order by a.first_seen_at, a.archive_id limit ?",
                [*params, PAGE],
            )
        )
        if not page:
            return
        ids = [row["archive_id"] for row in page]
        people = _participant_counts(db, ids)
        sent = _insight_ids(db, ids)
        for row in page:
            yield _manifest_row(row, people.get(row["archive_id"], 0), sent)
        after = [page[-1]["first_seen_at"], page[-1]["archive_id"]]


def _manifest_row(row: dict[str, Any], participants: int, sent: dict[str, list[int]]) -> dict:
    record = read_record(json.loads(row["record"]))
    return {
        **{key: value for key, value in row.items() if key not in ("record", "first_seen_at")},
        "start": record.start.isoformat() if record.start else None,
        "end": record.end.isoformat() if record.end else None,
        "moderator": record.moderator.email if record.moderator else None,
        "participants": participants,
        "last_audit_at": row["last_audit_at"] or None,  # 0: never audited
        "te_insight_ids": sent.get(row["archive_id"], []),
    }


def _participant_counts(db: Database, ids: list[str]) -> dict[str, int]:
    rows = db.execute(
        f"select archive_id, count(*) from participants where archive_id in {_in(ids)} "
        "group by archive_id",
        ids,
    ).fetchall()
    return dict(rows)


def _insight_ids(db: Database, ids: list[str]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    rows = db.execute(
        f"select archive_id, te_insight_id from insights where archive_id in {_in(ids)} "
        "and te_insight_id is not null order by archive_id, te_insight_id",
        ids,
    ).fetchall()
    for archive_id, insight_id in rows:
        found.setdefault(archive_id, []).append(insight_id)
    return found
