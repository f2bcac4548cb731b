"""What `status` reports, with wall-clock time frozen (freezegun) as the CLI sees it."""

import io
import json
from dataclasses import dataclass

import pytest
from freezegun import freeze_time

from sync_worker.core.clock import SystemClock
from sync_worker.ops import status
from sync_worker.state import archives, insights
from sync_worker.state.db import open_database
from sync_worker.state.lifecycles import ArchiveState
from sync_worker.state.work_items import note_failure
from tests.records import archive_record

pytestmark = pytest.mark.fast


@dataclass
class Policy:
    max_attempts: int = 3
    backoff_seconds: float = 60.0
    max_backoff_seconds: float = 3600.0


@freeze_time("2026-11-20 10:00:00")
def test_failing_archive_shows_its_error_and_next_attempt(tmp_path):
    db = open_database(tmp_path / "s.db")
    now = SystemClock().now()
    archives.note_listed(db, [archive_record("a1")], now)
    note_failure(
        db,
        "archives",
        {"archive_id": "a1"},
        "sha256 mismatch",
        now,
        Policy(),
        {ArchiveState.PENDING: ArchiveState.FAILED},
    )
    out = io.StringIO()
    status.write_json(db, out)
    report = json.loads(out.getvalue())
    [archive] = report["archives"]
    assert archive["first_seen_at"] == "2026-11-20T10:00:00+00:00"
    assert archive["next_attempt_at"] == "2026-11-20T10:01:00+00:00"
    assert report["counts"] == {"archives": {"failed": 1}, "insights": {}}
    table = status.render_table(db)
    assert "Archives: failed 1" in table
    assert "2026-11-20T10:01:00+00:00" in table and "sha256 mismatch" in table


def test_a_state_file_without_archives_says_so(tmp_path):
    db = open_database(tmp_path / "s.db")
    table = status.render_table(db)
    assert table.splitlines() == ["Archives: none", "Insights: none", "No failing items."]
    out = io.StringIO()
    status.write_json(db, out)
    assert json.loads(out.getvalue()) == {
        "counts": {"archives": {}, "insights": {}},
        "archives": [],
    }


def history(tmp_path, claimed=1200, failing=3):
    """A state file with ``claimed`` archives done (2 insights sent each) and ``failing``
    ones failed, first seen a minute apart."""
    db = open_database(tmp_path / "s.db")
    for n in range(claimed + failing):
        archive_id = f"a{n:05d}"
        archives.note_listed(db, [archive_record(archive_id, f"c{n}")], now=60.0 * n)
        if n < claimed:
            archives.mark_stored(db, archive_id, "/x", 1, 1.0, [("p@x.org", "P")], None)
            insights.queue_insights(db, archive_id, "p@x.org", [(1, 9), (2, 9)])
            for contact_id in (1, 2):
                insights.mark_sent(db, archive_id, contact_id, 7, 2.0)
            archives.mark_claimed(db, archive_id, 3.0)
        else:
            note_failure(
                db,
                "archives",
                {"archive_id": archive_id},
                f"boom {n}",
                0.0,
                Policy(),
                {ArchiveState.PENDING: ArchiveState.FAILED},
            )
    return db


def test_counts_and_failing_items_only(tmp_path):
    db = history(tmp_path)
    table = status.render_table(db, limit=2)
    assert table.splitlines()[:2] == ["Archives: claimed 1200, failed 3", "Insights: sent 2400"]
    assert "boom 1200" in table and "boom 1201" in table and "boom 1202" not in table
    assert table.endswith("... and 1 more (sync-worker status --limit N)")


def test_json_streams_every_archive_in_pages_with_filters(tmp_path):
    db = history(tmp_path)
    everything = io.StringIO()
    status.write_json(db, everything)
    lines = everything.getvalue().splitlines()
    assert len(lines) == 2 + 1203  # the opening line with the counts, one per archive, the end
    report = json.loads(everything.getvalue())
    assert [a["archive_id"] for a in report["archives"]] == [f"a{n:05d}" for n in range(1203)]
    assert [i["state"] for i in report["archives"][0]["insights"]] == ["sent", "sent"]

    chosen = io.StringIO()
    status.write_json(db, chosen, states=("claimed",), since=60.0 * 1000, limit=150)
    picked = [a["archive_id"] for a in json.loads(chosen.getvalue())["archives"]]
    assert picked == [f"a{n:05d}" for n in range(1000, 1150)]
