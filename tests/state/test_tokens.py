import pytest

from sync_worker.state import tokens

pytestmark = pytest.mark.fast


def test_cached_until_shortly_before_expiry(open_state):
    db = open_state()
    tokens.remember(db, "k", "tok", expires_at=1000.0 + 3600, now=1000.0)
    assert tokens.lookup(db, "k", 1000.0) == ("tok", 4600.0)
    assert tokens.lookup(db, "k", 4600.0 - tokens.EXPIRY_MARGIN_SECONDS - 1) == ("tok", 4600.0)
    assert tokens.lookup(db, "k", 4600.0 - tokens.EXPIRY_MARGIN_SECONDS) is None


def test_visible_to_another_connection(open_state):
    tokens.remember(open_state(), "k", "tok", 5000.0, 0.0)
    assert tokens.lookup(open_state(), "k", 0.0) == ("tok", 5000.0)


def test_drop_only_removes_the_rejected_token(open_state):
    db = open_state()
    tokens.remember(db, "k", "new", 5000.0, 0.0)
    tokens.drop(db, "k", "old")
    assert tokens.lookup(db, "k", 0.0) == ("new", 5000.0)
    tokens.drop(db, "k", "new")
    assert tokens.lookup(db, "k", 0.0) is None


def test_one_holder_at_a_time_requests_a_token(open_state):
    db = open_state()
    assert tokens.take_lease(db, "k", "a", now=0.0, seconds=30.0) is None
    assert tokens.take_lease(db, "k", "b", now=1.0, seconds=30.0) == 30.0
    assert tokens.take_lease(db, "other-client", "b", now=1.0, seconds=30.0) is None
    tokens.release_lease(db, "k", "b")  # not b's: a keeps it
    assert tokens.take_lease(db, "k", "b", now=2.0, seconds=30.0) == 30.0
    tokens.release_lease(db, "k", "a")
    assert tokens.take_lease(db, "k", "b", now=2.0, seconds=30.0) is None


def test_a_lease_whose_holder_died_runs_out(open_state):
    db = open_state()
    tokens.take_lease(db, "k", "dead", now=0.0, seconds=30.0)
    assert tokens.take_lease(db, "k", "b", now=30.0, seconds=30.0) is None
