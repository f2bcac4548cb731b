"""No exception leaves a job: an arbitrary one raised at any step of either job becomes a
logged failure and exit code 1, the other job still runs, and the next pass completes.

The exception is raised from inside the worker when it logs the named step (the same device
as test_crash_between_steps.py), standing for a bug anywhere in that step.
"""

import pytest

from sync_worker.sandbox import Fault
from tests.conftest import InjectedError
from tests.system.invariants import assert_claimed_once, assert_consistent

pytestmark = pytest.mark.both_stores

STEPS = [
    ("archive.listed", 1),
    ("archive.downloaded", 1),
    ("archive.downloaded", 3),
    ("archive.verified", 1),
    ("archive.stored", 1),
    ("archive.stored", 2),
    ("archive.abandoned", 1),
    ("archive.claimed", 2),
    ("te.token_requested", 1),
    ("te.directory_filling", 1),
    ("te.directory_filled", 1),
    ("insight.matched", 1),
    ("insight.no_match", 1),
    ("insight.posting", 1),
    ("insight.posting", 2),
    ("insight.sent", 1),
]


@pytest.mark.parametrize(("event", "nth"), STEPS)
def test_an_exception_at_any_step_is_a_logged_failure(
    sandbox, config, run, clock, crash, log_lines, capfd, event, nth
):
    expected = {r["id"]: r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE"}
    crash.arm(event, nth, error=InjectedError)
    result = run()
    crash.disarm()

    assert result.exit_code == 1
    events = log_lines()
    [failure] = [e for e in events if e["event"] in ("item.failed", "job.failed")]
    assert failure["error_class"] == "InjectedError"
    assert failure["where"].startswith(("sync_worker/", "jobs/", "state/"))
    assert events[-1]["event"] == "run.finished"
    assert not any("exception" in e or "exc_info" in e for e in events)
    output = capfd.readouterr()
    assert "Traceback" not in output.out + output.err
    assert_consistent(sandbox, config)

    clock.advance(config.retry.max_backoff_seconds)
    assert run().exit_code == 0
    assert_claimed_once(sandbox, config, expected)
    assert_consistent(sandbox, config)


def test_a_failing_job_does_not_stop_the_other(sandbox, run, clock, crash, log_lines):
    sandbox.add_fault("te", Fault(method="POST", path="/insights$", status=503, times=None))
    run()  # archives stored; their insights wait, TE being unavailable
    sandbox.totalexpert.faults.clear()
    clock.advance(3600)
    sandbox.flexperto.add_archive(status="AVAILABLE")  # so that the archive job has work
    crash.arm("archive.listed", 1, error=InjectedError)  # outside any item: ends the job
    result = run()
    events = log_lines()
    [failed] = [e for e in events if e["event"] == "job.failed"]
    assert failed["job"] == "archives" and failed["error_class"] == "InjectedError"
    assert result.exit_code == 1 and events[-1]["event"] == "run.finished"
    assert len(sandbox.totalexpert.insights()) == 3  # the insight job ran all the same
