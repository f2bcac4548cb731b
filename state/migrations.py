"""The schema of the state file and of the budget file, as numbered forward migrations.

A file's schema version is SQLite's ``user_version``: 0 for a file made before versions were
kept (release 0.1.0 and the changes after it, up to this module), else the number of the last
step it has been through. Opening a file runs the steps above its version and records the
last, all in one write transaction (a kill at any instant leaves the file as it was or
migrated whole); a file of a version newer than this code knows is refused with
StateFileError, never read or written by code that does not know its tables.

Steps are history: they name their states as literals (what the code of their time wrote),
not through state.lifecycles, so that a later change of a lifecycle cannot change them. A step
is written to be idempotent (tables and indexes created if missing, columns added if
missing), because a version-0 file may stand anywhere in the history before versions: each
such file goes through every step. ``tests/state/schemas/`` keeps the tables of files made at
points of that history; the tests migrate each and compare it with a new file. A new step
is appended, never an old one changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

# Columns shared by every work item that can fail and be retried.
RETRY_COLUMNS = {"attempts": int, "last_error": str, "next_attempt_at": float}


class NewerSchemaError(Exception):
    """The file has a schema version this code does not know (a newer release made it)."""


@dataclass(frozen=True)
class Step:
    number: int
    what: str
    apply: Callable[[sqlite_utils.Database], None]


def version_of(db: sqlite_utils.Database) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def pending(db: sqlite_utils.Database, steps: tuple[Step, ...], path: Path | str) -> bool:
    """Whether the file needs ``steps`` it has not been through; NewerSchemaError if it is
    newer than they go."""
    version, latest = version_of(db), steps[-1].number
    if version > latest:
        raise NewerSchemaError(
            f"{path} has schema version {version}, newer than this sync-worker knows "
            f"({latest}): a newer release made or migrated it; run that release (a file is "
            "never migrated back)"
        )
    return version < latest


def migrate(db: sqlite_utils.Database, steps: tuple[Step, ...], path: Path | str) -> None:
    """Run the steps above the file's version and record the last, inside the caller's
    write transaction (which makes a second process wait, then find nothing to do)."""
    if not pending(db, steps, path):
        return
    for step in steps[version_of(db) :]:
        step.apply(db)
    db.execute(f"PRAGMA user_version = {steps[-1].number}")


def apply_all(db: sqlite_utils.Database, steps: tuple[Step, ...]) -> None:
    """Every step, whatever the file's version (they are idempotent): for a private copy
    in memory of a state or a budget file, which is never written back."""
    for step in steps:
        step.apply(db)


# --- the state file -------------------------------------------------------------------------


def _ledger(db: sqlite_utils.Database) -> None:
    """1: archives, participants and insights; TE's copy, cached look-ups, tokens and
    budgets; capabilities, job runs and totals."""
    archive_columns = {
        "archive_id": str,
        "conference_id": str,
        "state": str,
        "remote_status": str,
        "sha256": str,
        "record": str,
        "path": str,
        "size": int,
        "first_seen_at": float,
        "stored_at": float,
        "claimed_at": float,
        **RETRY_COLUMNS,
    }
    db["archives"].create(
        archive_columns,
        pk="archive_id",
        not_null={"conference_id", "state", "attempts"},
        defaults={"attempts": 0},
        if_not_exists=True,
    )
    _add_missing_columns(db, "archives", archive_columns)
    db["archives"].create_index(["state", "next_attempt_at"], if_not_exists=True)
    db["archives"].create_index(["conference_id"], if_not_exists=True)
    # status and export page through archives by age without reading the history to sort it
    db["archives"].create_index(["first_seen_at", "archive_id"], if_not_exists=True)
    db["participants"].create(
        {
            "archive_id": str,
            "email": str,
            "name": str,
            "moderator_email": str,
            "state": str,
            **RETRY_COLUMNS,
        },
        pk=("archive_id", "email"),
        not_null={"state", "attempts"},
        defaults={"attempts": 0},
        foreign_keys=[("archive_id", "archives", "archive_id")],
        if_not_exists=True,
    )
    db["participants"].create_index(["state", "next_attempt_at"], if_not_exists=True)
    db["insights"].create(
        {
            "archive_id": str,
            "contact_id": int,
            "owner_id": int,
            "email": str,
            "state": str,
            "te_insight_id": int,
            "sent_at": float,
            **RETRY_COLUMNS,
        },
        pk=("archive_id", "contact_id"),
        not_null={"state", "attempts"},
        defaults={"attempts": 0},
        foreign_keys=[("archive_id", "archives", "archive_id")],
        if_not_exists=True,
    )
    db["insights"].create_index(["state", "next_attempt_at"], if_not_exists=True)
    _access_tables(db)
    db["durable_marks"].create({"id": int, "at": float}, pk="id", if_not_exists=True)
    db["te_meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    # seen_at: when TE last showed the row; a complete re-read drops the rows it did not show.
    _create_or_extend(
        db,
        "te_contacts",
        {"contact_id": int, "email": str, "owner_id": int, "seen_at": float},
        pk="contact_id",
    )
    db["te_contacts"].create_index(["email"], if_not_exists=True)
    _create_or_extend(
        db, "te_users", {"user_id": int, "email": str, "seen_at": float}, pk="user_id"
    )
    db["te_users"].create_index(["email"], if_not_exists=True)
    db["te_lookups"].create(
        {"email": str, "kind": str, "looked_up_at": float},
        pk=("email", "kind"),
        if_not_exists=True,
    )
    db["te_lookups"].create_index(["kind", "looked_up_at"], if_not_exists=True)
    db["capabilities"].create(
        {"name": str, "value": str, "decided_at": float}, pk="name", if_not_exists=True
    )
    db["job_runs"].create(
        {
            "job": str,
            "last_finished_at": float,
            "last_duration": float,
            "last_ok_at": float,
            "runs": int,
            "failed_runs": int,
        },
        pk="job",
        if_not_exists=True,
    )
    db["totals"].create({"name": str, "value": int}, pk="name", if_not_exists=True)


def _holds_and_owners(db: sqlite_utils.Database) -> None:
    """2: the status an archive was first listed with (null: listed before this step),
    records held back from abandon, webhook secrets, what keeps insights from TE, and the
    file's identity for the archive store to name its owner."""
    _add_missing_columns(db, "archives", {"first_seen_status": str})
    db["held_records"].create(  # state.held_records
        {
            "key": str,
            "conference_id": str,
            "kind": str,
            "reason": str,
            "listing": str,
            "first_seen_at": float,
            "last_seen_at": float,
        },
        pk="key",
        not_null={"kind", "reason", "listing"},
        if_not_exists=True,
    )
    db["held_records"].create_index(["conference_id"], if_not_exists=True)
    db["webhook_secrets"].create(
        {
            "secret": str,
            "subscription_id": str,
            "registered_at": float,
            "pending": int,
            "retired_at": float,
        },
        pk="secret",
        not_null={"registered_at", "pending"},
        if_not_exists=True,
    )
    db["insight_blocks"].create(  # state.insight_blocks
        {"id": int, "kind": str, "reason": str, "since": float, "retry_at": float, "client": str},
        pk="id",
        not_null={"kind", "reason", "since"},
        if_not_exists=True,
    )
    db["state_identity"].create(  # state.store_owner
        {"id": int, "state_id": str}, pk="id", not_null={"state_id"}, if_not_exists=True
    )


