import pytest

from sync_worker.state import directory
from tests.state_rows import count_of, row_of, rows_of

pytestmark = pytest.mark.fast


def contact(contact_id, email="a@example.org", owner_id=1):
    return {"contact_id": contact_id, "email": email, "owner_id": owner_id}


def test_stored_rows_remember_when_they_were_seen(open_state):
    db = open_state()
    directory.upsert_contacts(db, [contact(1)], now=10.0)
    directory.upsert_users(db, [{"user_id": 5, "email": "u@example.org"}], now=11.0)
    assert row_of(db, "te_contacts", contact_id=1)["seen_at"] == 10.0
    assert row_of(db, "te_users", user_id=5)["seen_at"] == 11.0
    directory.upsert_contacts(db, [contact(1, owner_id=2)], now=20.0)
    assert (
        row_of(db, "te_contacts", contact_id=1)["owner_id"],
        row_of(db, "te_contacts", contact_id=1)["seen_at"],
    ) == (2, 20)


def test_drop_unseen_drops_what_a_full_read_did_not_show(open_state):
    db = open_state()
    directory.replace_contacts_of(db, "gone@example.org", [contact(1, "gone@example.org")], 5.0)
    directory.upsert_contacts(db, [contact(2, "kept@example.org")], now=5.0)
    directory.upsert_users(db, [{"user_id": 7, "email": "old@example.org"}], now=5.0)
    # a full read starting at 10 shows contact 2 only
    directory.upsert_contacts(db, [contact(2, "kept@example.org")], now=10.0)
    assert directory.drop_unseen(db, since=10.0) == 2  # contact 1 and user 7
    assert [r["contact_id"] for r in rows_of(db, "te_contacts", "contact_id")] == [2]
    assert count_of(db, "te_users") == 0
    assert not directory.looked_up_since(db, "gone@example.org", "contact", 0.0)


def test_replace_contacts_of_an_address_records_the_lookup(open_state):
    db = open_state()
    directory.replace_contacts_of(db, "A@example.org", [contact(1)], now=3.0)
    assert directory.looked_up_since(db, "a@example.org", "contact", 3.0)
    directory.replace_contacts_of(db, "a@example.org", [], now=4.0)
    assert directory.contacts_by_email(db, "a@example.org") == []
    assert directory.contact_lookups_since(db, 0.0) == 1
