import pytest

from sync_worker.state import archives, audits
from sync_worker.state.audits import Stored
from tests.records import archive_record
from tests.state_rows import row_of

pytestmark = pytest.mark.fast

SHA = "b" * 64


def stored(db, *archive_ids):
    for archive_id in archive_ids:
        archives.note_listed(db, [archive_record(archive_id, "c1", sha256=SHA)], now=0.0)
        archives.mark_stored(db, archive_id, f"/x/{archive_id}.zip", 1, 1.0, [], None)


def ids(items):
    return [item.archive_id for item in items]


def test_a_stored_archive_is_due_for_audit_at_once(open_state):
    db = open_state()
    stored(db, "a1")
    archives.note_listed(db, [archive_record("listed")], now=0.0)
    assert audits.least_recently_audited(db, 10) == [Stored("a1", "c1", "/x/a1.zip", SHA)]
    assert audits.count(db) == 1


def test_the_least_recently_audited_come_first_never_audited_before_all(open_state):
    db = open_state()
    stored(db, "a1", "a2", "a3", "a4")
    audits.note(db, "a1", audits.OK, "", now=5.0)
    audits.note(db, "a3", audits.OK, "", now=3.0)
    assert ids(audits.least_recently_audited(db, 3)) == ["a2", "a4", "a3"]


def test_storing_again_keeps_the_last_audit(open_state):
    db = open_state()
    stored(db, "a1")
    audits.note(db, "a1", audits.OK, "", now=5.0)
    archives.mark_stored(db, "a1", "/x/a1.zip", 1, 6.0, [], None)
    assert row_of(db, "audits", archive_id="a1")["audited_at"] == 5.0


def test_every_stored_pages_through_all_of_them_once(open_state, monkeypatch):
    monkeypatch.setattr(audits, "PAGE", 2)
    db = open_state()
    stored(db, "a3", "a1", "a5", "a2", "a4")
    assert ids(audits.every_stored(db)) == ["a1", "a2", "a3", "a4", "a5"]


def test_every_stored_ends_after_a_last_full_page(open_state, monkeypatch):
    monkeypatch.setattr(audits, "PAGE", 2)
    db = open_state()
    stored(db, "a1", "a2", "a3", "a4")
    assert ids(audits.every_stored(db)) == ["a1", "a2", "a3", "a4"]


def test_note_keeps_the_result_and_a_cut_detail(open_state):
    db = open_state()
    stored(db, "a1")
    audits.note(db, "a1", audits.MISMATCH, "sha256 " + "c" * 1000, now=7.0)
    row = row_of(db, "audits", archive_id="a1")
    assert (row["audited_at"], row["result"], len(row["detail"])) == (7.0, "mismatch", 500)
