"""Real SIGKILLs of real worker processes, a bounded number of them, with revoked tokens
and faults between them, against both sandboxes, both stores and both state engines (see
crash_tool.py)."""

import os

import pytest

from sync_worker.sandbox import LENIENT, STRICT
from tests.system import crash_tool

KILLS = int(os.environ.get("CRASH_TOOL_KILLS", "50"))


# A state in PostgreSQL (a private cluster of the run's) wants a shared store: S3.
@pytest.mark.parametrize(
    ("storage", "state"),
    [("local", "sqlite"), ("s3", "sqlite"), ("s3", "postgresql")],
    ids=["local", "s3", "s3-postgresql"],
)
@pytest.mark.parametrize("dialect", [LENIENT, STRICT], ids=["lenient", "strict"])
def test_random_kills_lose_nothing_and_double_nothing(tmp_path, dialect, storage, state):
    seed = int.from_bytes(os.urandom(4), "big")
    report = crash_tool.run(
        KILLS, seed=seed, folder=tmp_path, dialect=dialect, storage=storage, state=state
    )
    assert report.problems == [], f"seed {seed}"
    assert report.kills == KILLS
    assert report.archives >= KILLS
    assert report.tracebacks == 0


@pytest.mark.parametrize("dialect", [LENIENT, STRICT], ids=["lenient", "strict"])
def test_kills_lose_nothing_while_a_daemon_and_status_share_the_state_file(tmp_path, dialect):
    """Several processes on one state file (the daemon, killed and restarted too, cron
    passes, status): no commit of one is lost to another's opening and closing the file."""
    seed = int.from_bytes(os.urandom(4), "big")
    kills = max(KILLS // 2, 10)
    report = crash_tool.run(kills, seed=seed, folder=tmp_path, dialect=dialect, crowd=True)
    assert report.problems == [], f"seed {seed}"
    assert report.daemon_kills >= 1 and report.status_calls >= 1
    assert report.archives >= report.kills >= 1
    assert report.tracebacks == 0
