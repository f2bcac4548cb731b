"""Copying a state file into an empty state database on PostgreSQL (``migrate-state``).

An operator moving from one host to several keeps every checkpoint this way: the archives
stored, the insights sent, TE's budget and token, the state's identity (which the archive
store is claimed with) and the passes, ids and all. Nothing is downloaded or posted again.

The copy is all or nothing. The source file is migrated to this code's schema and read in
one snapshot, under every job lock of the file, so that no pass changes it meanwhile. The
target gets the schema, then every table of it (as its catalog lists them, so that none is
forgotten), in one PostgreSQL transaction: it is refused unless every table is empty, and
the row counts of both sides are compared before it commits. The file is left as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path

import sqlite_utils

from sync_worker.core.locks import LockHeld
from sync_worker.core.locks import job_locks as file_locks
from sync_worker.state.db import (
    BUSY_TIMEOUT_SECONDS,
    execute_many,
    open_existing,
    open_postgres,
    transaction,
)
from sync_worker.state.job_locks import job_locks as database_locks
from sync_worker.state.postgres import PostgresDatabase, describe

# Rows read from the file and written to the database at a time: memory stays bounded
# whatever the size of the ledger.
BATCH_ROWS = 1000
# The migrations' own table: made by the target's migration, never copied.
VERSION_TABLE = "schema_version"


class StateCopyError(Exception):
    """The state was not copied; the target database holds no state of it."""


class CopyRefused(StateCopyError):
    """The copy was not started: the file is in use, or the target holds a state already."""


class CountMismatch(StateCopyError):
    """A table's rows in the target are not as many as in the file: all was rolled back."""


@dataclass(frozen=True)
class CopyReport:
    """What was copied: the rows of each table, in the order copied, and where to."""

    target: str
    rows: dict[str, int]


def copy_state(
    source: Path,
    dsn: str,
    jobs: Iterable[str],
    busy_timeout: float = BUSY_TIMEOUT_SECONDS,
) -> CopyReport:
    """Copy the state file ``source`` into the empty state database of ``dsn``, holding
    the job locks of ``jobs`` on both sides. Raises StateFileError when ``source`` is no
    state file, CopyRefused when a pass holds a lock or the target holds a state, and
    CountMismatch when the copy is not whole (then nothing is committed)."""
    jobs = tuple(jobs)
    file = open_existing(source, busy_timeout)
    try:
        with _held(file_locks(source, jobs), f"the state file {source} is in use"):
            target = open_postgres(dsn, busy_timeout)
            try:
                where = describe(target)
                with _held(
                    database_locks(dsn, jobs, busy_timeout),
                    f"the state database {where} is in use",
                ):
                    return CopyReport(where, copy_into(file, target))
            finally:
                target.close()
    finally:
        file.close()


@contextmanager
def _held(locks: AbstractContextManager[None], what: str) -> Iterator[None]:
    """Hold ``locks`` (a state's job locks), or CopyRefused saying ``what`` is in use."""
    with ExitStack() as stack:
        try:
            stack.enter_context(locks)
        except LockHeld as exc:
            raise CopyRefused(
                f"{what}: {exc}; stop every worker's passes (daemon, timer, cron) and try again"
            ) from None
        yield


def copy_into(source: sqlite_utils.Database, target: PostgresDatabase) -> dict[str, int]:
    """Copy every table of the state from ``source`` into ``target`` (migrated, empty), in
    one transaction of ``target`` and one snapshot of ``source``; the rows of each table."""
    tables = state_tables(target)
    _require_same_tables(source, tables)
    with _snapshot(source), transaction(target):
        _require_empty(target, tables)
        rows = {
            table: copy_table(source, target, table, columns(target, table)) for table in tables
        }
        _compare_counts(source, target, rows)
        _move_identities(target)
    return rows


