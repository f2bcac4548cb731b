import pytest

from sync_worker.state import archives, held_records
from sync_worker.state.abandon_rule import conference_blockers
from tests.records import archive_record

pytestmark = pytest.mark.fast

SHA = "a" * 64


def listed(db, archive_id, conference_id="c1"):
    archives.note_listed(db, [archive_record(archive_id, conference_id, "AVAILABLE", SHA)], 0.0)


def test_abandon_waits_for_unstored_siblings_of_the_conference(open_state):
    db = open_state()
    listed(db, "a1")
    listed(db, "a2")
    listed(db, "a3", conference_id="c2")
    archives.mark_stored(db, "a1", "/x", 1, 1.0, [], None)
    assert conference_blockers(db, "c1") == ["a2"]
    archives.mark_stored(db, "a2", "/y", 1, 1.0, [], None)
    assert conference_blockers(db, "c1") == []
    assert archives.mark_conference_claimed(db, "c1", 2.0) == 2
    assert [r.archive_id for r in archives.open_work(db)] == ["a3"]


def test_a_given_up_sibling_still_holds_the_conference_back(open_state):
    db = open_state()
    listed(db, "a1")
    listed(db, "a2")
    archives.mark_stored(db, "a1", "/x", 1, 1.0, [], None)
    db.execute("update archives set state = 'given_up' where archive_id = 'a2'")
    assert conference_blockers(db, "c1") == ["a2"]


def test_held_records_hold_back_their_conference_and_those_of_none_hold_back_all(open_state):
    db = open_state()
    listed(db, "a1")
    archives.mark_stored(db, "a1", "/x", 1, 1.0, [], None)
    listing = held_records.new_listing()
    bad = {"id": "a+2", "status": "AVAILABLE", "subject": {"conference_id": "c1"}}
    held_records.hold(db, bad, held_records.REJECTED, "unsafe id", listing, 1.0)
    assert conference_blockers(db, "c1") == ["a+2"]
    assert conference_blockers(db, "c2") == []
    orphan = {"status": "AVAILABLE"}
    held_records.hold(db, orphan, held_records.REJECTED, "no id", listing, 1.0)
    assert conference_blockers(db, "c2") == [held_records.record_key(orphan)]


def test_a_complete_listing_forgets_what_it_no_longer_holds(open_state):
    db = open_state()
    first, second = held_records.new_listing(), held_records.new_listing()
    held_records.hold(db, {"id": "x"}, held_records.REJECTED, "why", first, 1.0)
    held_records.hold(db, {"id": "y"}, held_records.IN_PROGRESS, "PACKING", first, 1.0)
    held_records.hold(db, {"id": "y"}, held_records.IN_PROGRESS, "PACKING", second, 2.0)
    assert held_records.forget_unseen(db, second) == 1
    [kept] = held_records.listed(db, 10)[0]
    assert (kept.key, kept.first_seen_at, kept.last_seen_at) == ("y", 1.0, 2.0)
    assert held_records.counts(db) == {held_records.IN_PROGRESS: 1}


def test_untrusted_text_is_kept_short(open_state):
    db = open_state()
    raw = {"id": "i" * 5000, "subject": {"conference_id": "c" * 5000}}
    held_records.hold(db, raw, held_records.REJECTED, "r" * 5000, "t", 1.0)
    [kept] = held_records.listed(db, 10)[0]
    assert len(kept.key) == len(kept.reason) == held_records.TEXT_LIMIT
    assert kept.conference_id is None  # too long to be a conference id: holds back all