def _audits(db: sqlite_utils.Database) -> None:
    """3: the last audit of each stored archive (audited_at 0: never), one row per archive
    from the moment it is stored; filled from the ledger for the archives stored before."""
    if db["audits"].exists():
        return
    db["audits"].create(
        {"archive_id": str, "audited_at": float, "result": str, "detail": str},
        pk="archive_id",
        not_null={"audited_at"},
        foreign_keys=[("archive_id", "archives", "archive_id")],
    )
    db["audits"].create_index(["audited_at"])
    db.execute(
        "insert into audits (archive_id, audited_at) select archive_id, 0 from archives "
        "where state in ('stored', 'claimed')"
    )


def _passes(db: sqlite_utils.Database) -> None:
    """4: every pass (state.pass_history), found by its start time (--since, the newest
    first, pruning)."""
    db["passes"].create(
        {
            "id": int,
            "started_at": float,
            "finished_at": float,
            "outcome": str,
            "tenant": str,
            "jobs": str,
            "counts": str,
            "errors": str,
            "bytes_stored": int,
            "te_requests": int,
            "te_tokens_requested": int,
        },
        pk="id",
        not_null={"started_at", "jobs"},
        if_not_exists=True,
    )
    db["passes"].create_index(["started_at"], if_not_exists=True)


def _no_failed_insights(db: sqlite_utils.Database) -> None:
    """5: an insight left ``failed`` by the first commits of 0.1.0 (a state insights have not
    had since, which nothing would have picked up again) goes to ``sending``: its POST may
    have been processed, so it is looked for in TE before any new one."""
    db.execute("update insights set state = 'sending' where state = 'failed'")


STATE_STEPS = (
    Step(1, "the ledger, TE's copy and budgets", _ledger),
    Step(2, "held records, webhook secrets, insight blocks, the store's owner", _holds_and_owners),
    Step(3, "the audits of stored archives", _audits),
    Step(4, "the history of passes", _passes),
    Step(5, "no insight left failed", _no_failed_insights),
)


# --- the budget file ------------------------------------------------------------------------


def _access_tables(db: sqlite_utils.Database) -> None:
    """Total Expert's cached tokens, who is requesting one, and the rate-limit buckets
    (state.te_access): in the state file, and all a budget file holds."""
    db["tokens"].create(
        {"key": str, "access_token": str, "expires_at": float, "obtained_at": float},
        pk="key",
        if_not_exists=True,
    )
    db["token_leases"].create(
        {"key": str, "holder": str, "until": float}, pk="key", if_not_exists=True
    )
    db["rate_events"].create(
        {"bucket": str, "at": float}, not_null={"bucket", "at"}, if_not_exists=True
    )
    db["rate_events"].create_index(["bucket", "at"], if_not_exists=True)
    db["rate_counts"].create({"bucket": str, "used": int}, pk="bucket", if_not_exists=True)


BUDGET_STEPS = (Step(1, "TE's tokens, token leases and rate buckets", _access_tables),)


# --- helpers --------------------------------------------------------------------------------


def _create_or_extend(
    db: sqlite_utils.Database, name: str, columns: dict[str, type], pk: str
) -> None:
    """Create a table, or add the columns a file of an older version lacks."""
    if not db[name].exists():
        db[name].create(columns, pk=pk)
        return
    _add_missing_columns(db, name, columns)


def _add_missing_columns(db: sqlite_utils.Database, name: str, columns: dict[str, type]) -> None:
    """Add the columns the table lacks (nullable, so that old rows stay valid)."""
    existing = db[name].columns_dict
    for column, kind in columns.items():
        if column not in existing:
            db[name].add_column(column, kind)