def state_tables(target: PostgresDatabase) -> list[str]:
    """The state's tables as the database's catalog lists them, each after the tables its
    foreign keys name (rows are inserted in this order)."""
    names = sorted(
        row[0]
        for row in target.execute(
            "select tablename from pg_tables where schemaname = current_schema() "
            "and tablename != ?",
            [VERSION_TABLE],
        )
    )
    graph: dict[str, set[str]] = {name: set() for name in names}
    for table, referenced in target.execute(
        "select c.relname, r.relname from pg_constraint k "
        "join pg_class c on c.oid = k.conrelid join pg_class r on r.oid = k.confrelid "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where k.contype = 'f' and n.nspname = current_schema()"
    ):
        if table in graph and referenced != table:
            graph[table].add(referenced)
    return list(TopologicalSorter(graph).static_order())


def columns(target: PostgresDatabase, table: str) -> list[str]:
    """The columns of ``table`` in the database, in their order."""
    return [
        row[0]
        for row in target.execute(
            "select column_name from information_schema.columns "
            "where table_schema = current_schema() and table_name = ? order by ordinal_position",
            [table],
        )
    ]


def copy_table(
    source: sqlite_utils.Database, target: PostgresDatabase, table: str, names: Sequence[str]
) -> int:
    """Copy the rows of ``table`` (its columns ``names``) in batches; how many."""
    listed = ", ".join(names)
    insert = f"insert into {table} ({listed}) values ({', '.join('?' for _ in names)})"
    cursor = source.execute(f"select {listed} from {table}")
    copied = 0
    while batch := cursor.fetchmany(BATCH_ROWS):
        execute_many(target, insert, batch)
        copied += len(batch)
    return copied


def count(db: sqlite_utils.Database | PostgresDatabase, table: str) -> int:
    """The rows of ``table`` (a name from the catalog, never input)."""
    row = db.execute(f"select count(*) from {table}").fetchone()
    return int(row[0]) if row else 0


@contextmanager
def _snapshot(source: sqlite_utils.Database) -> Iterator[None]:
    """Read ``source`` in one read transaction: every table as of the same moment."""
    source.execute("begin")
    try:
        yield
    finally:
        source.execute("rollback")  # read only: nothing to keep


def _require_same_tables(source: sqlite_utils.Database, tables: Sequence[str]) -> None:
    """Refuse a file with a table the database lacks: it would not be copied."""
    found = {
        row[0]
        for row in source.execute(
            "select name from sqlite_master where type = 'table' and name not like 'sqlite_%'"
        )
    }
    missing = sorted(found - set(tables))
    if missing:
        raise CopyRefused(
            f"the state file has tables the state database has not: {', '.join(missing)}"
        )


def _require_empty(target: PostgresDatabase, tables: Sequence[str]) -> None:
    """Refuse a database that holds a state already: two ledgers are never merged."""
    filled = [f"{table} ({rows} rows)" for table in tables if (rows := count(target, table))]
    if filled:
        raise CopyRefused(
            f"the state database {describe(target)} holds a state already "
            f"({', '.join(filled)}): migrate-state copies into an empty database only, "
            "never merging two ledgers"
        )


def _compare_counts(
    source: sqlite_utils.Database, target: PostgresDatabase, copied: dict[str, int]
) -> None:
    """CountMismatch unless each table holds as many rows on both sides as were copied."""
    wrong = []
    for table, rows in copied.items():
        expected, found = count(source, table), count(target, table)
        if not expected == found == rows:
            wrong.append(f"{table}: {expected} in the file, {rows} copied, {found} in the database")
    if wrong:
        raise CountMismatch(f"the copy is not whole ({'; '.join(wrong)}): nothing was committed")


def _move_identities(target: PostgresDatabase) -> None:
    """Move the sequence of each identity column (``passes.id``) past the highest id
    copied, so that the next row gets the next id. Not undone by a rollback: done last."""
    for table, column in target.execute(
        "select table_name, column_name from information_schema.columns "
        "where table_schema = current_schema() and is_identity = 'YES'"
    ).fetchall():
        target.execute(
            f"select setval(pg_get_serial_sequence(?, ?), coalesce(max({column}), 0) + 1, false) "
            f"from {table}",
            [table, column],
        )
