"""What keeps insights from reaching Total Expert, when something does: rejected
credentials, a missing insight type, or TE's token budget spent. One row at most: since
when insights have been blocked (kept while the reason changes), why, and, for rejected
credentials, until when no token is requested again with the same ones (``client``: a
fingerprint of the base URL, client id and secret, so that corrected credentials are tried
at once). The insight job clears it as soon as insights flow again."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sync_worker.state.db import Database, has_table, transaction

CREDENTIALS = "credentials"
INSIGHT_TYPE = "insight_type"
TOKEN_BUDGET = "token_budget"
KINDS = (CREDENTIALS, INSIGHT_TYPE, TOKEN_BUDGET)


@dataclass(frozen=True)
class Block:
    kind: str
    reason: str
    since: float
    retry_at: float | None = None
    client: str | None = None


def client_fingerprint(base_url: str, client_id: str, client_secret: str) -> str:
    """Which credentials were rejected, without keeping them."""
    text = f"sync-worker credentials\n{base_url}\n{client_id}\n{client_secret}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def current(db: Database) -> Block | None:
    """The block in force, if any (None too for a state file without the table)."""
    if not has_table(db, "insight_blocks"):
        return None
    row = db.execute(
        "select kind, reason, since, retry_at, client from insight_blocks where id = 1"
    ).fetchone()
    return None if row is None else Block(*row)


def note(
    db: Database,
    kind: str,
    reason: str,
    now: float,
    retry_at: float | None = None,
    client: str | None = None,
) -> Block:
    """Record that insights are blocked for ``reason``; the start of a block in force is
    kept. Returns the block now recorded."""
    with transaction(db):
        found = current(db)
        since = now if found is None else found.since
        db.execute(
            "insert into insight_blocks (id, kind, reason, since, retry_at, client) "
            "values (1, ?, ?, ?, ?, ?) on conflict (id) do update set kind = excluded.kind, "
            "reason = excluded.reason, since = excluded.since, retry_at = excluded.retry_at, "
            "client = excluded.client",
            [kind, reason, since, retry_at, client],
        )
    return Block(kind, reason, since, retry_at, client)


def clear(db: Database) -> Block | None:
    """Insights flow again: forget the block; returns the one there was."""
    with transaction(db):
        found = current(db)
        if found is not None:
            db.execute("delete from insight_blocks where id = 1")
    return found
