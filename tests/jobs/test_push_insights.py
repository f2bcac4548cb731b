"""The insight job against the sandbox TE: exactly once, and always inside the limits."""

import time
from dataclasses import replace

import pytest

from sync_worker.app.cli import main
from sync_worker.app.runner import run_pass
from sync_worker.config import load_config
from sync_worker.sandbox import LENIENT, Fault
from sync_worker.sandbox.worker_process import run_worker
from sync_worker.state.db import open_database
from tests.jobs.declared_moves import record_state_moves, undeclared_state_moves
from tests.state_rows import rows_in, spend_token_requests


def wait_until(condition, seconds=5.0):
    """Wait (really) for the sandbox to finish a request it was told to delay."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def insight_rows(config):
    return rows_in(config.state, "insights", "archive_id, contact_id")


def per_archive_and_contact(sandbox):
    return [
        (i["data"]["flexperto_archive_id"], i["contact_id"]) for i in sandbox.totalexpert.insights()
    ]


@pytest.mark.both_states
def test_lost_answer_to_a_post_does_not_double_the_insight(
    sandbox, config, tmp_path, clock, log_lines
):
    # The POST is handled by TE but the answer comes too late for the client.
    fast = tmp_path / "config.toml"  # config's, naming its state
    text = fast.read_text().replace("timeout_seconds = 5", "timeout_seconds = 1")
    fast.write_text(text)
    config = load_config(fast, env={})
    sandbox.add_fault(
        "te", Fault(method="POST", path="/insights", action="delay", delay=2.5, times=1)
    )
    first = run_pass(config, clock)
    assert first.exit_code == 1
    assert any(r["state"] == "sending" for r in insight_rows(config))
    wait_until(lambda: len(sandbox.totalexpert.insights()) == 1)
    clock.advance(config.retry.backoff_seconds)
    assert run_pass(config, clock).exit_code == 0
    keys = per_archive_and_contact(sandbox)
    assert len(keys) == len(set(keys)) == 4  # 3 + the archive that was PACKING in pass 1
    assert any(e["event"] == "insight.sent" and e.get("recovered") for e in log_lines())


@pytest.mark.both_states
def test_token_is_shared_by_two_processes(sandbox, config, tmp_path):
    config_file = tmp_path / "config.toml"
    for _ in range(2):
        run_worker("run-once", config=config_file, timeout=60)
    assert sandbox.totalexpert.tokens_issued == 1
    assert len(sandbox.totalexpert.insights()) >= 3


@pytest.mark.both_states
def test_rejected_token_is_replaced_once(sandbox, run):
    run()
    sandbox.totalexpert.revoke_tokens()
    sandbox.flexperto.add_archive(
        status="AVAILABLE",
        moderator={"account_id": "e-1", "email": "anna.expert@bank.example", "name": "Anna"},
        participants=[{"account_id": "p", "email": "lena.lang@example.org", "name": "Lena"}],
    )
    assert run().exit_code == 0
    assert sandbox.totalexpert.tokens_issued == 2


@pytest.mark.both_states
def test_spent_token_budget_leaves_the_work_for_later(sandbox, config, run, clock, log_lines):
    sandbox.totalexpert.revoke_tokens()
    spend_token_requests(config, clock.now() - 10)  # as another process did
    result = run()
    assert result.exit_code == 0
    assert sandbox.totalexpert.token_requests == 0
    assert sandbox.totalexpert.insights() == []
    assert any(e["event"] == "te.token_budget_exhausted" for e in log_lines())
    clock.advance(3600)
    run()  # also claims the archive that was PACKING during the first pass
    assert len(sandbox.totalexpert.insights()) == 4


@pytest.mark.both_states
def test_unknown_contact_is_parked_with_te_reason(sandbox, config, run, log_lines):
    reason = "Unable to find target for relationship: 'contact'"
    sandbox.add_fault(
        "te", Fault(method="POST", path="/insights", status=422, body=f'{{"error": "{reason}"}}')
    )
    result = run()
    assert result.exit_code == 1
    parked = [r for r in insight_rows(config) if r["state"] == "given_up"]
    assert len(parked) == 1 and "Unable to find target" in parked[0]["last_error"]
    assert len(sandbox.totalexpert.insights()) == 2


@pytest.mark.both_states
def test_limits_hold_with_a_small_per_minute_budget(sandbox, config, tmp_path, clock):
    sandbox.totalexpert.set_limits(requests_per_minute=5)
    for n in range(6):
        sandbox.flexperto.add_archive(
            status="AVAILABLE",
            moderator={"account_id": "e-1", "email": "anna.expert@bank.example", "name": "Anna"},
            participants=[{"account_id": "p", "email": "lena.lang@example.org", "name": f"L{n}"}],
        )
    path = tmp_path / "config.toml"  # config's, naming its state
    path.write_text(
        path.read_text().replace("requests_per_minute = 1000", "requests_per_minute = 5")
    )
    config = load_config(path, env={})
    assert run_pass(config, clock).exit_code == 0
    te = sandbox.totalexpert
    assert te.rate_limited_count == 0
    assert te.max_requests_in_window(60) <= 5
    assert te.max_token_requests_in_window(3600) <= 2
    assert len(te.insights()) == 9


def test_an_answer_without_an_id_still_counts_and_the_id_is_looked_up(sandbox_in, clock):
    sandbox, config = sandbox_in(replace(LENIENT, te_insight_answer_id=False))
    assert run_pass(config, clock).exit_code == 0
    in_te = {
        (i["data"]["flexperto_archive_id"], i["contact_id"]): i["id"]
        for i in sandbox.totalexpert.insights()
    }
    db = open_database(config.state.database)
    ledger = {(r["archive_id"], r["contact_id"]): r["te_insight_id"] for r in db["insights"].rows}
    assert ledger == in_te and len(in_te) == 3


def test_an_unanswered_post_is_parked_when_te_lists_insights_without_their_data(
    sandbox_in, clock, tmp_path, log_lines
):
    sandbox, config = sandbox_in(replace(LENIENT, te_insight_data_listed=False))
    run_pass(config, clock)  # Lena's contact has an insight now, listed without its data
    meeting = sandbox.flexperto.add_archive(
        status="AVAILABLE",
        moderator={"account_id": "e-1", "email": "anna.expert@bank.example", "name": "Anna"},
        participants=[{"account_id": "p", "email": "lena.lang@example.org", "name": "Lena"}],
    )
    sandbox.add_fault("te", Fault(method="POST", path="/insights$", status=502, times=1))
    assert run_pass(config, clock).exit_code == 1  # the POST's outcome is unknown
    clock.advance(config.retry.max_backoff_seconds)
    posts_before = len([r for r in sandbox.totalexpert.requests if r.method == "POST"])
    run_pass(config, clock)
    db = open_database(config.state.database)
    [row] = [r for r in db["insights"].rows if r["archive_id"] == meeting["id"]]
    assert row["state"] == "unverified" and "Check in TE" in row["last_error"]
    assert len([r for r in sandbox.totalexpert.requests if r.method == "POST"]) == posts_before
    assert any(e["event"] == "item.given_up" for e in log_lines())

    # the operator finds it missing in TE and retries: it is posted, once
    assert main(["--config", str(tmp_path / "config.toml"), "retry", meeting["id"]]) == 0
    run_pass(config, clock)
    sent = [
        i
        for i in sandbox.totalexpert.insights()
        if i["data"]["flexperto_archive_id"] == meeting["id"]
    ]
    assert len(sent) == 1
    assert db["insights"].get((meeting["id"], row["contact_id"]))["state"] == "sent"


@pytest.fixture(autouse=True)
def _declared_moves(config):
    """Every creation and move of an item in these tests is one its lifecycle declares."""
    record_state_moves(config.state)
    yield
    assert undeclared_state_moves(config.state) == []
