import stat

import pytest

from state.db import open_database, transaction


def test_database_file_is_private(tmp_path):
    path = tmp_path / "sub" / "state.db"
    open_database(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_reopening_keeps_data_and_schema(tmp_path):
    db = open_database(tmp_path / "s.db")
    db.execute("insert into rate_events (bucket, at) values ('b', 1)")
    db.close()
    assert open_database(tmp_path / "s.db")["rate_events"].count == 1


def test_transaction_is_all_or_nothing(tmp_path):
    db = open_database(tmp_path / "s.db")
    with pytest.raises(RuntimeError), transaction(db):
        db["rate_events"].insert({"bucket": "b", "at": 1.0})
        raise RuntimeError("crash")
    assert db["rate_events"].count == 0
    with transaction(db):
        db["rate_events"].insert({"bucket": "b", "at": 1.0})
    assert db["rate_events"].count == 1


def test_durable_transaction_is_fsynced_and_restores_the_default(tmp_path):
    db = open_database(tmp_path / "s.db")
    assert db.execute("pragma synchronous").fetchone()[0] == 1  # NORMAL
    with transaction(db, durable=True):
        assert db.execute("pragma synchronous").fetchone()[0] == 2  # FULL
        db["rate_events"].insert({"bucket": "b", "at": 1.0})
    assert db.execute("pragma synchronous").fetchone()[0] == 1
