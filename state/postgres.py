"""The state on PostgreSQL: a connection with the few verbs the state layer uses on SQLite.

The state modules write their SQL once, in the dialect both engines share (``?``
placeholders, ``insert ... on conflict``, ``case``), and run it through ``execute`` and
``query`` on either engine; this class turns the placeholders into psycopg's. The connection
is in autocommit: a block under state.db.transaction is one ``BEGIN ... COMMIT``.

Writers are serialised as on SQLite: every write transaction first takes one advisory lock
of the database (:data:`WRITE_LOCK`), held until it ends, so a read-then-write block sees
what it read until it commits, whichever host runs it. Waiting for that lock is bounded by
``lock_timeout`` (the state's busy timeout). Every commit is flushed to PostgreSQL's WAL
before it returns (``synchronous_commit = on`` for the session, whatever the server's
default), so a durable transaction needs nothing more.

psycopg is imported when a connection is made, not with this module: a worker whose state
is a SQLite file never loads it (nor libpq), as one without S3 never loads boto3.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

# pg_advisory_xact_lock's key for "a write transaction of the state": any fixed bigint.
WRITE_LOCK = 0x5_7A7E
CONNECT_TIMEOUT_SECONDS = 10
# TCP keepalives both ways, so that a host gone without a word (power, network) is noticed
# in about 25 s: by the server, which then ends its session and frees its locks (job locks
# among them: state.job_locks); and by this worker, whose statement then fails instead of
# waiting for a server that is gone.
KEEPALIVES = {"idle": 10, "interval": 5, "count": 3}


class WriteLockTimeout(Exception):
    """Another worker held the state's write lock for longer than ``lock_timeout``."""


class PostgresDatabase:
    """One connection to a state database on PostgreSQL (one thread at a time)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(_placeholders(sql), params, prepare=False)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(_placeholders(sql), rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        from psycopg.rows import dict_row

        with self.conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(_placeholders(sql), params)
            yield from cursor

    def begin(self) -> None:
        """Start a write transaction, holding the state's write lock until it ends; none is
        left open when the lock is not had (``lock_timeout``, a lost connection): then
        WriteLockTimeout, or what psycopg raised."""
        import psycopg

        self.conn.execute("begin")
        try:
            self.conn.execute("select pg_advisory_xact_lock(%s)", [WRITE_LOCK])
        except BaseException as exc:
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("rollback")
            if isinstance(exc, psycopg.errors.LockNotAvailable):
                raise WriteLockTimeout(str(exc)) from exc
            raise

    def has_table(self, name: str) -> bool:
        """Whether the table exists, as the statement's snapshot sees the catalog (not the
        session's cache, which a transaction that waited for the write lock may have kept
        from before another worker's migration committed)."""
        row = self.conn.execute(
            "select exists (select from pg_tables where schemaname = current_schema() "
            "and tablename = %s)",
            [name],
        ).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        self.conn.close()


def connect(dsn: str, busy_timeout: float) -> PostgresDatabase:
    """Connect to the database of ``dsn``, waiting at most ``busy_timeout`` for a lock."""
    import psycopg

    conn = psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        application_name="sync-worker",
        keepalives=1,
        **{f"keepalives_{name}": seconds for name, seconds in KEEPALIVES.items()},
    )
    conn.execute(f"set lock_timeout = {int(busy_timeout * 1000)}")
    conn.execute("set synchronous_commit = on")
    for name, seconds in KEEPALIVES.items():
        conn.execute(f"set tcp_keepalives_{name} = {seconds}")
    return PostgresDatabase(conn)


def describe(db: PostgresDatabase) -> str:
    """The database, for a message: its name and host (never the password)."""
    info = db.conn.info
    return f"{info.dbname} on {info.host}"


def driver_errors() -> tuple[type[Exception], ...]:
    """psycopg's base error, once psycopg is loaded; none before (nothing can raise one)."""
    psycopg = sys.modules.get("psycopg")
    return () if psycopg is None else (psycopg.Error,)


@functools.lru_cache(maxsize=1024)
def _placeholders(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (and a literal ``%`` doubled). The
    state layer's statements put no ``?`` nor ``%`` inside a quoted literal."""
    return sql.replace("%", "%%").replace("?", "%s")
