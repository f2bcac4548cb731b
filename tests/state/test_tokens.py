import pytest

from sync_worker.state import tokens
from sync_worker.state.db import open_database

pytestmark = pytest.mark.fast


def test_cached_until_shortly_before_expiry(tmp_path):
    db = open_database(tmp_path / "s.db")
    tokens.remember(db, "k", "tok", expires_at=1000.0 + 3600, now=1000.0)
    assert tokens.lookup(db, "k", 1000.0) == ("tok", 4600.0)
    assert tokens.lookup(db, "k", 4600.0 - tokens.EXPIRY_MARGIN_SECONDS - 1) == ("tok", 4600.0)
    assert tokens.lookup(db, "k", 4600.0 - tokens.EXPIRY_MARGIN_SECONDS) is None


def test_visible_to_another_connection(tmp_path):
    tokens.remember(open_database(tmp_path / "s.db"), "k", "tok", 5000.0, 0.0)
    assert tokens.lookup(open_database(tmp_path / "s.db"), "k", 0.0) == ("tok", 5000.0)


def test_drop_only_removes_the_rejected_token(tmp_path):
    db = open_database(tmp_path / "s.db")
    tokens.remember(db, "k", "new", 5000.0, 0.0)
    tokens.drop(db, "k", "old")
    assert tokens.lookup(db, "k", 0.0) == ("new", 5000.0)
    tokens.drop(db, "k", "new")
    assert tokens.lookup(db, "k", 0.0) is None


def test_one_holder_at_a_time_requests_a_token(tmp_path):
    db = open_database(tmp_path / "s.db")
    assert tokens.take_lease(db, "k", "a", now=0.0, seconds=30.0) is None
    assert tokens.take_lease(db, "k", "b", now=1.0, seconds=30.0) == 30.0
    assert tokens.take_lease(db, "other-client", "b", now=1.0, seconds=30.0) is None
    tokens.release_lease(db, "k", "b")  # not b's: a keeps it
    assert tokens.take_lease(db, "k", "b", now=2.0, seconds=30.0) == 30.0
    tokens.release_lease(db, "k", "a")
    assert tokens.take_lease(db, "k", "b", now=2.0, seconds=30.0) is None


def test_a_lease_whose_holder_died_runs_out(tmp_path):
    db = open_database(tmp_path / "s.db")
    tokens.take_lease(db, "k", "dead", now=0.0, seconds=30.0)
    assert tokens.take_lease(db, "k", "b", now=30.0, seconds=30.0) is None
