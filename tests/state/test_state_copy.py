"""Copying a state file into an empty PostgreSQL state database (migrate-state): every
table arrives row for row, in one transaction that commits whole or not at all, never into
a database that holds a state, never from a file a pass is using."""

from __future__ import annotations

import re

import pytest
import sqlite_utils

from sync_worker.app.runner import JOBS
from sync_worker.core.locks import job_locks as file_locks
from sync_worker.state import (
    archives,
    audits,
    capabilities,
    directory,
    held_records,
    insight_blocks,
    insights,
    pass_history,
    postgres_schema,
    rate_limit,
    run_history,
    state_copy,
    store_owner,
    tokens,
    webhooks,
)
from sync_worker.state.db import (
    Database,
    StateFileError,
    make_durable,
    open_database,
    open_postgres,
)
from sync_worker.state.job_locks import job_locks as database_locks
from sync_worker.state.postgres import connect
from tests.records import archive_record
from tests.state_rows import count_of

pytestmark = pytest.mark.fast

PASSES = 3


@pytest.fixture
def dsn(postgres_cluster):
    return postgres_cluster.new_database()


@pytest.fixture
def source(tmp_path):
    """A state file with rows in every table, as passes leave one."""
    path = tmp_path / "state.db"
    db = open_database(path)
    try:
        fill(db)
    finally:
        db.close()
    return path


def fill(db: Database) -> None:
    """Rows in every table of the state, made by the state modules."""
    for n, archive_id in enumerate(("a1", "a2", "a3")):
        archives.note_listed(db, [archive_record(archive_id, conference_id=f"c{n}")], now=1.0)
    for archive_id in ("a1", "a2"):
        archives.mark_stored(
            db, archive_id, f"/{archive_id}.zip", 10, 2.0, [("p@example.org", "P")], None
        )
        insights.queue_insights(db, archive_id, "p@example.org", [(451, 50), (452, 50)])
    insights.mark_sent(db, "a1", 451, 9001, 3.0)
    audits.note(db, "a1", "ok", "", 4.0)
    tokens.remember(db, "te", "secret-token", 5000.0, 5.0)
    tokens.take_lease(db, "te", "host-a", 5.0, 30.0)
    for at in (6.0, 7.0):
        assert rate_limit.try_spend(db, "totalexpert:requests:te", 1000, 61.0, at) is None
    make_durable(db)
    directory.set_meta(db, {"contacts_read_at": "8.0"})
    directory.upsert_contacts(
        db, [{"contact_id": 451, "email": "p@example.org", "owner_id": 50}], 8
    )
    directory.upsert_users(db, [{"user_id": 50, "email": "o@example.org"}], 8.0)
    directory.note_lookup(db, "p@example.org", "contact", 8.0)
    capabilities.put(db, "te.updated_since_filter", "accepted", 9.0)
    run_history.record_run(db, ["archives", "insights"], 10.0, 1.5, True, {"stored": 2})
    held_records.hold(db, {"id": "h1"}, "invalid", "no status", held_records.new_listing(), 11.0)
    webhooks.prepare(db, "hook-secret", 12.0)
    insight_blocks.note(db, "credentials", "401 from TE", 13.0)
    store_owner.state_id(db)
    for n in range(PASSES):
        pass_history.start_pass(db, 20.0 + n, ["archives", "insights"], None)


def rows(db: Database, table: str) -> list[dict]:
    """Every row of ``table``, in an order both engines agree on."""
    return sorted(
        (dict(row) for row in db.query(f"select * from {table}")),
        key=lambda row: repr(sorted(row.items())),
    )


def every_table(dsn: str) -> list[str]:
    db = open_postgres(dsn)
    try:
        return state_copy.state_tables(db)
    finally:
        db.close()


def total_rows(dsn: str) -> int:
    db = open_postgres(dsn)
    try:
        return sum(count_of(db, table) for table in state_copy.state_tables(db))
    finally:
        db.close()


def test_every_table_arrives_row_for_row(source, dsn, monkeypatch):
    monkeypatch.setattr(state_copy, "BATCH_ROWS", 2)  # several batches for most tables
    report = state_copy.copy_state(source, dsn, JOBS)
    file, target = open_database(source), open_postgres(dsn)
    try:
        tables = state_copy.state_tables(target)
        assert list(report.rows) == tables
        assert tables.index("archives") < tables.index("insights")  # referenced rows first
        for table in tables:
            assert count_of(file, table) > 0, f"the test state has no {table} row"
            assert rows(target, table) == rows(file, table), table
            assert report.rows[table] == count_of(file, table)
        assert postgres_schema.version_of(target) == postgres_schema.POSTGRES_STEPS[-1].number
        assert store_owner.state_id(target) == store_owner.state_id(file)
    finally:
        file.close()
        target.close()


