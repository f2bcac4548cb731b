import pytest

from sync_worker.state import capabilities

pytestmark = pytest.mark.fast


def test_a_decision_is_remembered_with_its_time(open_state):
    db = open_state()
    assert capabilities.get(db, "x") is None
    assert capabilities.put(db, "x", "rejected", now=100.0) is None
    assert capabilities.get(db, "x") == capabilities.Decision("rejected", 100.0)


def test_put_returns_the_decision_it_replaces(open_state):
    db = open_state()
    capabilities.put(db, "x", "rejected", now=100.0)
    previous = capabilities.put(db, "x", "supported", now=200.0)
    assert previous == capabilities.Decision("rejected", 100.0)
    assert capabilities.get(db, "x").value == "supported"


def test_older_than():
    decision = capabilities.Decision("v", decided_at=100.0)
    assert decision.older_than(50.0, now=151.0)
    assert not decision.older_than(50.0, now=150.0)


def test_forget_and_everything(open_state):
    db = open_state()
    capabilities.put(db, "b", "2", now=2.0)
    capabilities.put(db, "a", "1", now=1.0)
    assert list(capabilities.everything(db)) == ["a", "b"]
    capabilities.forget(db, "a")
    assert list(capabilities.everything(db)) == ["b"]


def test_decisions_are_shared_through_the_file(open_state):
    capabilities.put(open_state(), "x", "v", now=1.0)
    assert capabilities.get(open_state(), "x").value == "v"
