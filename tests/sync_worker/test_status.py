"""What `status` reports, with wall-clock time frozen (freezegun) as the CLI sees it."""

from dataclasses import dataclass

from freezegun import freeze_time

from sync_worker import status
from sync_worker.clock import SystemClock
from sync_worker.state import archives
from sync_worker.state.db import open_database
from sync_worker.state.work_items import note_failure
from tests.records import archive_record


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
        {archives.PENDING: archives.FAILED},
    )
    report = status.collect(db)
    [archive] = report["archives"]
    assert archive["first_seen_at"] == "2026-11-20T10:00:00+00:00"
    assert archive["next_attempt_at"] == "2026-11-20T10:01:00+00:00"
    assert report["counts"] == {"archives": {"failed": 1}, "insights": {}}
    table = status.render_table(report)
    assert "Archives: failed 1" in table
    assert "2026-11-20T10:01:00+00:00" in table and "sha256 mismatch" in table


def test_empty_state_says_so():
    table = status.render_table(status.empty())
    assert table.splitlines() == ["Archives: none", "Insights: none", "No failing items."]
