"""Fixity audits: the last time each stored archive was read back and hashed, and what
came of it.

Every stored archive has a row from the moment it is stored (``audited_at`` 0: never), so
that the least recently audited are found through an index, however long the history.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sync_worker.state.db import Database, transaction

OK, MISMATCH, MISSING = "ok", "mismatch", "missing"
PAGE = 500


@dataclass(frozen=True)
class Stored:
    """A stored archive as the ledger knows it."""

    archive_id: str
    conference_id: str
    location: str
    sha256: str


def least_recently_audited(db: Database, limit: int) -> list[Stored]:
    """The ``limit`` archives audited longest ago (never audited first)."""
    rows = db.query(
        "select a.archive_id, a.conference_id, a.path as location, a.sha256 from audits u "
        "join archives a using (archive_id) order by u.audited_at, u.archive_id limit ?",
        [limit],
    )
    return [Stored(**row) for row in rows]


def every_stored(db: Database) -> Iterator[Stored]:
    """Every stored archive, a page at a time."""
    after = ""
    while True:
        page = [
            Stored(**row)
            for row in db.query(
                "select a.archive_id, a.conference_id, a.path as location, a.sha256 "
                "from audits u join archives a using (archive_id) where u.archive_id > ? "
                "order by u.archive_id limit ?",
                [after, PAGE],
            )
        ]
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].archive_id


def count(db: Database) -> int:
    return db.execute("select count(*) from audits").fetchone()[0]


def note(db: Database, archive_id: str, result: str, detail: str, now: float) -> None:
    with transaction(db):
        db.execute(
            "update audits set audited_at = ?, result = ?, detail = ? where archive_id = ?",
            [now, result, detail[:500], archive_id],
        )
