import pytest

from sync_worker.state import webhooks
from tests.state_rows import row_of

pytestmark = pytest.mark.fast


def registered(db, secret, subscription_id, now):
    webhooks.prepare(db, secret, now)
    webhooks.confirm(db, secret, subscription_id, now)


def test_a_secret_written_down_is_pending_and_not_yet_current(open_state):
    db = open_state()
    webhooks.prepare(db, "s1", now=1.0)
    assert webhooks.current(db) is None
    assert row_of(db, "webhook_secrets", secret="s1")["pending"] == 1
    assert webhooks.accepted(db, now=2.0, grace=10.0) == ["s1"]


def test_a_confirmed_secret_is_current_with_its_subscription(open_state):
    db = open_state()
    registered(db, "s1", "sub1", now=1.0)
    assert webhooks.current(db) == webhooks.Secret("s1", "sub1", 1.0, False, None)


def test_confirming_a_new_secret_retires_the_others(open_state):
    db = open_state()
    registered(db, "s1", "sub1", now=1.0)
    webhooks.prepare(db, "s2", now=2.0)
    assert webhooks.current(db).secret == "s1"  # until Flexperto accepts the new one
    webhooks.confirm(db, "s2", "sub2", now=3.0)
    assert webhooks.current(db).secret == "s2"
    assert row_of(db, "webhook_secrets", secret="s1")["retired_at"] == 3.0


def test_writing_a_secret_down_retires_one_left_pending_by_a_crash(open_state):
    db = open_state()
    webhooks.prepare(db, "s1", now=1.0)
    webhooks.prepare(db, "s2", now=2.0)
    assert row_of(db, "webhook_secrets", secret="s1")["retired_at"] == 2.0
    assert row_of(db, "webhook_secrets", secret="s2")["retired_at"] is None


def test_a_retired_secret_is_accepted_for_the_grace_period_then_expires(open_state):
    db = open_state()
    registered(db, "s1", "sub1", now=1.0)
    webhooks.retire(db, "s1", now=10.0)
    assert webhooks.current(db) is None
    assert (webhooks.accepted(db, 19.0, 10.0), webhooks.expired(db, 19.0, 10.0)) == (["s1"], [])
    assert webhooks.accepted(db, now=20.0, grace=10.0) == []
    assert webhooks.expired(db, now=20.0, grace=10.0) == [
        webhooks.Secret("s1", "sub1", 1.0, False, 10.0)
    ]


def test_a_forgotten_secret_is_gone(open_state):
    db = open_state()
    registered(db, "s1", "sub1", now=1.0)
    webhooks.retire(db, "s1", now=2.0)
    webhooks.forget(db, "s1")
    assert (webhooks.accepted(db, 2.0, 10.0), webhooks.expired(db, 99.0, 10.0)) == ([], [])
    assert row_of(db, "webhook_secrets", secret="s1") is None
