import pytest

from sync_worker.adapters.flexperto.records import parse_record
from sync_worker.state import archives, audits, insights, reports
from sync_worker.state.lifecycles import ARCHIVE_ON_FAILURE, InsightState
from sync_worker.state.work_items import note_failure
from tests.records import archive_record

pytestmark = pytest.mark.fast


class Policy:
    max_attempts = 5
    backoff_seconds = 10.0
    max_backoff_seconds = 60.0


def stored(db, archive_id, first_seen=0.0, participants=(), record=None):
    """``archive_id`` listed at ``first_seen`` and stored a second later."""
    archives.note_listed(db, [record or archive_record(archive_id)], now=first_seen)
    people = [(email, "P") for email in participants]
    archives.mark_stored(db, archive_id, f"/x/{archive_id}.zip", 10, first_seen + 1, people, None)


def ids(rows):
    return [row["archive_id"] for row in rows]


def test_counts_give_archives_per_state_and_participants_without_insight_by_state(open_state):
    db = open_state()
    archives.note_listed(db, [archive_record("a1")], now=0.0)
    stored(db, "a2", participants=("p@x.org", "q@x.org", "r@x.org"))
    insights.queue_insights(db, "a2", "p@x.org", [(451, 50)])
    insights.park_participant(db, "a2", "q@x.org", "more than 20 contacts")
    assert reports.counts(db) == {
        "archives": {"pending": 1, "stored": 1},
        # the queued insight and r@x.org, not matched yet; p@x.org, matched, is not counted
        "insights": {"pending": 2, "ambiguous": 1},
    }


def test_failing_lists_items_with_an_error_oldest_archive_first_and_counts_them_all(open_state):
    db = open_state()
    stored(db, "a2", first_seen=5.0, participants=("p@x.org", "q@x.org"))
    insights.queue_insights(db, "a2", "p@x.org", [(451, 50)])
    insights.give_up(db, "a2", 451, "HTTP 422")
    insights.park_participant(db, "a2", "q@x.org", "more than 20 contacts")
    archives.note_listed(db, [archive_record("a1"), archive_record("fine")], now=0.0)
    note_failure(db, "archives", {"archive_id": "a1"}, "boom", 1.0, Policy(), ARCHIVE_ON_FAILURE)
    rows, total = reports.failing(db, limit=2)
    assert total == 3
    assert [(r["archive_id"], r["item"], r["state"], r["last_error"]) for r in rows] == [
        ("a1", "archive", "failed", "boom"),
        ("a2", "insight p@x.org", "given_up", "HTTP 422"),
    ]


def test_archives_with_insights_pages_through_every_archive_oldest_first(open_state, monkeypatch):
    monkeypatch.setattr(reports, "PAGE", 2)
    db = open_state()
    # a tie of first_seen_at across a page's end is ordered by archive_id
    for archive_id, first_seen in (("a0", 3.0), ("a1", 1.0), ("a2", 1.0), ("a3", 1.0)):
        archives.note_listed(db, [archive_record(archive_id)], now=first_seen)
    stored(db, "a4", participants=("p@x.org",))
    insights.queue_insights(db, "a4", "p@x.org", [(451, 50)])
    rows = list(reports.archives_with_insights(db))
    assert ids(rows) == ["a4", "a1", "a2", "a3", "a0"]
    assert [outcome["contact_id"] for outcome in rows[0]["insights"]] == [451]
    assert all(row["insights"] == [] for row in rows[1:])


def test_archives_with_insights_filters_by_state_and_age_up_to_the_limit(open_state, monkeypatch):
    monkeypatch.setattr(reports, "PAGE", 2)
    db = open_state()
    for n in range(6):
        stored(db, f"s{n}", first_seen=float(n))
    archives.note_listed(db, [archive_record("pending")], now=2.0)
    rows = reports.archives_with_insights(db, states=("stored",), since=1.0, limit=3)
    assert ids(rows) == ["s1", "s2", "s3"]
    assert ids(reports.archives_with_insights(db, states=("pending",))) == ["pending"]


def test_an_archive_shows_its_insights_and_the_participants_that_got_none(open_state):
    db = open_state()
    stored(db, "a1", participants=("p@x.org", "q@x.org", "r@x.org"))
    insights.queue_insights(db, "a1", "p@x.org", [(451, 50), (452, 50)])
    insights.mark_sent(db, "a1", 452, 9001, now=5.0)
    insights.queue_insights(db, "a1", "q@x.org", [])
    [row] = reports.archives_with_insights(db)
    assert (row["state"], row["path"], row["size"]) == ("stored", "/x/a1.zip", 10)
    assert [
        (o["email"], o["contact_id"], o["state"], o["te_insight_id"]) for o in row["insights"]
    ] == [
        # the participants that got no insight, then the insights
        ("q@x.org", None, "no_match", None),
        ("r@x.org", None, "pending", None),
        ("p@x.org", 451, InsightState.PENDING, None),
        ("p@x.org", 452, InsightState.SENT, 9001),
    ]


def test_manifest_pages_through_stored_and_claimed_archives_only(open_state, monkeypatch):
    monkeypatch.setattr(reports, "PAGE", 2)
    db = open_state()
    for n in range(4):
        stored(db, f"s{n}", first_seen=float(n))
    archives.mark_claimed(db, "s2", now=9.0)
    archives.note_listed(db, [archive_record("pending")], now=1.5)
    rows = list(reports.manifest(db))
    assert ids(rows) == ["s0", "s1", "s2", "s3"]
    assert [row["abandoned_at"] for row in rows] == [None, None, 9.0, None]
    assert all(set(row) == set(reports.MANIFEST_FIELDS) for row in rows)


def test_manifest_says_what_an_archive_was_where_it_is_and_its_last_audit(open_state):
    db = open_state()
    subject = {
        "conference_id": "c7",
        "start": "2024-05-01T10:00:00+02:00",
        "moderator": {"email": "M@x.org", "name": "M"},
        "participants": [],
    }
    raw = {"id": "a1", "status": "AVAILABLE", "sha256CheckSum": "a" * 64, "subject": subject}
    stored(db, "a1", participants=("p@x.org", "q@x.org"), record=parse_record(raw))
    insights.queue_insights(db, "a1", "p@x.org", [(451, 50), (452, 50)])
    insights.mark_sent(db, "a1", 452, 7, now=2.0)
    insights.mark_sent(db, "a1", 451, 8, now=2.0)
    stored(db, "a2")
    audits.note(db, "a1", audits.OK, "", now=3.0)
    first, second = reports.manifest(db)
    assert first == {
        "archive_id": "a1",
        "conference_id": "c7",
        "start": "2024-05-01T08:00:00+00:00",
        "end": None,
        "moderator": "m@x.org",
        "participants": 2,
        "size": 10,
        "sha256": "a" * 64,
        "stored_at": 1.0,
        "abandoned_at": None,
        "location": "/x/a1.zip",
        "last_audit_at": 3.0,
        "last_audit_result": "ok",
        "te_insight_ids": [7, 8],
    }
    assert (second["last_audit_at"], second["last_audit_result"]) == (None, None)


def test_manifest_since_keeps_archives_stored_at_or_after_it(open_state):
    db = open_state()
    for n in range(3):
        stored(db, f"s{n}", first_seen=float(n))  # stored at n + 1
    assert ids(reports.manifest(db, since=2.0)) == ["s1", "s2"]
