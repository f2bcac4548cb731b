import pytest

from sync_worker.state import capabilities
from sync_worker.state.db import open_database

pytestmark = pytest.mark.fast


def test_a_decision_is_remembered_with_its_time(tmp_path):
    db = open_database(tmp_path / "s.db")
    assert capabilities.get(db, "x") is None
    assert capabilities.put(db, "x", "rejected", now=100.0) is None
    assert capabilities.get(db, "x") == capabilities.Decision("rejected", 100.0)


def test_put_returns_the_decision_it_replaces(tmp_path):
    db = open_database(tmp_path / "s.db")
    capabilities.put(db, "x", "rejected", now=100.0)
    previous = capabilities.put(db, "x", "supported", now=200.0)
    assert previous == capabilities.Decision("rejected", 100.0)
    assert capabilities.get(db, "x").value == "supported"


def test_older_than():
    decision = capabilities.Decision("v", decided_at=100.0)
    assert decision.older_than(50.0, now=151.0)
    assert not decision.older_than(50.0, now=150.0)


def test_forget_and_everything(tmp_path):
    db = open_database(tmp_path / "s.db")
    capabilities.put(db, "b", "2", now=2.0)
    capabilities.put(db, "a", "1", now=1.0)
    assert list(capabilities.everything(db)) == ["a", "b"]
    capabilities.forget(db, "a")
    assert list(capabilities.everything(db)) == ["b"]


def test_decisions_are_shared_through_the_file(tmp_path):
    capabilities.put(open_database(tmp_path / "s.db"), "x", "v", now=1.0)
    assert capabilities.get(open_database(tmp_path / "s.db"), "x").value == "v"
