"""The state on PostgreSQL: its schema is SQLite's, column for column; migrating is numbered,
safe when workers start together, and refuses a newer database; writers are serialised by
the write lock, waiting no longer than the busy timeout."""

from __future__ import annotations

import threading

import psycopg
import pytest

from sync_worker.state import postgres_schema
from sync_worker.state.db import (
    StateBusyError,
    StateFileError,
    open_database,
    open_postgres,
    transaction,
)
from sync_worker.state.migrations import STATE_STEPS
from tests.at_once import at_once

pytestmark = pytest.mark.fast

# SQLite's declared types and the PostgreSQL types the schema uses for them.
TYPES = {"TEXT": "text", "INTEGER": "bigint", "REAL": "double precision"}


@pytest.fixture
def dsn(postgres_cluster):
    return postgres_cluster.new_database()


def sqlite_tables(tmp_path):
    db = open_database(tmp_path / "s.db")
    names = [row[0] for row in db.execute("select name from sqlite_master where type = 'table'")]
    return {
        name: {column.name: TYPES[column.type] for column in db[name].columns} for name in names
    }


def postgres_tables(db):
    found: dict[str, dict[str, str]] = {}
    for table, column, kind in db.execute(
        "select table_name, column_name, data_type from information_schema.columns "
        "where table_schema = 'public' and table_name != 'schema_version'"
    ):
        found.setdefault(table, {})[column] = kind
    return found


def test_the_schema_is_sqlites_column_for_column(tmp_path, dsn):
    assert postgres_tables(open_postgres(dsn)) == sqlite_tables(tmp_path)


def test_the_indexes_are_sqlites(tmp_path, dsn):
    sqlite = open_database(tmp_path / "s.db")
    expected = {
        row[0]
        for row in sqlite.execute("select name from sqlite_master where type = 'index'")
        if not row[0].startswith("sqlite_autoindex")
    }
    found = {
        row[0]
        for row in open_postgres(dsn).execute(
            "select indexname from pg_indexes where schemaname = 'public' "
            "and indexname not like '%_pkey'"
        )
    }
    assert found == expected


def test_a_new_database_is_at_the_latest_version(dsn):
    db = open_postgres(dsn)
    assert postgres_schema.version_of(db) == STATE_STEPS[-1].number
    assert postgres_schema.POSTGRES_STEPS[-1].number == STATE_STEPS[-1].number


def test_workers_that_start_together_migrate_once(postgres_cluster):
    dsn = postgres_cluster.new_database()
    assert at_once(lambda: open_postgres(dsn).close(), threads=6) == []
    assert postgres_schema.version_of(open_postgres(dsn)) == STATE_STEPS[-1].number


def test_a_database_of_a_newer_version_is_refused(dsn):
    open_postgres(dsn).execute("update schema_version set version = 999 where id = 1")
    with pytest.raises(StateFileError, match="schema version 999, newer"):
        open_postgres(dsn)


def test_the_message_names_the_database_not_the_password(postgres_cluster):
    dsn = postgres_cluster.new_database() + " password=hunter2"
    open_postgres(dsn).execute("update schema_version set version = 999 where id = 1")
    with pytest.raises(StateFileError) as raised:
        open_postgres(dsn)
    assert "test_" in str(raised.value) and "hunter2" not in str(raised.value)


def test_a_writer_waits_for_another_no_longer_than_the_busy_timeout(dsn):
    holder, waiter = open_postgres(dsn), open_postgres(dsn, busy_timeout=0.2)
    busy = pytest.raises(StateBusyError, match="locked by another worker")
    with transaction(holder), busy, transaction(waiter):
        pass
    with transaction(waiter):  # the connection is usable again once the lock is free
        waiter.execute("insert into totals (name, value) values ('x', 1)")
    assert waiter.execute("select value from totals").fetchone()[0] == 1


def test_a_read_then_write_block_sees_no_other_writer(dsn):
    """Two connections incrementing one row, each reading it then writing it back, lose
    no increment: every write transaction holds the write lock."""
    open_postgres(dsn).execute("insert into totals (name, value) values ('n', 0)")
    gate = threading.Barrier(4)

    def bump():
        db = open_postgres(dsn)
        gate.wait()
        for _ in range(25):
            with transaction(db):
                value = db.execute("select value from totals where name = 'n'").fetchone()[0]
                db.execute("update totals set value = ? where name = 'n'", [value + 1])
        db.close()

    assert at_once(bump, threads=4) == []
    assert open_postgres(dsn).execute("select value from totals").fetchone()[0] == 100


def test_a_failed_statement_rolls_the_block_back(dsn):
    db = open_postgres(dsn)
    with pytest.raises(psycopg.errors.UniqueViolation), transaction(db):
        db.execute("insert into totals (name, value) values ('x', 1)")
        db.execute("insert into totals (name, value) values ('x', 2)")
    assert db.execute("select count(*) from totals").fetchone()[0] == 0


def test_a_percent_sign_in_a_statement_is_literal(dsn):
    db = open_postgres(dsn)
    assert db.execute("select '5%' || ?", ["!"]).fetchone()[0] == "5%!"
