"""Numbered schema migrations: every older file opens at the latest version with the same
tables as a new file and its rows kept; a newer file is refused and left as it is."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from sync_worker.state import migrations
from sync_worker.state.db import (
    StateFileError,
    open_budget_database,
    open_database,
    open_existing,
    open_existing_read_only,
)
from tests.at_once import at_once

pytestmark = pytest.mark.fast

SCHEMAS = sorted((Path(__file__).parent / "schemas").glob("v0-*.sql"))
LATEST = migrations.STATE_STEPS[-1].number


def shape(path: Path) -> dict[str, object]:
    """Every table's columns (name, type, not null, default, key) and every index's
    columns: what a file's schema is, whatever order its statements were run in."""
    conn = sqlite3.connect(path)
    try:
        tables = [
            row[0]
            for row in conn.execute(
                "select name from sqlite_master where type = 'table' and name not like 'sqlite_%'"
            )
        ]
        found: dict[str, object] = {
            table: [row[1:] for row in conn.execute(f"pragma table_info('{table}')")]
            for table in tables
        }
        for (index,) in conn.execute(
            "select name from sqlite_master where type = 'index' and name not like 'sqlite_%'"
        ):
            found[f"index {index}"] = [
                row[2] for row in conn.execute(f"pragma index_info('{index}')")
            ]
        return found
    finally:
        conn.close()


def new_file(tmp_path: Path) -> Path:
    path = tmp_path / "new.db"
    open_database(path).close()
    return path


def old_file(tmp_path: Path, ddl: str, version: int = 0) -> Path:
    """A file with the tables ``ddl`` makes, at ``version``, holding one claimed archive
    with a sent insight and a stored one, in the columns every version has had."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(ddl)
    conn.executescript(
        """
        insert into archives (archive_id, conference_id, state, sha256, record, path, size,
            first_seen_at, stored_at, claimed_at, attempts)
        values ('a1', 'c1', 'claimed', 'ab', '{}', '/a/c1/a1.zip', 7, 1.0, 2.0, 3.0, 0),
               ('a2', 'c2', 'stored', 'cd', '{}', '/a/c2/a2.zip', 9, 4.0, 5.0, null, 0);
        insert into participants (archive_id, email, state, attempts)
        values ('a1', 'p@example.org', 'matched', 0);
        insert into insights (archive_id, contact_id, email, state, te_insight_id, attempts)
        values ('a1', 11, 'p@example.org', 'sent', 99, 0),
               ('a2', 12, 'q@example.org', 'failed', null, 2);
        """
    )
    conn.execute(f"pragma user_version = {version}")
    conn.commit()
    conn.close()
    return path


def steps_up_to(version: int) -> str:
    """The tables of a file that went through the steps up to ``version`` (as a release
    with that many steps made it), as SQL."""
    conn = sqlite3.connect(":memory:")
    db = sqlite_utils.Database(conn)
    for step in migrations.STATE_STEPS[:version]:
        step.apply(db)
    ddl = ";\n".join(
        row[0]
        for row in conn.execute(
            "select sql from sqlite_master where sql is not null and name not like 'sqlite_%' "
            "order by rowid"
        )
    )
    conn.close()
    return ddl + ";"


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda path: path.stem)
def test_a_file_made_before_schema_versions_is_migrated_with_its_rows(tmp_path, schema):
    path = old_file(tmp_path, schema.read_text())
    db = open_database(path)
    assert migrations.version_of(db) == LATEST
    assert db["archives"].get("a1")["state"] == "claimed"
    assert db["insights"].get(("a1", 11))["te_insight_id"] == 99
    # 0.1.0's first commits left failed insights; their POST may have gone through
    assert db["insights"].get(("a2", 12))["state"] == "sending"
    if '"audits"' not in schema.read_text():  # made before audits: filled from the ledger
        audited = {row["archive_id"]: row["audited_at"] for row in db["audits"].rows}
        assert audited == {"a1": 0, "a2": 0}  # the stored archives, never audited yet
    db.close()
    assert shape(path) == shape(new_file(tmp_path))


@pytest.mark.parametrize("version", range(1, LATEST))
def test_a_file_of_every_older_version_is_migrated_with_its_rows(tmp_path, version):
    path = old_file(tmp_path, steps_up_to(version), version)
    db = open_database(path)
    assert migrations.version_of(db) == LATEST
    assert db["archives"].get("a2")["state"] == "stored"
    db.close()
    assert shape(path) == shape(new_file(tmp_path))


def test_a_new_file_has_the_latest_version_and_reopening_changes_nothing(tmp_path):
    path = new_file(tmp_path)
    before = shape(path)
    db = open_database(path)
    assert migrations.version_of(db) == LATEST
    db.close()
    assert shape(path) == before


def test_a_file_of_a_newer_schema_is_refused_and_left_as_it_is(tmp_path):
    path = new_file(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute(f"pragma user_version = {LATEST + 1}")
    conn.execute("create table from_the_future (x)")
    conn.commit()
    conn.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for opening in (open_database, open_existing, open_existing_read_only):
        with pytest.raises(StateFileError, match=f"schema version {LATEST + 1}, newer .*{LATEST}"):
            opening(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_connections_opening_an_old_file_at_once_migrate_it_once(tmp_path):
    path = old_file(tmp_path, SCHEMAS[0].read_text())
    assert at_once(lambda: open_database(path).close()) == []
    db = open_database(path)
    assert migrations.version_of(db) == LATEST
    assert db["audits"].count == 2  # filled once
    db.close()


def test_a_budget_file_has_its_own_versions(tmp_path):
    path = tmp_path / "budget.db"
    db = open_budget_database(path)
    assert migrations.version_of(db) == migrations.BUDGET_STEPS[-1].number
    assert not db["archives"].exists()
    db.close()
