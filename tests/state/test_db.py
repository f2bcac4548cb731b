import stat

import pytest

from sync_worker.state.db import open_budget_database, open_database, transaction
from tests.at_once import at_once

pytestmark = pytest.mark.fast


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


def test_a_state_file_of_an_older_version_gains_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute(
        "create table te_contacts (contact_id integer primary key, email text, owner_id int)"
    )
    old.execute("insert into te_contacts values (1, 'a@example.org', 5)")
    old.commit()
    old.close()
    db = open_database(path)
    assert "seen_at" in db["te_contacts"].columns_dict
    assert db["te_contacts"].get(1) == {
        "contact_id": 1,
        "email": "a@example.org",
        "owner_id": 5,
        "seen_at": None,
    }
    assert db["capabilities"].exists()


def test_connections_opening_a_new_file_at_once_wait_for_each_other(tmp_path):
    # Without waiting, about one in twenty such starts found the file "locked" (the
    # daemon's jobs open the state file together when it starts).
    failures = []
    for n in range(60):
        path = tmp_path / f"s{n}.db"
        failures += at_once(lambda path=path: open_database(path).close())
    assert failures == []


def test_a_budget_file_holds_only_the_budgets_and_tokens_and_is_private(tmp_path):
    db = open_budget_database(tmp_path / "shared" / "te-budget.db")
    assert set(db.table_names()) == {"tokens", "token_leases", "rate_events", "rate_counts"}
    assert stat.S_IMODE((tmp_path / "shared" / "te-budget.db").stat().st_mode) == 0o600
