import sqlite3

import pytest

from sync_worker.state import pass_history
from sync_worker.state.db import open_database
from sync_worker.state.pass_history import PassEnd

pytestmark = pytest.mark.fast

DAY = 86_400.0


def end(at: float, outcome: str = pass_history.OK, **fields) -> PassEnd:
    values = {
        "counts": {"archives": {"stored": 2}},
        "errors": {},
        "bytes_stored": 10,
        "te_requests": 3,
        "te_tokens_requested": 1,
        **fields,
    }
    return PassEnd(finished_at=at, outcome=outcome, **values)


def test_a_pass_is_written_as_it_starts_and_completed_as_it_ends(open_state):
    db = open_state()
    pass_id = pass_history.start_pass(db, 100.0, ["archives", "insights"], "acme")
    [running] = pass_history.passes(db)
    assert (running.outcome, running.finished_at, running.duration) == ("unfinished", None, None)
    assert (running.tenant, running.jobs, running.counts) == ("acme", ["archives", "insights"], {})
    errors = {"insights": "ApiError: 401"}
    pass_history.finish_pass(
        db, pass_id, end(160.0, pass_history.STOPPED, errors=errors), keep_after=0
    )
    [done] = pass_history.passes(db)
    assert (done.outcome, done.started_at, done.duration) == ("stopped", 100.0, 60.0)
    assert done.counts == {"archives": {"stored": 2}}
    assert done.errors == errors
    assert (done.bytes_stored, done.te_requests, done.te_tokens_requested) == (10, 3, 1)


def test_passes_are_listed_newest_first_since_a_moment_up_to_a_limit(open_state):
    db = open_state()
    for n in range(5):
        pass_history.start_pass(db, 100.0 * n, ["archives"], None)
    assert [p.started_at for p in pass_history.passes(db)] == [400, 300, 200, 100, 0]
    assert [p.started_at for p in pass_history.passes(db, since=200)] == [400, 300, 200]
    assert [p.started_at for p in pass_history.passes(db, since=200, limit=2)] == [400, 300]


def test_old_passes_are_pruned_as_a_pass_ends_a_bounded_number_at_a_time(open_state, monkeypatch):
    monkeypatch.setattr(pass_history, "PRUNE_BATCH", 2)
    db = open_state()
    for n in range(5):
        pass_history.start_pass(db, n * DAY, ["archives"], None)
    now = 100 * DAY
    last = pass_history.start_pass(db, now, ["archives"], None)
    pass_history.finish_pass(db, last, end(now), keep_after=3 * DAY)
    assert [p.started_at / DAY for p in pass_history.passes(db)] == [100, 4, 3, 2]
    pass_history.finish_pass(db, last, end(now), keep_after=3 * DAY)
    assert [p.started_at / DAY for p in pass_history.passes(db)] == [100, 4, 3]


def test_a_state_file_of_an_older_version_gets_the_table_on_open(tmp_path):
    path = tmp_path / "s.db"
    open_database(path).close()
    old = sqlite3.connect(path)
    old.execute("drop table passes")
    old.execute("pragma user_version = 0")  # as made before schema versions
    old.commit()
    old.close()
    db = open_database(path)
    assert pass_history.passes(db) == []
    assert db["passes"].exists()
