"""The state a config names, on either engine: made only by a pass, read without a write by
the commands that only read, copied for check without its archives, and locked per job."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from sync_worker.config import StateConfig
from sync_worker.core.locks import LockHeld
from sync_worker.state import archives, capabilities
from sync_worker.state.configured import (
    job_locks,
    open_existing_state,
    open_state,
    open_state_read_only,
    private_copy,
    state_exists,
    state_place,
)
from sync_worker.state.db import NoState, StateFileError, open_postgres
from sync_worker.state.te_access import SharedAccess
from tests.records import archive_record
from tests.state_rows import count_of, rows_of

pytestmark = pytest.mark.fast


@pytest.fixture
def dsn(postgres_cluster):
    return postgres_cluster.new_database()


@pytest.fixture
def shared(dsn):
    return StateConfig(backend="postgresql", dsn=dsn, busy_timeout_seconds=5.0)


@pytest.fixture
def state_config(request, state_engine, tmp_path):
    """A config of the test's state on the engine of ``state_engine``."""
    if state_engine == "sqlite":
        return StateConfig(database=tmp_path / "s.db", busy_timeout_seconds=5.0)
    dsn = request.getfixturevalue("postgres_cluster").new_database()
    return StateConfig(backend="postgresql", dsn=dsn, busy_timeout_seconds=5.0)


@pytest.fixture
def opened():
    """``opened(db)`` closes ``db`` after the test."""
    databases = []

    def keep(db):
        databases.append(db)
        return db

    yield keep
    for db in databases:
        db.close()


def tables_of(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select tablename from pg_tables where schemaname = 'public'"
        ).fetchall()


def access(db):
    return SharedAccess(db, "https://te.example/v1", "client", 5, 2)


def test_an_empty_database_holds_no_state_for_a_command_that_needs_one(shared, dsn):
    with pytest.raises(NoState, match="holds no sync-worker state"):
        open_existing_state(shared)
    assert tables_of(dsn) == []


def test_once_a_pass_made_the_state_a_command_opens_it(shared, opened):
    access(opened(open_state(shared))).keep_token("tok-made", 4000.0, 0.0)
    db = opened(open_existing_state(shared))
    assert access(db).cached_token(1.0)[0] == "tok-made"


def test_the_read_only_state_refuses_a_write(shared, opened):
    opened(open_state(shared))
    db = opened(open_state_read_only(shared))
    assert count_of(db, "archives") == 0
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        db.execute("insert into totals (name, value) values ('x', 1)")


def test_opening_an_empty_database_read_only_makes_nothing(shared, dsn):
    with pytest.raises(NoState, match="holds no sync-worker state"):
        open_state_read_only(shared)
    assert tables_of(dsn) == []


def test_opening_an_older_state_read_only_is_refused_and_leaves_it_older(shared, dsn, opened):
    opened(open_state(shared)).execute("update schema_version set version = 4 where id = 1")
    with pytest.raises(StateFileError, match="older schema"):
        open_state_read_only(shared)
    row = opened(psycopg.connect(dsn)).execute("select version from schema_version").fetchone()
    assert row == (4,)


def test_the_private_copy_holds_the_budgets_the_token_and_the_capabilities(shared, opened):
    db = opened(open_state(shared))
    access(db).keep_token("tok-copied", 4000.0, 0.0)
    access(db).spend_request(10.0)
    capabilities.put(db, capabilities.LISTING_FORM, "plain", 5.0)
    copy = opened(private_copy(shared))
    assert access(copy).cached_token(11.0)[0] == "tok-copied"
    assert access(copy).requests_left(11.0) == 4
    assert capabilities.get(copy, capabilities.LISTING_FORM).value == "plain"
    assert rows_of(copy, "rate_counts", "bucket") == rows_of(db, "rate_counts", "bucket")


def test_the_private_copy_holds_nothing_but_the_access_tables(shared, opened):
    db = opened(open_state(shared))
    archives.note_listed(db, [archive_record("a1", "c1", "AVAILABLE", "a" * 64)], 0.0)
    assert count_of(db, "archives") == 1
    copy = opened(private_copy(shared))
    assert count_of(copy, "archives") == 0


def test_writing_to_the_private_copy_leaves_the_database_as_it_was(shared, opened):
    db = opened(open_state(shared))
    access(db).spend_request(0.0)
    copy = opened(private_copy(shared))
    access(copy).spend_request(1.0)
    access(copy).keep_token("tok-private", 4000.0, 1.0)
    assert count_of(copy, "rate_events") == 2
    assert count_of(db, "rate_events") == 1
    assert access(db).cached_token(2.0) is None


def test_the_private_copy_of_an_empty_database_is_refused_and_makes_nothing(shared, dsn):
    with pytest.raises(NoState):
        private_copy(shared)
    assert tables_of(dsn) == []


def test_the_place_names_the_database_never_its_password(dsn, opened):
    config = StateConfig(backend="postgresql", dsn=f"{dsn} password=hunter2")
    place = state_place(config, opened(open_state(config)))
    assert place.startswith("postgresql: test_")
    assert "hunter2" not in place


def test_the_place_of_a_sqlite_state_is_its_files_absolute_path(tmp_path, opened, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = StateConfig(database=Path("s.db"))
    assert state_place(config, opened(open_state(config))) == str(tmp_path / "s.db")


def test_a_second_holder_of_a_job_is_refused_on_either_engine(state_config):
    with job_locks(state_config, ["claim-archives"]):
        with pytest.raises(LockHeld), job_locks(state_config, ["claim-archives"]):
            pass
        with job_locks(state_config, ["push-insights"]):  # another job is free
            pass


def test_a_sqlite_state_exists_once_a_pass_made_its_file(tmp_path, opened):
    config = StateConfig(database=tmp_path / "s.db")
    assert state_exists(config) is False
    opened(open_state(config))
    assert state_exists(config) is True


def test_a_database_is_assumed_to_hold_a_state_until_opening_it_tells(shared):
    assert state_exists(shared) is True


def test_opening_the_state_for_a_pass_makes_it(shared, dsn, opened):
    opened(open_state(shared))
    assert ("archives",) in tables_of(dsn)
    opened(open_postgres(dsn))  # already at the latest version: nothing to do
