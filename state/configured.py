"""The state a config names: its SQLite file, or its PostgreSQL database (``[state]``).

Each command opens the state the way it needs, on either engine: a pass makes and migrates
it (:func:`open_state`); ``status``, ``export`` and ``retry`` need one a pass has made
(:func:`open_existing_state`); ``check``, the metrics and the webhook receiver only read
(:func:`open_state_read_only`), change nothing and make nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager

from sync_worker.config import StateConfig
from sync_worker.core.locks import job_locks as file_locks
from sync_worker.state import postgres_schema
from sync_worker.state.db import (
    Database,
    NoState,
    StateFileError,
    closed_on_failure,
    execute_many,
    memory_copy,
    migrated,
    open_database,
    open_existing,
    open_existing_read_only,
    open_memory_database,
    open_postgres,
)
from sync_worker.state.job_locks import job_locks as database_locks
from sync_worker.state.postgres import PostgresDatabase, connect, describe


def open_state(config: StateConfig) -> Database:
    """The state for a pass: made if there is none yet, migrated to this code's schema."""
    if config.shared:
        return open_postgres(config.dsn, config.busy_timeout_seconds)
    return open_database(config.database, config.busy_timeout_seconds)


def open_existing_state(config: StateConfig) -> Database:
    """The state a pass has made, for a command that reads it or changes a few rows;
    StateFileError when there is none."""
    if not config.shared:
        return open_existing(config.database, config.busy_timeout_seconds)
    db = connect(config.dsn, config.busy_timeout_seconds)
    with closed_on_failure(db):
        _require_state(db)
    return migrated(db)


def open_state_read_only(config: StateConfig) -> Database:
    """The state a pass has made, for reading only: no schema change, nothing made;
    StateFileError when there is none, or it is of another version than this code's."""
    if not config.shared:
        return open_existing_read_only(config.database, config.busy_timeout_seconds)
    db = connect(config.dsn, config.busy_timeout_seconds)
    with closed_on_failure(db):
        _require_state(db)
        if postgres_schema.pending(db, describe(db)):
            raise StateFileError(
                f"the state database {describe(db)} has an older schema: the next pass migrates it"
            )
        db.execute("set default_transaction_read_only = on")
    return db


# What check reads of the state beside the token it may request: TE's budgets, the cached
# token and its lease, and what passes have learnt.
ACCESS_TABLES = ("tokens", "token_leases", "rate_events", "rate_counts", "capabilities")


def private_copy(config: StateConfig) -> Database:
    """A copy in memory of the state's budgets, token and capabilities, to use without
    writing anything to the state (check): of the SQLite file whole, or of those tables
    of the database."""
    if not config.shared:
        return memory_copy(config.database, config.busy_timeout_seconds)
    source = open_state_read_only(config)
    copy = open_memory_database()
    try:
        for table in ACCESS_TABLES:
            rows = source.execute(f"select * from {table}")
            names = [column.name for column in rows.description or ()]
            execute_many(
                copy,
                f"insert into {table} ({', '.join(names)}) values "
                f"({', '.join('?' for _ in names)})",
                rows.fetchall(),
            )
    except BaseException:
        copy.close()
        raise
    finally:
        source.close()
    return copy


def state_exists(config: StateConfig) -> bool:
    """Whether a pass may have made the state: its file is there (a database is assumed
    there; opening it tells)."""
    return config.shared or config.database.exists()


def state_place(config: StateConfig, db: Database) -> str:
    """Where the open state ``db`` is: its file's absolute path, or its database's name and
    server (no password)."""
    if isinstance(db, PostgresDatabase):
        return f"postgresql: {describe(db)}"
    return str(config.database.resolve())


def job_locks(config: StateConfig, jobs: Iterable[str]) -> AbstractContextManager[None]:
    """Every job's lock of this state for the pass, or LockHeld naming the first taken:
    files beside the SQLite file, or the database's advisory locks (state.job_locks)."""
    if config.shared:
        return database_locks(config.dsn, jobs, config.busy_timeout_seconds)
    return file_locks(config.database, jobs)


def _require_state(db: PostgresDatabase) -> None:
    if postgres_schema.version_of(db) == 0:
        raise NoState(
            f"the database {describe(db)} holds no sync-worker state: no pass has run with "
            "this config, or state.dsn names another database"
        )
