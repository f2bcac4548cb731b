import pytest

from sync_worker.state import archives, insights
from tests.records import archive_record
from tests.state_rows import row_of

pytestmark = pytest.mark.fast

SHA = "a" * 64


def listed(db, archive_id, conference_id="c1", status="AVAILABLE", now=0.0):
    archives.note_listed(db, [archive_record(archive_id, conference_id, status, SHA)], now)
    return archives.get(db, archive_id)


def test_first_sighting_is_pending_and_later_ones_update_the_status(open_state):
    db = open_state()
    assert listed(db, "a1").state == "pending"
    row = listed(db, "a1", status="ABANDONED", now=5.0)
    assert (row.state, row.remote_status) == ("pending", "ABANDONED")
    assert row_of(db, "archives", archive_id="a1")["first_seen_at"] == 0.0


def test_rows_carry_the_record_as_listed(open_state):
    db = open_state()
    row = listed(db, "a1", conference_id="c7")
    assert (row.archive_id, row.conference_id, row.record.sha256) == ("a1", "c7", SHA)
    assert archives.get(db, "nope") is None


def test_stored_record_and_outbox_in_one_step(open_state):
    db = open_state()
    listed(db, "a1")
    archives.mark_stored(db, "a1", "/x/a1.zip", 10, 1.0, [("p@x.org", "P")], "m@x.org")
    row = archives.get(db, "a1")
    assert (row.state, row.path) == ("stored", "/x/a1.zip")
    assert row_of(db, "archives", archive_id="a1")["size"] == 10
    [participant] = insights.open_participants(db)
    assert (participant.email, participant.moderator_email) == ("p@x.org", "m@x.org")
    # repeating the step queues nothing twice
    archives.mark_stored(db, "a1", "/x/a1.zip", 10, 1.0, [("p@x.org", "P")], "m@x.org")
    assert len(insights.open_participants(db)) == 1


def test_listing_does_not_rewrite_a_stored_record(open_state):
    db = open_state()
    listed(db, "a1")
    archives.mark_stored(db, "a1", "/x", 1, 1.0, [], None)
    changed = archive_record("a1", "c9", sha256="b" * 64, note="changed")
    assert archives.note_listed(db, [changed], 2.0) == []
    row = archives.get(db, "a1")
    assert (row.record.sha256, row.conference_id, "note" in row.record.raw) == (SHA, "c1", False)