def test_a_second_copy_into_the_filled_database_is_refused_and_changes_nothing(source, dsn):
    state_copy.copy_state(source, dsn, JOBS)
    target = open_postgres(dsn)
    before = {table: rows(target, table) for table in state_copy.state_tables(target)}
    target.close()
    with pytest.raises(state_copy.CopyRefused, match="holds a state already"):
        state_copy.copy_state(source, dsn, JOBS)
    target = open_postgres(dsn)
    try:
        assert {table: rows(target, table) for table in before} == before
    finally:
        target.close()


def test_a_database_with_one_row_of_its_own_is_refused(source, dsn):
    target = open_postgres(dsn)
    try:
        capabilities.put(target, "flexperto.listing_form", "v2", 1.0)
    finally:
        target.close()
    with pytest.raises(state_copy.CopyRefused, match=r"capabilities \(1 rows\)"):
        state_copy.copy_state(source, dsn, JOBS)
    assert total_rows(dsn) == 1


def test_a_file_a_pass_holds_is_refused(source, dsn):
    with (
        file_locks(source, ["insights"]),
        pytest.raises(
            state_copy.CopyRefused, match=re.escape(f"the state file {source} is in use")
        ),
    ):
        state_copy.copy_state(source, dsn, JOBS)
    probe = connect(dsn, 5.0)
    try:
        assert postgres_schema.version_of(probe) == 0  # not even the schema was made
    finally:
        probe.close()


def test_a_database_a_worker_holds_a_job_of_is_refused(source, dsn):
    open_postgres(dsn).close()
    with (
        database_locks(dsn, ["archives"], 5.0),
        pytest.raises(state_copy.CopyRefused, match=r"the state database .* is in use"),
    ):
        state_copy.copy_state(source, dsn, JOBS)
    assert total_rows(dsn) == 0


def test_a_failure_in_the_middle_leaves_the_target_empty(source, dsn, monkeypatch):
    real = state_copy.copy_table

    def failing(file, target, table, names):
        if table == "insights":
            raise RuntimeError("the connection broke")
        return real(file, target, table, names)

    monkeypatch.setattr(state_copy, "copy_table", failing)
    with pytest.raises(RuntimeError, match="the connection broke"):
        state_copy.copy_state(source, dsn, JOBS)
    assert total_rows(dsn) == 0
    monkeypatch.setattr(state_copy, "copy_table", real)
    state_copy.copy_state(source, dsn, JOBS)  # an empty database: it may be tried again
    assert total_rows(dsn) > 0


def test_a_count_that_differs_rolls_everything_back(source, dsn, monkeypatch):
    real = state_copy.count

    def off_by_one(db, table):
        found = real(db, table)
        return (
            found + 1
            if table == "participants" and isinstance(db, sqlite_utils.Database)
            else found
        )

    monkeypatch.setattr(state_copy, "count", off_by_one)
    with pytest.raises(state_copy.CountMismatch, match="participants: 3 in the file, 2 copied"):
        state_copy.copy_state(source, dsn, JOBS)
    assert total_rows(dsn) == 0


def test_the_pass_ids_continue_after_the_copied_ones(source, dsn):
    file = open_database(source)
    highest = file.execute("select max(id) from passes").fetchone()[0]
    file.close()
    assert highest == PASSES
    state_copy.copy_state(source, dsn, JOBS)
    target = open_postgres(dsn)
    try:
        assert pass_history.start_pass(target, 30.0, ["archives"], None) == highest + 1
    finally:
        target.close()


def test_the_file_is_left_as_it_was(source, dsn):
    before = source.read_bytes()
    state_copy.copy_state(source, dsn, JOBS)
    assert source.read_bytes() == before


def test_no_state_file_is_an_error_and_makes_none(tmp_path, dsn):
    missing = tmp_path / "missing.db"
    with pytest.raises(StateFileError, match="no state file"):
        state_copy.copy_state(missing, dsn, JOBS)
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []
