"""A pass cut short at any step boundary is completed by the next, with nothing doubled.

The "crash" is raised from inside the worker as a BaseException, which no handler of the
worker catches, right when it logs the named step: the state left is what a kill at that
instant leaves (for real SIGKILLs, see test_crash_tool.py).
"""

import hashlib
from collections import Counter

import pytest

from tests.conftest import SimulatedCrash

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

    root = config.storage.archive_dir
    for archive_id, record in expected.items():
        path = root / record["subject"]["conference_id"] / f"{archive_id}.zip"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256CheckSum"]
        assert sandbox.flexperto.record(archive_id)["status"] == "ABANDONED"
    assert not list(root.glob("*/.*.part"))

    full_downloads = Counter(
        r.path for r in sandbox.s3.requests if r.status == 200 and "range" not in r.headers
    )
    assert all(count == 1 for count in full_downloads.values()), full_downloads
    abandons = Counter(r.path for r in sandbox.flexperto.requests if r.method == "POST")
    assert all(count == 1 for count in abandons.values()), abandons
    keys = Counter(
        (i["data"]["flexperto_archive_id"], i["contact_id"]) for i in sandbox.totalexpert.insights()
    )
    assert len(keys) >= 3 and set(keys.values()) == {1}
