import pytest

from sync_worker.state import archives, insights
from sync_worker.state.db import open_database
from sync_worker.state.lifecycles import InsightState
from tests.records import archive_record
from tests.state_rows import row_of

pytestmark = pytest.mark.fast


def ledger_with(open_state, *archive_ids):
    return queued(open_state(), *archive_ids)


def queued(db, *archive_ids):
    """``db`` with an insight queued for each archive (contact 451)."""
    for archive_id in archive_ids:
        archives.note_listed(db, [archive_record(archive_id)], now=0.0)
        archives.mark_stored(db, archive_id, "/x.zip", 1, 1.0, [("p@example.org", "P")], None)
        insights.queue_insights(db, archive_id, "p@example.org", [(451, 50)])
    return db


def state_of(db, archive_id):
    return row_of(db, "insights", archive_id=archive_id, contact_id=451)["state"]


def test_retry_posts_an_unverified_insight_and_looks_before_reposting_others(open_state):
    db = ledger_with(open_state, "a1", "a2")
    insights.give_up(db, "a1", 451, "cannot tell", InsightState.UNVERIFIED)
    insights.give_up(db, "a2", 451, "HTTP 422")
    assert insights.retry_failed(db) == 2
    assert state_of(db, "a1") == "pending"  # an operator checked TE: post it
    assert state_of(db, "a2") == "sending"  # may have been posted: look first


def test_retry_of_one_archive_leaves_the_others_alone(open_state):
    db = ledger_with(open_state, "a1", "a2")
    insights.give_up(db, "a1", 451, "cannot tell", InsightState.UNVERIFIED)
    insights.give_up(db, "a2", 451, "cannot tell", InsightState.UNVERIFIED)
    assert insights.retry_failed(db, "a2") == 1
    assert (state_of(db, "a1"), state_of(db, "a2")) == ("unverified", "pending")


def test_a_sent_insight_may_have_no_te_id_and_learn_it_later(open_state):
    db = ledger_with(open_state, "a1")
    insights.mark_sent(db, "a1", 451, None, now=5.0)
    assert (
        state_of(db, "a1"),
        row_of(db, "insights", archive_id="a1", contact_id=451)["te_insight_id"],
    ) == ("sent", None)
    insights.set_te_insight_id(db, "a1", 451, 9001)
    assert row_of(db, "insights", archive_id="a1", contact_id=451)["te_insight_id"] == 9001


def test_insights_of_an_archive_abandoned_elsewhere_are_looked_for_first(open_state):
    db = open_state()
    archives.note_listed(db, [archive_record("rescued", status="ABANDONED")], now=0.0)
    archives.note_listed(db, [archive_record("ours"), archive_record("theirs")], now=0.0)
    archives.note_listed(db, [archive_record("theirs", status="ABANDONED")], now=1.0)
    for archive_id in ("rescued", "ours", "theirs"):
        archives.mark_stored(db, archive_id, "/x.zip", 1, 1.0, [("p@example.org", "P")], None)
        insights.queue_insights(db, archive_id, "p@example.org", [(451, 50)])
    assert [state_of(db, a) for a in ("rescued", "ours", "theirs")] == [
        "sending",  # first seen ABANDONED: a lost state file, say
        "pending",  # AVAILABLE until this worker stored it: nobody posted for it
        "sending",  # abandoned by another worker before this one stored it
    ]


def test_an_archive_listed_by_an_older_version_is_queued_as_before(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    open_database(path).close()
    old = sqlite3.connect(path)
    old.execute("alter table archives drop column first_seen_status")
    old.execute("pragma user_version = 0")  # as made before schema versions
    old.commit()
    old.close()
    db = open_database(path)
    assert db["archives"].columns_dict["first_seen_status"] is str
    assert state_of(queued(db, "a1"), "a1") == "pending"


def test_retry_matches_an_ambiguous_participant_again(open_state):
    db = open_state()
    archives.note_listed(db, [archive_record("a1")], now=0.0)
    archives.mark_stored(db, "a1", "/x.zip", 1, 1.0, [("p@example.org", "P")], None)
    insights.park_participant(db, "a1", "p@example.org", "more than 20 contacts")
    assert (
        row_of(db, "participants", archive_id="a1", email="p@example.org")["state"] == "ambiguous"
    )
    assert insights.open_participants(db) == []
    assert insights.retry_failed(db, "a1") == 1
    assert [row.email for row in insights.open_participants(db)] == ["p@example.org"]
