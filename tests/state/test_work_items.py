from dataclasses import dataclass

from state import archives
from state.db import open_database
from state.work_items import backoff_delay, is_due, record_failure


@dataclass
class Policy:
    max_attempts: int = 3
    backoff_seconds: float = 10.0
    max_backoff_seconds: float = 25.0


def test_backoff_doubles_up_to_the_ceiling():
    assert [backoff_delay(n, Policy()) for n in (1, 2, 3, 4)] == [10.0, 20.0, 25.0, 25.0]


def test_failures_back_off_then_park(tmp_path):
    db = open_database(tmp_path / "s.db")
    listing = archives.Listing("a1", "c1", "AVAILABLE", "0" * 64, {"id": "a1"})
    assert archives.note_listed(db, [listing], now=0.0) == ["a1"]
    key = {"archive_id": "a1"}
    assert not record_failure(db, "archives", key, "boom", 100.0, Policy(), "failed")
    row = archives.get(db, "a1")
    assert (row["state"], row["attempts"], row["next_attempt_at"]) == ("failed", 1, 110.0)
    assert not is_due(row, 109.0) and is_due(row, 110.0)
    assert not record_failure(db, "archives", key, "boom", 200.0, Policy(), "failed")
    assert record_failure(db, "archives", key, "x" * 2000, 300.0, Policy(), "failed")
    row = archives.get(db, "a1")
    assert row["state"] == "given_up" and row["next_attempt_at"] is None
    assert len(row["last_error"]) == 500
    assert archives.retry_failed(db) == 1
    assert archives.get(db, "a1")["state"] == "pending"
