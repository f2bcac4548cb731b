"""A state file made by the previous release (0.1.0, before schema versions) carries on: a
pass migrates it, finds its claimed archives claimed, and stores and abandons the new ones."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sync_worker.state import migrations
from sync_worker.state.db import open_database

SCHEMAS = sorted((Path(__file__).parent.parent / "state" / "schemas").glob("v0-*.sql"))


@pytest.mark.both_stores
@pytest.mark.parametrize("schema", [SCHEMAS[0], SCHEMAS[-1]], ids=lambda path: path.stem)
def test_a_state_file_of_the_previous_release_migrates_and_passes(sandbox, config, run, schema):
    path = config.state.database
    path.parent.mkdir(parents=True, exist_ok=True)
    old = sqlite3.connect(path)
    old.executescript(schema.read_text())
    old.execute(
        "insert into archives (archive_id, conference_id, state, sha256, record, path, size, "
        "first_seen_at, stored_at, claimed_at, attempts) values ('old-1', 'old-c', 'claimed', "
        "'ab', '{}', '/old/old-1.zip', 7, 1.0, 2.0, 3.0, 0)"
    )
    old.commit()
    old.close()
    path.chmod(0o600)
    new = sandbox.flexperto.add_archive(status="AVAILABLE")
    assert run().exit_code == 0
    db = open_database(path)
    assert migrations.version_of(db) == migrations.STATE_STEPS[-1].number
    assert db["archives"].get("old-1")["state"] == "claimed"
    assert db["archives"].get(new["id"])["state"] == "claimed"
    assert sandbox.flexperto.record(new["id"])["status"] == "ABANDONED"
    db.close()
