"""Job locks kept by PostgreSQL: one holder per job and state database, across hosts.

The SQLite state's job locks are files beside it (core.locks); a state in PostgreSQL is
shared by workers on several hosts, so its locks are the database's: a session-level
advisory lock per job, taken without waiting on a connection of its own and held for the
pass. PostgreSQL releases it when that connection ends, however the holder ends: killed, or
its host gone (noticed through TCP keepalives, state.postgres.KEEPALIVES). Advisory locks
belong to one database, so two states on one server do not exclude each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

from sync_worker.core.locks import LockHeld
from sync_worker.state.postgres import PostgresDatabase, connect, driver_errors


def lock_key(job: str) -> int:
    """The advisory lock's key for ``job``: a signed 64-bit number of the job's name."""
    digest = hashlib.sha256(f"sync-worker job {job}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def job_locks(dsn: str, jobs: Iterable[str], busy_timeout: float) -> Iterator[None]:
    """All the jobs' locks, or LockHeld naming the first that another worker holds."""
    db = connect(dsn, busy_timeout)
    try:
        for job in jobs:
            _take(db, job)
        yield
    finally:
        # Released before this returns: closing alone frees them only once the server's
        # process for the session has ended, a moment later.
        with suppress(*driver_errors()):
            db.execute("select pg_advisory_unlock_all()")
        db.close()


def _take(db: PostgresDatabase, job: str) -> None:
    row = db.execute("select pg_try_advisory_lock(?)", [lock_key(job)]).fetchone()
    if not (row and row[0]):
        holder = _holder(db, job)
        raise LockHeld(f"another worker holds the {job} job's lock of the state database{holder}")


def _holder(db: PostgresDatabase, job: str) -> str:
    """Who holds the lock, as far as PostgreSQL says: the holder's client address. A key of
    a bigint lock is split into classid (its high half) and objid (its low half)."""
    row = db.execute(
        "select a.client_addr from pg_locks l join pg_stat_activity a using (pid) "
        "where l.locktype = 'advisory' and l.granted and l.objsubid = 1 "
        "and l.database = (select oid from pg_database where datname = current_database()) "
        "and ((l.classid::bigint << 32) | l.objid::bigint) = ?",
        [lock_key(job)],
    ).fetchone()
    if row is None:
        return ""
    return f" (a session from {row[0] or 'a local socket'})"
