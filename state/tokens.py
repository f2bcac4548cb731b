"""The cached Total Expert access token, shared by every process using this state file."""

from __future__ import annotations

import sqlite_utils

from sync_worker.state.db import transaction

# Stop using a token this long before Total Expert says it expires.
EXPIRY_MARGIN_SECONDS = 120.0


def lookup(db: sqlite_utils.Database, key: str, now: float) -> tuple[str, float] | None:
    """The cached token for ``key`` and its expiry, if it is still good for a while."""
    row = next(db.query("select access_token, expires_at from tokens where key = ?", [key]), None)
    if row is None or row["expires_at"] - EXPIRY_MARGIN_SECONDS <= now:
        return None
    return row["access_token"], row["expires_at"]


def remember(
    db: sqlite_utils.Database, key: str, token: str, expires_at: float, now: float
) -> None:
    with transaction(db, durable=True):
        db.execute(
            "insert into tokens (key, access_token, expires_at, obtained_at) values (?, ?, ?, ?) "
            "on conflict (key) do update set access_token = excluded.access_token, "
            "expires_at = excluded.expires_at, obtained_at = excluded.obtained_at",
            [key, token, expires_at, now],
        )


def drop(db: sqlite_utils.Database, key: str, token: str) -> None:
    """Forget ``token`` (rejected by the service), unless another process already replaced it."""
    with transaction(db):
        db.execute("delete from tokens where key = ? and access_token = ?", [key, token])
