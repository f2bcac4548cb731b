"""A pass cut short at any step boundary is completed by the next, with nothing doubled.

The "crash" is raised from inside the worker as a BaseException, which no handler of the
worker catches, right when it logs the named step: the state left is what a kill at that
instant leaves (for real SIGKILLs, see test_crash_tool.py).
"""

import pytest

from tests.conftest import SimulatedCrash
from tests.system.invariants import assert_claimed_once

pytestmark = [pytest.mark.both_stores, pytest.mark.both_states]

STEPS = [
    ("archive.listed", 1),
    ("archive.listed", 3),
    ("archive.downloaded", 1),
    ("archive.downloaded", 2),
    ("archive.verified", 1),
    ("archive.stored", 1),
    ("archive.stored", 3),
    ("archive.abandoned", 1),
    ("archive.claimed", 2),
    ("te.token_requested", 1),
    ("insight.matched", 1),
    ("insight.no_match", 1),
    ("insight.posting", 1),
    ("insight.posting", 2),
    ("insight.sent", 1),
    ("run.finished", 1),
]


@pytest.mark.parametrize(("event", "nth"), STEPS)
def test_next_pass_completes_a_crashed_one(sandbox, config, run, crash, event, nth):
    expected = {r["id"]: r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE"}
    crash.arm(event, nth)
    with pytest.raises(SimulatedCrash):
        run()
    crash.disarm()
    assert run().exit_code == 0
    assert_claimed_once(sandbox, config, expected)
