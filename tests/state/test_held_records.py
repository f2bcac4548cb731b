import pytest

from sync_worker.state import held_records
from sync_worker.state.held_records import IN_PROGRESS, REJECTED
from tests.state_rows import count_of

pytestmark = pytest.mark.fast


def raw(key, conference_id="c1"):
    subject = {} if conference_id is None else {"conference_id": conference_id}
    return {"id": key, "status": "PROCESSING", "subject": subject}


def hold(db, key, conference_id="c1", listing="L1", now=0.0, kind=IN_PROGRESS, reason="packing"):
    held_records.hold(db, raw(key, conference_id), kind, reason, listing, now)


def keys(held):
    return [record.key for record in held]


def test_a_held_record_blocks_its_own_conference_only(open_state):
    db = open_state()
    hold(db, "r1", "c1")
    assert keys(held_records.blocking(db, "c1")) == ["r1"]
    assert held_records.blocking(db, "c2") == []


def test_a_record_of_no_readable_conference_blocks_every_conference(open_state):
    db = open_state()
    hold(db, "r1", None)
    hold(db, "r2", "c1", now=1.0)
    assert held_records.get(db, "r1").conference_id is None
    assert keys(held_records.blocking(db, "c1")) == ["r1", "r2"]
    assert keys(held_records.blocking(db, "c9")) == ["r1"]


def test_holding_again_keeps_the_first_sighting_and_takes_the_rest(open_state):
    db = open_state()
    hold(db, "r1", now=1.0, kind=IN_PROGRESS, reason="packing")
    hold(db, "r1", listing="L2", now=5.0, kind=REJECTED, reason="x" * 500)
    record = held_records.get(db, "r1")
    assert (record.kind, record.first_seen_at, record.last_seen_at) == (REJECTED, 1.0, 5.0)
    assert record.reason == "x" * held_records.TEXT_LIMIT
    assert count_of(db, "held_records") == 1


def test_one_key_in_two_conferences_of_one_listing_holds_back_every_conference(open_state):
    db = open_state()
    hold(db, "r1", "c1")
    hold(db, "r1", "c2")
    assert held_records.get(db, "r1").conference_id is None
    hold(db, "r1", "c1")  # for the rest of that listing
    assert keys(held_records.blocking(db, "c9")) == ["r1"]


def test_a_key_seen_twice_in_one_conference_of_a_listing_keeps_it(open_state):
    db = open_state()
    hold(db, "r1", "c1")
    hold(db, "r1", "c1")
    assert held_records.get(db, "r1").conference_id == "c1"


def test_a_record_that_changes_conference_between_listings_follows_it(open_state):
    db = open_state()
    hold(db, "r1", "c1", listing="L1")
    hold(db, "r1", "c2", listing="L2")
    assert held_records.get(db, "r1").conference_id == "c2"
    assert held_records.blocking(db, "c1") == []


def test_a_complete_listing_forgets_what_it_did_not_hold(open_state):
    db = open_state()
    hold(db, "r1", listing="L1")
    hold(db, "r2", listing="L1")
    hold(db, "r2", listing="L2")
    assert held_records.forget_unseen(db, "L2") == 1
    assert (held_records.get(db, "r1"), held_records.get(db, "r2").key) == (None, "r2")


def test_a_record_without_a_usable_id_is_named_by_a_digest_of_it(open_state):
    db = open_state()
    for _ in range(2):
        held_records.hold(db, {"id": 7, "subject": {}}, REJECTED, "unsafe id", "L1", 0.0)
    [record], total = held_records.listed(db, limit=10)
    assert (record.key.startswith("record-"), total) == (True, 1)


def test_listed_gives_the_oldest_first_up_to_the_limit_and_how_many_in_all(open_state):
    db = open_state()
    for key, now in (("r3", 0.0), ("r1", 1.0), ("r2", 1.0)):
        hold(db, key, now=now)
    held, total = held_records.listed(db, limit=2)
    assert (keys(held), total) == (["r3", "r1"], 3)


def test_counts_are_per_kind(open_state):
    db = open_state()
    assert held_records.counts(db) == {}
    hold(db, "r1", kind=REJECTED)
    hold(db, "r2", kind=IN_PROGRESS)
    hold(db, "r3", kind=IN_PROGRESS)
    assert held_records.counts(db) == {REJECTED: 1, IN_PROGRESS: 2}
