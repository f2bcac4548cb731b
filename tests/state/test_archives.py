from sync_worker.state import archives, insights
from sync_worker.state.db import open_database

SHA = "a" * 64


def listed(db, archive_id, conference_id="c1", status="AVAILABLE", now=0.0):
    item = archives.Listing(archive_id, conference_id, status, SHA, {"id": archive_id})
    archives.note_listed(db, [item], now)
    return archives.get(db, archive_id)


def test_first_sighting_is_pending_and_later_ones_update_the_status(tmp_path):
    db = open_database(tmp_path / "s.db")
    assert listed(db, "a1")["state"] == "pending"
    row = listed(db, "a1", status="ABANDONED", now=5.0)
    assert (row["state"], row["remote_status"], row["first_seen_at"]) == (
        "pending",
        "ABANDONED",
        0.0,
    )


def test_stored_record_and_outbox_in_one_step(tmp_path):
    db = open_database(tmp_path / "s.db")
    listed(db, "a1")
    archives.record_stored(db, "a1", "/x/a1.zip", 10, 1.0, [("p@x.org", "P")], "m@x.org")
    row = archives.get(db, "a1")
    assert (row["state"], row["path"], row["size"]) == ("stored", "/x/a1.zip", 10)
    [participant] = insights.open_participants(db)
    assert (participant["email"], participant["moderator_email"]) == ("p@x.org", "m@x.org")
    # repeating the step queues nothing twice
    archives.record_stored(db, "a1", "/x/a1.zip", 10, 1.0, [("p@x.org", "P")], "m@x.org")
    assert len(insights.open_participants(db)) == 1


def test_listing_does_not_rewrite_a_stored_record(tmp_path):
    db = open_database(tmp_path / "s.db")
    listed(db, "a1")
    archives.record_stored(db, "a1", "/x", 1, 1.0, [], None)
    changed = archives.Listing("a1", "c9", "AVAILABLE", "b" * 64, {"id": "changed"})
    assert archives.note_listed(db, [changed], 2.0) == []
    row = archives.get(db, "a1")
    assert (row["sha256"], row["conference_id"], row["record"]) == (SHA, "c1", '{"id": "a1"}')


def test_abandon_waits_for_unstored_siblings_of_the_conference(tmp_path):
    db = open_database(tmp_path / "s.db")
    listed(db, "a1")
    listed(db, "a2")
    listed(db, "a3", conference_id="c2")
    archives.record_stored(db, "a1", "/x", 1, 1.0, [], None)
    assert archives.unsafe_siblings(db, "c1", "a1") == ["a2"]
    archives.record_stored(db, "a2", "/y", 1, 1.0, [], None)
    assert archives.unsafe_siblings(db, "c1", "a1") == []
    assert archives.mark_conference_claimed(db, "c1", 2.0) == 2
    assert [r["archive_id"] for r in archives.open_work(db)] == ["a3"]
