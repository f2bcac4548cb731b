import pytest

from sync_worker.state import run_history

pytestmark = pytest.mark.fast


def test_a_run_is_recorded_per_job_and_totals_add_up(open_state):
    db = open_state()
    run_history.record_run(db, ["archives", "insights"], 100.0, 2.5, True, {"te_requests": 3})
    run_history.record_run(db, ["insights"], 200.0, 1.0, False, {"te_requests": 4})
    runs = {row["job"]: row for row in run_history.job_runs(db)}
    assert runs["archives"] == {
        "job": "archives",
        "last_finished_at": 100.0,
        "last_duration": 2.5,
        "last_ok_at": 100.0,
        "runs": 1,
        "failed_runs": 0,
    }
    assert (runs["insights"]["last_finished_at"], runs["insights"]["last_ok_at"]) == (200.0, 100.0)
    assert (runs["insights"]["runs"], runs["insights"]["failed_runs"]) == (2, 1)
    assert run_history.totals(db) == {"te_requests": 7}


def test_nothing_recorded_reads_empty(open_state):
    db = open_state()
    assert run_history.job_runs(db) == []
    assert run_history.totals(db) == {}
