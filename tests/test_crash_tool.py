"""Real SIGKILLs of real worker processes, a bounded number of them (see crash_tool.py)."""

import os

from tests import crash_tool

KILLS = int(os.environ.get("CRASH_TOOL_KILLS", "50"))


def test_random_kills_lose_nothing_and_double_nothing(tmp_path):
    report = crash_tool.run(KILLS, seed=int.from_bytes(os.urandom(4), "big"), folder=tmp_path)
    assert report.problems == []
    assert report.kills == KILLS
    assert report.archives >= KILLS
