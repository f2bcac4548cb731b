"""Rate-limit buckets kept in SQLite, shared by every process using the same state file.

A bucket holds ``limit`` tokens; a spent token comes back exactly ``window`` seconds after
it was spent. That is a token bucket with a per-token refill, and it guarantees what Total
Expert enforces: never more than ``limit`` requests in any ``window``-second span. Spends
are recorded as rows, so the check and the spend are one transaction across processes.
"""

from __future__ import annotations

import sqlite_utils

from state.db import transaction


def try_spend(
    db: sqlite_utils.Database, bucket: str, limit: int, window: float, now: float
) -> float | None:
    """Spend one token now. Returns None on success, else when the next token comes back."""
    with transaction(db):
        db.execute("delete from rate_events where bucket = ? and at <= ?", [bucket, now - window])
        row = next(
            db.query(
                "select count(*) as used, min(at) as oldest from rate_events where bucket = ?",
                [bucket],
            )
        )
        if row["used"] < limit:
            db.execute("insert into rate_events (bucket, at) values (?, ?)", [bucket, now])
            return None
        return row["oldest"] + window


def used(db: sqlite_utils.Database, bucket: str, window: float, now: float) -> int:
    """Tokens of ``bucket`` spent in the last ``window`` seconds."""
    row = next(
        db.query(
            "select count(*) as used from rate_events where bucket = ? and at > ?",
            [bucket, now - window],
        )
    )
    return row["used"]
