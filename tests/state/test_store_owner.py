import pytest

from sync_worker.state import store_owner
from tests.state_rows import count_of

pytestmark = pytest.mark.fast


def test_the_state_id_is_made_on_first_use_and_kept(open_state):
    db = open_state()
    assert count_of(db, "state_identity") == 0
    made = store_owner.state_id(db)
    assert len(made) == 32
    assert store_owner.state_id(db) == made


def test_every_connection_to_the_state_finds_the_same_id(open_state):
    first = store_owner.state_id(open_state())
    assert store_owner.state_id(open_state()) == first
    assert count_of(open_state(), "state_identity") == 1


def test_an_id_made_by_another_process_meanwhile_is_the_one_used(open_state, monkeypatch):
    db, other = open_state(), open_state()
    real = store_owner._state_id

    def look_then_lose_the_race(looking):
        monkeypatch.setattr(store_owner, "_state_id", real)
        other.execute("insert into state_identity (id, state_id) values (1, ?)", ["theirs"])
        return None  # found nothing, just before the other process made its id

    monkeypatch.setattr(store_owner, "_state_id", look_then_lose_the_race)
    assert store_owner.state_id(db) == "theirs"
    assert count_of(db, "state_identity") == 1
