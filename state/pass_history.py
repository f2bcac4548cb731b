"""Every pass, kept for ``state.history_days``: when it started and finished, how it ended,
what each job did, the bytes stored and the Total Expert requests spent.

A pass costs one insert when it starts and one update when it ends, each its own
transaction: a pass killed at any instant leaves either no row or a row without
``finished_at`` (shown as unfinished), never half a row. Rows older than the period are
deleted when a pass ends, a bounded number at a time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync_worker.state.db import Database, limit_clause, transaction

TABLE = "passes"
OK, FAILED, STOPPED, UNFINISHED = "ok", "failed", "stopped", "unfinished"
# Rows deleted at most at the end of one pass; a longer backlog goes over later passes.
PRUNE_BATCH = 1000


@dataclass(frozen=True)
class PassRecord:
    """One pass as kept: ``outcome`` is ``unfinished`` while ``finished_at`` is None (the
    pass is running, or was killed)."""

    id: int
    started_at: float
    finished_at: float | None
    outcome: str
    tenant: str | None
    jobs: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    bytes_stored: int = 0
    te_requests: int = 0
    te_tokens_requested: int = 0

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at


def start_pass(db: Database, started_at: float, jobs: Sequence[str], tenant: str | None) -> int:
    """Record that a pass has begun; its id, for :func:`finish_pass`."""
    with transaction(db):
        row = db.execute(
            f"insert into {TABLE} (started_at, jobs, tenant) values (?, ?, ?) returning id",
            [started_at, json.dumps(list(jobs)), tenant],
        ).fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class PassEnd:
    """How a pass ended, as :func:`finish_pass` records it."""

    finished_at: float
    outcome: str
    counts: Mapping[str, Mapping[str, int]]
    errors: Mapping[str, str]
    bytes_stored: int
    te_requests: int
    te_tokens_requested: int


def finish_pass(db: Database, pass_id: int, end: PassEnd, keep_after: float) -> None:
    """Complete the pass's row, and delete up to PRUNE_BATCH passes that started before
    ``keep_after``, in one transaction."""
    with transaction(db):
        db.execute(
            f"update {TABLE} set finished_at = ?, outcome = ?, counts = ?, errors = ?, "
            "bytes_stored = ?, te_requests = ?, te_tokens_requested = ? where id = ?",
            [
                end.finished_at,
                end.outcome,
                json.dumps(end.counts, sort_keys=True),
                json.dumps(end.errors, sort_keys=True),
                end.bytes_stored,
                end.te_requests,
                end.te_tokens_requested,
                pass_id,
            ],
        )
        db.execute(
            f"delete from {TABLE} where id in (select id from {TABLE} where started_at < ? "
            "order by started_at limit ?)",
            [keep_after, PRUNE_BATCH],
        )


def passes(db: Database, since: float | None = None, limit: int | None = None) -> list[PassRecord]:
    """The passes that started at or after ``since``, the newest first, at most ``limit``."""
    where, params = ("where started_at >= ?", [since]) if since is not None else ("", [])
    rows = db.query(
        f"select * from {TABLE} {where} order by started_at desc, id desc{limit_clause(limit)}",
        params,
    )
    return [_record(row) for row in rows]


def _record(row: dict[str, Any]) -> PassRecord:
    return PassRecord(
        id=row["id"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        outcome=row["outcome"] or UNFINISHED,
        tenant=row["tenant"],
        jobs=json.loads(row["jobs"]),
        counts=json.loads(row["counts"] or "{}"),
        errors=json.loads(row["errors"] or "{}"),
        bytes_stored=row["bytes_stored"] or 0,
        te_requests=row["te_requests"] or 0,
        te_tokens_requested=row["te_tokens_requested"] or 0,
    )
