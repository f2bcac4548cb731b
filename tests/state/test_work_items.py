from dataclasses import dataclass

import pytest

from sync_worker.state import archives
from sync_worker.state.work_items import Failure, backoff_delay, is_due, note_failure
from tests.records import archive_record

pytestmark = pytest.mark.fast

OPEN = {"pending": "failed", "failed": "failed", "stored": "stored"}


@dataclass
class Policy:
    max_attempts: int = 3
    backoff_seconds: float = 10.0
    max_backoff_seconds: float = 25.0


def test_backoff_doubles_up_to_the_ceiling():
    assert [backoff_delay(n, Policy()) for n in (1, 2, 3, 4)] == [10.0, 20.0, 25.0, 25.0]


def test_failures_back_off_then_park(open_state):
    db = open_state()
    assert archives.note_listed(db, [archive_record("a1")], now=0.0) == ["a1"]
    key = {"archive_id": "a1"}
    assert note_failure(db, "archives", key, "boom", 100.0, Policy(), OPEN) == Failure(
        "pending", given_up=False
    )
    row = archives.get(db, "a1")
    assert (row.state, row.attempts, row.next_attempt_at) == ("failed", 1, 110.0)
    assert not is_due(row.next_attempt_at, 109.0) and is_due(row.next_attempt_at, 110.0)
    assert not note_failure(db, "archives", key, "boom", 200.0, Policy(), OPEN).given_up
    assert note_failure(db, "archives", key, "x" * 2000, 300.0, Policy(), OPEN).given_up
    row = archives.get(db, "a1")
    assert row.state == "given_up" and row.next_attempt_at is None
    assert len(row.last_error) == 500
    assert archives.retry_failed(db) == 1
    assert archives.get(db, "a1").state == "pending"


def test_a_failure_never_moves_a_finished_item_back(open_state):
    db = open_state()
    archives.note_listed(db, [archive_record("a1")], now=0.0)
    archives.mark_stored(db, "a1", "/x.zip", 1, 1.0, [], None)
    archives.mark_claimed(db, "a1", 2.0)
    key = {"archive_id": "a1"}
    assert note_failure(db, "archives", key, "late", 3.0, Policy(), OPEN) is None
    row = archives.get(db, "a1")
    assert (row.state, row.attempts, row.last_error) == ("claimed", 0, None)


def test_a_stored_item_keeps_its_state_while_it_waits(open_state):
    db = open_state()
    archives.note_listed(db, [archive_record("a1")], now=0.0)
    archives.mark_stored(db, "a1", "/x.zip", 1, 1.0, [], None)
    failure = note_failure(db, "archives", {"archive_id": "a1"}, "503", 3.0, Policy(), OPEN)
    assert failure == Failure("stored", given_up=False)
    assert archives.get(db, "a1").state == "stored"


def test_a_missing_item_records_nothing(open_state):
    db = open_state()
    assert note_failure(db, "archives", {"archive_id": "x"}, "e", 0.0, Policy(), OPEN) is None
