"""A local copy of Total Expert's contacts and users, so that matching a participant costs
no request.

Filled in pages, then kept current with what changed since the last pass where TE supports
that (see jobs.contact_directory), or re-read whole. Every row remembers when TE last showed
it (``seen_at``), so that a complete re-read can drop what TE no longer has. For an
organisation too large to copy for the work at hand, contacts are looked up one email at a
time instead, and those answers are kept here too (``te_lookups``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sync_worker.state.db import Database, limit_clause, transaction, upsert

CONTACTS_SYNCED_AT = "contacts_synced_at"
USERS_SYNCED_AT = "users_synced_at"
FULL_READ_AT = "full_read_at"
CONTACT_PAGES = "contact_pages"
CONTACT_PAGES_SEEN_AT = "contact_pages_seen_at"


def get_meta(db: Database, key: str) -> str | None:
    row = next(db.query("select value from te_meta where key = ?", [key]), None)
    return None if row is None else row["value"]


def set_meta(db: Database, values: dict[str, str]) -> None:
    with transaction(db):
        upsert(
            db, "te_meta", [{"key": key, "value": value} for key, value in values.items()], ("key",)
        )


def forget_meta(db: Database, key: str) -> None:
    with transaction(db):
        db.execute("delete from te_meta where key = ?", [key])


def upsert_contacts(db: Database, contacts: Iterable[dict[str, Any]], now: float) -> None:
    """Insert or update contacts (dicts with contact_id, email, owner_id) seen at ``now``."""
    # taken before the transaction: producing them may need the database
    rows = [{**row, "seen_at": now} for row in contacts]
    with transaction(db):
        upsert(db, "te_contacts", rows, ("contact_id",))


def contacts_by_email(db: Database, email: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The contacts with ``email``, at most ``limit`` of them (None: all)."""
    return list(
        db.query(
            "select contact_id, email, owner_id from te_contacts where email = ? "
            f"order by contact_id{limit_clause(limit)}",
            [email.lower()],
        )
    )


def forget_contact(db: Database, contact_id: int) -> None:
    """Drop a contact TE no longer knows, and any cached lookup that returned it."""
    with transaction(db):
        db.execute(
            "delete from te_lookups where email in "
            "(select email from te_contacts where contact_id = ?)",
            [contact_id],
        )
        db.execute("delete from te_contacts where contact_id = ?", [contact_id])


def upsert_users(db: Database, users: Iterable[dict[str, Any]], now: float) -> None:
    """Insert or update users (dicts with user_id, email) seen at ``now``."""
    rows = [{**row, "seen_at": now} for row in users]
    with transaction(db):
        upsert(db, "te_users", rows, ("user_id",))


def drop_unseen(db: Database, since: float) -> int:
    """After a complete re-read that began at ``since``: drop the contacts and users it did
    not show (TE deleted them), and the cached lookups that returned such contacts."""
    with transaction(db):
        db.execute(
            "delete from te_lookups where kind = 'contact' and email in (select email from "
            "te_contacts where coalesce(seen_at, 0) < ?)",
            [since],
        )
        dropped = db.execute(
            "delete from te_contacts where coalesce(seen_at, 0) < ?", [since]
        ).rowcount
        dropped += db.execute(
            "delete from te_users where coalesce(seen_at, 0) < ?", [since]
        ).rowcount
    return dropped


def user_by_email(db: Database, email: str) -> dict[str, Any] | None:
    return next(
        db.query("select user_id, email from te_users where email = ?", [email.lower()]), None
    )


def note_lookup(db: Database, email: str, kind: str, now: float) -> None:
    """Remember that ``email`` was looked up as a ``kind`` (contact/user) at ``now``."""
    with transaction(db):
        upsert(
            db,
            "te_lookups",
            [{"email": email.lower(), "kind": kind, "looked_up_at": now}],
            ("email", "kind"),
        )


def looked_up_since(db: Database, email: str, kind: str, since: float) -> bool:
    row = next(
        db.query(
            "select 1 from te_lookups where email = ? and kind = ? and looked_up_at >= ?",
            [email.lower(), kind, since],
        ),
        None,
    )
    return row is not None


def replace_contacts_of(
    db: Database, email: str, contacts: Iterable[dict[str, Any]], now: float
) -> None:
    """Store what a lookup of ``email`` found (perhaps nothing), replacing what was known."""
    rows = [{**row, "seen_at": now} for row in contacts]
    with transaction(db):
        db.execute("delete from te_contacts where email = ?", [email.lower()])
        upsert(db, "te_contacts", rows, ("contact_id",))
        upsert(
            db,
            "te_lookups",
            [{"email": email.lower(), "kind": "contact", "looked_up_at": now}],
            ("email", "kind"),
        )


def contact_lookups_since(db: Database, since: float) -> int:
    """How many addresses were looked up one by one since ``since``."""
    return db.execute(
        "select count(*) from te_lookups where kind = 'contact' and looked_up_at >= ?", [since]
    ).fetchone()[0]
