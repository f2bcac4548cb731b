"""What the worker has learnt about the services: features it relies on that the vendors'
documents do not promise (a filter, a query parameter, a form of the archive list), and
whether the service really has them.

One row per capability: its value (a short text, such as the form of request that worked)
and when that was decided, so that a feature found missing is
tried again after a while rather than never. The decisions are shared by every process using
the state file, and ``sync-worker check`` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sync_worker.state.db import Database, transaction

# The capabilities there are.
LISTING_FORM = "flexperto.listing_form"  # a flexperto.ListingForm, as text
UPDATED_SINCE = "te.updated_since_filter"  # totalexpert.FILTER_SUPPORTED / _REJECTED / _IGNORED


@dataclass(frozen=True)
class Decision:
    value: str
    decided_at: float

    def older_than(self, seconds: float, now: float) -> bool:
        return self.decided_at < now - seconds


def get(db: Database, name: str) -> Decision | None:
    row = next(db.query("select value, decided_at from capabilities where name = ?", [name]), None)
    return None if row is None else Decision(row["value"], row["decided_at"])


def put(db: Database, name: str, value: str, now: float) -> Decision | None:
    """Remember ``value`` for ``name``; returns the decision it replaces, if any."""
    with transaction(db):
        previous = get(db, name)
        db.execute(
            "insert into capabilities (name, value, decided_at) values (?, ?, ?) "
            "on conflict (name) do update set value = excluded.value, "
            "decided_at = excluded.decided_at",
            [name, value, now],
        )
    return previous


def forget(db: Database, name: str) -> None:
    with transaction(db):
        db.execute("delete from capabilities where name = ?", [name])


def everything(db: Database) -> dict[str, Decision]:
    """Every decision, by name."""
    return {
        row["name"]: Decision(row["value"], row["decided_at"])
        for row in db.query("select name, value, decided_at from capabilities order by name")
    }
