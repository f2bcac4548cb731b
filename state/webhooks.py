"""The secret paths of this tenant's webhook subscriptions at Flexperto.

A secret is written down before it is registered, so that a crash in between leaves no
subscription we cannot recognise. It is ``pending`` until Flexperto accepts it, then the
current one; registering a new one retires the others. A retired secret is still accepted
for a grace period (deliveries in flight are retried for a few seconds), then its
subscription is deleted and the row forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass

from sync_worker.state.db import Database, transaction


@dataclass(frozen=True)
class Secret:
    secret: str
    subscription_id: str | None
    registered_at: float
    pending: bool
    retired_at: float | None


def current(db: Database) -> Secret | None:
    """The newest secret Flexperto accepted and that is not retired."""
    row = next(
        db.query(
            "select * from webhook_secrets where pending = 0 and retired_at is null "
            "order by registered_at desc limit 1"
        ),
        None,
    )
    return None if row is None else _secret(row)


def prepare(db: Database, secret: str, now: float) -> None:
    """Write ``secret`` down before it is registered; retire any left pending by a crash."""
    with transaction(db, durable=True):
        db.execute(
            "update webhook_secrets set retired_at = ? where pending = 1 and retired_at is null",
            [now],
        )
        db.execute(
            "insert into webhook_secrets (secret, registered_at, pending) values (?, ?, 1)",
            [secret, now],
        )


def confirm(db: Database, secret: str, subscription_id: str | None, now: float) -> None:
    """Flexperto accepted ``secret``: it becomes the current one, the others are retired."""
    with transaction(db, durable=True):
        db.execute(
            "update webhook_secrets set retired_at = ? where secret != ? and retired_at is null",
            [now, secret],
        )
        db.execute(
            "update webhook_secrets set pending = 0, subscription_id = ? where secret = ?",
            [subscription_id, secret],
        )


def retire(db: Database, secret: str, now: float) -> None:
    with transaction(db):
        db.execute("update webhook_secrets set retired_at = ? where secret = ?", [now, secret])


def accepted(db: Database, now: float, grace: float) -> list[str]:
    """The secrets a delivery may carry now: all not retired, and those retired within
    ``grace`` seconds."""
    return [
        row[0]
        for row in db.execute(
            "select secret from webhook_secrets where retired_at is null or retired_at > ?",
            [now - grace],
        ).fetchall()
    ]


def expired(db: Database, now: float, grace: float) -> list[Secret]:
    """Secrets retired more than ``grace`` seconds ago: their subscriptions can go."""
    return [
        _secret(row)
        for row in db.query("select * from webhook_secrets where retired_at <= ?", [now - grace])
    ]


def forget(db: Database, secret: str) -> None:
    with transaction(db):
        db.execute("delete from webhook_secrets where secret = ?", [secret])


def _secret(row: dict) -> Secret:
    return Secret(
        secret=row["secret"],
        subscription_id=row["subscription_id"],
        registered_at=row["registered_at"],
        pending=bool(row["pending"]),
        retired_at=row["retired_at"],
    )
