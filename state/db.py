"""Opening the state database: schema, durability settings, file permissions, transactions.

The state is a SQLite file by default, or a PostgreSQL database (state.postgres): the state
modules take either as a :data:`Database` and write SQL both engines run; the few verbs
that differ (:func:`execute_many`, :func:`has_table`, :func:`upsert`) are here.

The state file is shared by every process that runs against the same configuration (the
daemon, a cron run, ``status``), so writes go through :func:`transaction`, which takes
SQLite's write lock up front (``BEGIN IMMEDIATE``) and waits up to ``busy_timeout`` for it.

sqlite-utils (4.x) does the schema, reads and writes; its write helpers nest inside an open
transaction as savepoints, so a block under :func:`transaction` commits whole or not at all.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import sqlite_utils

from sync_worker.core.errors import JobStop
from sync_worker.core.private_files import make_private_dirs
from sync_worker.state import postgres_schema
from sync_worker.state.migrations import (
    BUDGET_STEPS,
    STATE_STEPS,
    NewerSchemaError,
    Step,
    apply_all,
    migrate,
    pending,
)
from sync_worker.state.postgres import (
    PostgresDatabase,
    WriteLockTimeout,
    connect,
    describe,
    driver_errors,
)

# A state database on either engine.
Database = sqlite_utils.Database | PostgresDatabase

BUSY_TIMEOUT_SECONDS = 30.0


class StateBusyError(JobStop):
    """Another process held the state database locked for longer than the busy timeout."""


class StateFileError(Exception):
    """The state file a command needs is missing, unreadable or not a state file at all."""


class NoState(StateFileError):
    """The state database is there but empty: no pass has made the state yet."""


def database_errors() -> tuple[type[Exception], ...]:
    """What a broken, locked or unreachable state raises, on either engine (psycopg's only
    once it is loaded: state.postgres)."""
    return (sqlite3.Error, *driver_errors())


def open_database(path: Path, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> sqlite_utils.Database:
    """Open (creating if needed) the state database, private to the current user, migrated
    to the schema this code knows (state.migrations); StateFileError for a newer one."""
    return _open(path, busy_timeout, STATE_STEPS)


def open_postgres(dsn: str, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> PostgresDatabase:
    """Connect to a state database on PostgreSQL, migrated to the schema this code knows
    (made if empty); StateFileError for a newer one, StateBusyError when another worker
    holds the write lock too long."""
    return migrated(connect(dsn, busy_timeout))


def migrated(db: PostgresDatabase) -> PostgresDatabase:
    """``db`` migrated to the schema this code knows (closed if it cannot be)."""
    where = describe(db)
    with closed_on_failure(db):
        if postgres_schema.pending(db, where):
            with transaction(db):
                postgres_schema.migrate(db, where)
    return db


@contextmanager
def closed_on_failure(db: Database) -> Iterator[None]:
    """Close ``db`` if the block fails; a schema newer than this code knows fails as
    StateFileError."""
    try:
        yield
    except NewerSchemaError as exc:
        db.close()
        raise StateFileError(str(exc)) from None
    except BaseException:
        db.close()
        raise


def open_budget_database(
    path: Path, busy_timeout: float = BUSY_TIMEOUT_SECONDS
) -> sqlite_utils.Database:
    """Open (creating if needed) a budget file: only Total Expert's buckets and tokens, for
    every worker of the host to share whatever its state file."""
    return _open(path, busy_timeout, BUDGET_STEPS)


def _open(path: Path, busy_timeout: float, steps: tuple[Step, ...]) -> sqlite_utils.Database:
    with _CREATING:
        _create_private(path)
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    _use_wal(conn, busy_timeout)
    # NORMAL: every commit survives a crash of the process; those made with
    # transaction(durable=True) also survive a power cut. See transaction().
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    db = sqlite_utils.Database(conn)
    with closed_on_failure(db):
        if pending(db, steps, path):  # a read: a file already migrated takes no write lock
            with transaction(db):
                migrate(db, steps, path)
    return db


def _use_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch to write-ahead logging. On a new file, two connections opening it at once
    can find it locked without SQLite waiting (the daemon's jobs start together): wait
    here, as long as any other write would."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise StateBusyError(f"state database is locked by another process: {exc}") from exc
            time.sleep(0.05)


def open_read_only(path: Path, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> sqlite_utils.Database:
    """Open an existing state or budget file for reading only: no schema change, no write
    lock, whatever the writers are doing (for the metrics)."""
    with _CREATING:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=busy_timeout,
            isolation_level=None,
        )
    return sqlite_utils.Database(conn)


def open_untouched(path: Path, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> sqlite_utils.Database:
    """Open an existing state or budget file for reading only, making no file beside it.

    A read-only connection to a WAL database makes its ``-wal`` and ``-shm`` when they are
    not there, and leaves them. When they are not there no process has the file open (the
    last to close removes them), so it is read as immutable: without SQLite's shared memory.
    A pass that starts meanwhile writes to its own WAL, not to the file, until a checkpoint.
    """
    if Path(f"{path}-wal").exists():
        return open_read_only(path, busy_timeout)
    with _CREATING:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro&immutable=1",
            uri=True,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
    return sqlite_utils.Database(conn)


def open_existing(path: Path, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> sqlite_utils.Database:
    """Open a state file that a pass has made, for a command that reads it or changes a few
    rows (status, export, retry): never one made here. Raises StateFileError if there
    is none at ``path``, or what is there cannot be read or is not a state file."""
    _require_state_file(path, busy_timeout)
    return open_database(path, busy_timeout)


def open_existing_read_only(
    path: Path, busy_timeout: float = BUSY_TIMEOUT_SECONDS
) -> sqlite_utils.Database:
    """Open a state file that a pass has made for reading only (check): no schema change,
    no permission change, nothing made. Raises StateFileError as :func:`open_existing`."""
    _require_state_file(path, busy_timeout)
    return open_untouched(path, busy_timeout)


def memory_copy(path: Path, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> sqlite_utils.Database:
    """A private copy in memory of an existing state or budget file, with the whole schema:
    to use its budgets and token as they are without writing anything to the file."""
    source = open_untouched(path, busy_timeout)
    copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        source.conn.backup(copy)
    finally:
        source.close()
    db = sqlite_utils.Database(copy)
    with transaction(db):
        apply_all(db, STATE_STEPS)
    return db


def _require_state_file(path: Path, busy_timeout: float) -> None:
    """Raise StateFileError unless ``path`` is a readable state file of this worker."""
    if not path.exists():
        raise StateFileError(
            f"no state file at {path}: no pass has run with this config, or state.database "
            "is mistyped"
        )
    if not path.is_file():
        raise StateFileError(f"the state file {path} is not a file")
    try:
        probe = open_untouched(path, busy_timeout)
        try:
            ours = probe["archives"].exists()
            pending(probe, STATE_STEPS, path)  # refuses a file of a newer schema
        finally:
            probe.close()
    except sqlite3.Error as exc:
        raise StateFileError(f"cannot read the state file {path}: {exc}") from None
    except NewerSchemaError as exc:
        raise StateFileError(str(exc)) from None
    if not ours:
        raise StateFileError(f"{path} is not a state file of sync-worker (no archives table)")


def open_memory_database() -> sqlite_utils.Database:
    """A private database with the same schema that lives only as long as this process:
    for a command that must work even when the state file cannot be opened."""
    db = sqlite_utils.Database(sqlite3.connect(":memory:", isolation_level=None))
    with transaction(db):
        migrate(db, STATE_STEPS, ":memory:")
    return db


# Held while a state or budget file is created and while connections to one are opened, so
# that no thread of this process holds SQLite's locks on a file that _create_private has
# open (see there).
_CREATING = threading.Lock()
# The files SQLite keeps beside a database in WAL mode; it gives them the database's mode.
COMPANION_SUFFIXES = ("-wal", "-shm")


def _create_private(path: Path) -> None:
    """Create the database file 0600 if it does not exist, and take group and other access
    away from an existing one and its companions.

    An existing file is never opened here. Closing any descriptor of a file drops every POSIX
    lock this process holds on it, SQLite's included (SQLite's "How To Corrupt An SQLite
    Database File", 2.2): another process then thinks it is the last user, checkpoints and
    deletes the WAL, and commits made afterwards through this process's connections are
    lost. A new file is safe to open and close: no connection can be on it yet, since every
    connection of this process is opened under _CREATING.
    """
    make_private_dirs(path.parent)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        for name in (path, *(Path(f"{path}{suffix}") for suffix in COMPANION_SUFFIXES)):
            with suppress(FileNotFoundError):
                if name.stat().st_mode & 0o077:
                    name.chmod(0o600)  # by path: no descriptor, no lock dropped
        return
    os.close(fd)


@contextmanager
def transaction(db: Database, durable: bool = False) -> Iterator[Database]:
    """Run a block as one write transaction: all of it is committed, or none.

    Every commit survives the process being killed. A ``durable`` one is also fsynced
    before this returns, and with it every commit before it: use it for a checkpoint that an
    irreversible remote action (abandon, an insight POST) is about to rely on. The others
    may be lost to a power cut, which only makes a later pass redo an idempotent step.
    """
    durable = durable and isinstance(db, sqlite_utils.Database)  # PostgreSQL: see there
    if durable:
        db.execute("PRAGMA synchronous=FULL")
    try:
        _begin(db)
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        if durable:
            db.execute("PRAGMA synchronous=NORMAL")


def make_durable(db: Database) -> None:
    """Fsync every commit made so far (a durable commit syncs all that precede it). On
    PostgreSQL each commit is flushed already (state.postgres)."""
    if isinstance(db, PostgresDatabase):
        return
    with transaction(db, durable=True):
        db.execute("insert or replace into durable_marks (id, at) values (1, julianday('now'))")


def _begin(db: Database) -> None:
    try:
        if isinstance(db, PostgresDatabase):
            db.begin()
        else:
            db.execute("BEGIN IMMEDIATE")
    except WriteLockTimeout as exc:
        raise StateBusyError(f"state database is locked by another worker: {exc}") from exc
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StateBusyError(f"state database is locked by another process: {exc}") from exc
        raise


def limit_clause(limit: int | None) -> str:
    """`` limit N``, or nothing for no limit (SQLite's -1 is an error on PostgreSQL)."""
    return "" if limit is None else f" limit {int(limit)}"


def differ(left: str, right: str) -> str:
    """SQL for "the two expressions differ", a null differing from a value and not from
    another null (SQLite's ``is not``; ``is distinct from`` needs SQLite 3.39)."""
    return f"not (coalesce({left} = {right}, false) or ({left} is null and {right} is null))"


def execute_many(db: Database, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    """Run one statement for each row of parameters (on the hot path: sqlite-utils' table
    helpers inspect the table on each call)."""
    if isinstance(db, PostgresDatabase):
        db.executemany(sql, rows)
    else:
        db.conn.executemany(sql, rows)


def has_table(db: Database, name: str) -> bool:
    return db.has_table(name) if isinstance(db, PostgresDatabase) else db[name].exists()


def upsert(
    db: Database, table: str, rows: Iterable[Mapping[str, Any]], pk: tuple[str, ...]
) -> None:
    """Insert rows, or update the columns they name where one with the same ``pk`` exists
    (every row names the same columns). ``table`` and the column names are the caller's
    constants, never input."""
    rows = list(rows)
    if not rows:
        return
    columns = list(rows[0])
    updates = ", ".join(f"{name} = excluded.{name}" for name in columns if name not in pk)
    execute_many(
        db,
        f"insert into {table} ({', '.join(columns)}) values ({', '.join('?' for _ in columns)}) "
        f"on conflict ({', '.join(pk)}) "
        + (f"do update set {updates}" if updates else "do nothing"),
        [[row[name] for name in columns] for row in rows],
    )


class ThreadConnections:
    """One connection per thread to the same state, for work spread over threads: a
    connection runs one transaction at a time. ``opener`` opens one (state.configured)."""

    def __init__(self, opener: Callable[[], Database]) -> None:
        self._opener = opener
        self._local = threading.local()
        self._opened: list[Database] = []
        self._lock = threading.Lock()

    def get(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._opener()
            self._local.db = db
            with self._lock:
                self._opened.append(db)
        return db

    def close(self) -> None:
        with self._lock:
            for db in self._opened:
                db.close()
            self._opened.clear()
