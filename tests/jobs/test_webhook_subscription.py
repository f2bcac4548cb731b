"""The webhook job against the sandbox Flexperto: registering, rotating and removing the
subscription, in both sandbox modes (the strict one answers no id, and has no DELETE)."""

from __future__ import annotations

import json

import pytest

from sync_worker.app.runner import run_pass
from sync_worker.config import load_config
from sync_worker.jobs.webhook_subscription import GRACE_SECONDS, accepted_secrets
from sync_worker.sandbox import Fault
from sync_worker.state import webhooks
from sync_worker.state.configured import open_state
from tests.conftest import write_config
from tests.state_rows import state_keys

pytestmark = pytest.mark.both_states

PUBLIC = "https://hooks.bank.example/flexperto"
DAY = 86400


@pytest.fixture
def hooked(sandbox, config, tmp_path):
    """``config`` (its state) with a webhook."""
    return load_config(
        write_config(
            tmp_path,
            sandbox,
            f'[webhook]\nlisten = "127.0.0.1:8787"\npublic_url = "{PUBLIC}"\nrotate_days = 30\n',
            state=state_keys(config.state),
        ),
        env={},
    )


def secret_of(url):
    return url.removeprefix(PUBLIC + "/")


def subscribe(config, clock):
    return run_pass(config, clock, jobs=["webhook"])


def subscribed_urls(sandbox):
    return sorted(s["url"] for s in sandbox.flexperto.webhooks.subscriptions().values())


def test_the_tenant_subscribes_once_at_a_secret_path(sandbox, hooked, clock, log_lines):
    assert subscribe(hooked, clock).exit_code == 0
    assert subscribe(hooked, clock).exit_code == 0
    [url] = subscribed_urls(sandbox)
    secret = secret_of(url)
    assert len(secret) >= 40 and "/" not in secret
    [topic] = [s["topic"] for s in sandbox.flexperto.webhooks.subscriptions().values()]
    assert topic == hooked.webhook.topic
    assert accepted_secrets(hooked, clock.now()) == [secret]
    assert secret not in json.dumps(log_lines())
    assert [e["event"] for e in log_lines()].count("webhook.registered") == 1


def test_the_secret_is_rotated_and_the_old_one_removed_after_the_grace(
    sandbox, hooked, clock, log_lines, sandbox_mode
):
    subscribe(hooked, clock)
    [old] = subscribed_urls(sandbox)
    clock.advance(30 * DAY)
    subscribe(hooked, clock)
    new = next(url for url in subscribed_urls(sandbox) if url != old)
    # in flight deliveries to the old path still count for a while
    assert sorted(accepted_secrets(hooked, clock.now())) == sorted([secret_of(old), secret_of(new)])
    clock.advance(GRACE_SECONDS + 1)
    subscribe(hooked, clock)
    assert accepted_secrets(hooked, clock.now()) == [secret_of(new)]
    events = [e["event"] for e in log_lines()]
    if sandbox_mode == "lenient":
        assert subscribed_urls(sandbox) == [new]
        assert "webhook.unsubscribed" in events
    else:  # no id in the answer: the operator is told to delete it by hand
        assert subscribed_urls(sandbox) == sorted([old, new])
        assert "webhook.unsubscribe_unknown" in events


def test_a_refused_registration_is_a_failure_and_polling_goes_on(sandbox, hooked, clock, log_lines):
    sandbox.add_fault("flexperto", Fault(path="/subscriptions/webhook", status=400, times=1))
    assert subscribe(hooked, clock).exit_code == 1
    assert [e["event"] for e in log_lines()].count("webhook.register_failed") == 1
    db = open_state(hooked.state)
    try:
        assert webhooks.current(db) is None
    finally:
        db.close()
    assert run_pass(hooked, clock).exit_code == 0  # the archives are claimed all the same
    assert subscribe(hooked, clock).exit_code == 0  # and the next try subscribes
    assert len(subscribed_urls(sandbox)) == 1


def test_a_secret_left_pending_by_a_crash_is_retired_not_lost(sandbox, hooked, clock):
    db = open_state(hooked.state)
    try:
        webhooks.prepare(db, "crashed-before-flexperto-answered", clock.now())
    finally:
        db.close()
    subscribe(hooked, clock)
    accepted = accepted_secrets(hooked, clock.now())
    assert "crashed-before-flexperto-answered" in accepted and len(accepted) == 2
    clock.advance(GRACE_SECONDS + 1)
    subscribe(hooked, clock)
    assert len(accepted_secrets(hooked, clock.now())) == 1


def test_without_a_listen_address_nothing_is_registered(sandbox, config, clock):
    assert run_pass(config, clock, jobs=["webhook"]).exit_code == 0
    assert subscribed_urls(sandbox) == []
    assert accepted_secrets(config, clock.now()) == []
