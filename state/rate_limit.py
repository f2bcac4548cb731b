"""Rate-limit buckets kept in the state, shared by every process using the same database.

A bucket holds ``limit`` tokens; a spent token comes back exactly ``window`` seconds after
it was spent. That is a token bucket with a per-token refill, and it guarantees what Total
Expert enforces: never more than ``limit`` requests in any ``window``-second span. Spends
are recorded as rows (with a running count per bucket, so that a check costs the same with
ten spends in the window as with a million), and the check and the spend are one
transaction across processes.
"""

from __future__ import annotations

from sync_worker.state.db import Database, transaction


def try_spend(db: Database, bucket: str, limit: int, window: float, now: float) -> float | None:
    """Spend one token now. Returns None on success, else when the next token comes back."""
    with transaction(db):
        used = _expire(db, bucket, now - window)
        if used < limit:
            db.execute("insert into rate_events (bucket, at) values (?, ?)", [bucket, now])
            db.execute("update rate_counts set used = used + 1 where bucket = ?", [bucket])
            return None
        oldest = db.execute(
            "select min(at) from rate_events where bucket = ?", [bucket]
        ).fetchone()[0]
        return oldest + window


def used(db: Database, bucket: str, window: float, now: float) -> int:
    """Tokens of ``bucket`` spent in the last ``window`` seconds (reads only)."""
    return db.execute(
        "select count(*) from rate_events where bucket = ? and at > ?", [bucket, now - window]
    ).fetchone()[0]


def _expire(db: Database, bucket: str, horizon: float) -> int:
    """Forget spends at or before ``horizon``; returns how many remain."""
    db.execute(
        "insert into rate_counts (bucket, used) values (?, 0) on conflict do nothing", [bucket]
    )
    expired = db.execute(
        "delete from rate_events where bucket = ? and at <= ?", [bucket, horizon]
    ).rowcount
    if expired:
        db.execute("update rate_counts set used = used - ? where bucket = ?", [expired, bucket])
    return db.execute("select used from rate_counts where bucket = ?", [bucket]).fetchone()[0]
