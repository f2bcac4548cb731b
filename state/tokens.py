"""The cached Total Expert access token, shared by every process using this file, and the
lease that lets one process at a time request a new one while the others wait for it."""

from __future__ import annotations

from sync_worker.state.db import Database, transaction

# Stop using a token this long before Total Expert says it expires.
EXPIRY_MARGIN_SECONDS = 120.0


def lookup(db: Database, key: str, now: float) -> tuple[str, float] | None:
    """The cached token for ``key`` and its expiry, if it is still good for a while."""
    row = next(db.query("select access_token, expires_at from tokens where key = ?", [key]), None)
    if row is None or row["expires_at"] - EXPIRY_MARGIN_SECONDS <= now:
        return None
    return row["access_token"], row["expires_at"]


def expiry(db: Database, key: str) -> float | None:
    """When the cached token for ``key`` expires, if one is cached (good or not)."""
    row = db.execute("select expires_at from tokens where key = ?", [key]).fetchone()
    return None if row is None else row[0]


def remember(db: Database, key: str, token: str, expires_at: float, now: float) -> None:
    with transaction(db, durable=True):
        db.execute(
            "insert into tokens (key, access_token, expires_at, obtained_at) values (?, ?, ?, ?) "
            "on conflict (key) do update set access_token = excluded.access_token, "
            "expires_at = excluded.expires_at, obtained_at = excluded.obtained_at",
            [key, token, expires_at, now],
        )


def drop(db: Database, key: str, token: str) -> None:
    """Forget ``token`` (rejected by the service), unless another process already replaced it."""
    with transaction(db):
        db.execute("delete from tokens where key = ? and access_token = ?", [key, token])


def take_lease(db: Database, key: str, holder: str, now: float, seconds: float) -> float | None:
    """Become the one process requesting a token for ``key`` for ``seconds``. Returns None
    when ``holder`` has the lease, else until when another process holds it."""
    with transaction(db):
        row = db.execute("select holder, until from token_leases where key = ?", [key]).fetchone()
        if row is not None and row[0] != holder and row[1] > now:
            return row[1]
        db.execute(
            "insert into token_leases (key, holder, until) values (?, ?, ?) on conflict (key) "
            "do update set holder = excluded.holder, until = excluded.until",
            [key, holder, now + seconds],
        )
        return None


def release_lease(db: Database, key: str, holder: str) -> None:
    """End ``holder``'s lease (not one another process took after it ran out)."""
    with transaction(db):
        db.execute("delete from token_leases where key = ? and holder = ?", [key, holder])
