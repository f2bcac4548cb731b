"""Failures that would look healthy: rejected credentials, a missing insight type and a spent
token budget are recorded as what blocks insights, shown by status and the metrics, and
cleared when insights flow again; rejected credentials are not tried every pass."""

import io
import json
from datetime import UTC, datetime

import pytest

from sync_worker.app.runner import run_pass
from sync_worker.config import load_config
from sync_worker.ops import metrics, status
from sync_worker.state.configured import open_state
from tests.conftest import write_config
from tests.state_rows import spend_token_requests, state_keys

pytestmark = pytest.mark.both_states

HOUR = 3600.0


def config_with(tmp_path, sandbox, config, old="", new=""):
    """The config of the sandbox on ``config``'s state, ``old`` replaced by ``new``."""
    path = write_config(tmp_path, sandbox, state=state_keys(config.state))
    path.write_text(path.read_text().replace(old, new))
    return load_config(path, env={})


def blocked(config, clock, reason):
    registry = metrics.registry_for([config], clock)
    return registry.get_sample_value(
        "sync_worker_insights_blocked", {"tenant": "", "reason": reason}
    )


def table(config):
    db = open_state(config.state)
    try:
        return status.render_table(db)
    finally:
        db.close()


def iso(moment):
    return datetime.fromtimestamp(moment, UTC).isoformat()


def test_a_wrong_secret_blocks_insights_names_the_cause_and_is_tried_once_an_hour(
    sandbox, config, tmp_path, clock, log_lines
):
    secret = sandbox.client_secret
    wrong = config_with(tmp_path, sandbox, config, secret, "not-" + secret)
    started = clock.now()
    assert run_pass(wrong, clock).exit_code == 1
    assert sandbox.totalexpert.token_requests == 1
    events = log_lines()
    [block] = [e for e in events if e["event"] == "te.insights_blocked"]
    assert block["reason"] == "credentials rejected (400 invalid_client)"
    assert not [e for e in events if "insight type" in str(e) or e.get("kind") == "insight_type"]
    assert table(wrong).splitlines()[0] == (
        f"Insights blocked since {iso(started)} because credentials rejected (400 "
        f"invalid_client); not tried again before {iso(started + HOUR)} unless the "
        "credentials change"
    )
    assert blocked(wrong, clock, "credentials") == 1
    assert blocked(wrong, clock, "insight_type") == 0
    since = metrics.registry_for([wrong], clock).get_sample_value(
        "sync_worker_insights_blocked_since_timestamp_seconds", {"tenant": ""}
    )
    assert since == started

    for _ in range(3):  # passes within the hour spend no token request
        clock.advance(600)
        assert run_pass(wrong, clock).exit_code == 1
    assert sandbox.totalexpert.token_requests == 1
    clock.advance(HOUR)
    assert run_pass(wrong, clock).exit_code == 1  # an hour on: tried once more
    assert sandbox.totalexpert.token_requests == 2
    assert f"Insights blocked since {iso(started)} because" in table(wrong)  # still since then

    right = config_with(tmp_path, sandbox, config)
    assert run_pass(right, clock).exit_code == 0  # corrected: tried at once
    assert sandbox.totalexpert.token_requests == 3
    assert len(sandbox.totalexpert.insights()) >= 3
    assert "Insights blocked" not in table(right)
    assert blocked(right, clock, "credentials") == 0
    assert any(e["event"] == "te.insights_unblocked" for e in log_lines())


def test_a_missing_insight_type_blocks_insights_until_it_exists(
    sandbox, config, tmp_path, clock, log_lines
):
    config = config_with(
        tmp_path, sandbox, config, 'insight_type = "', 'insight_type = "Conference archived v2'
    )
    name = config.totalexpert.insight_type
    assert run_pass(config, clock).exit_code == 1
    assert f'because insight type "{name}" not found' in table(config)
    assert blocked(config, clock, "insight_type") == 1
    sandbox.totalexpert.add_insight_type(name)
    clock.advance(600)
    assert run_pass(config, clock).exit_code == 0
    assert "Insights blocked" not in table(config)
    assert blocked(config, clock, "insight_type") == 0


def test_a_spent_token_budget_is_shown_until_insights_flow(sandbox, config, run, clock):
    sandbox.totalexpert.revoke_tokens()
    spend_token_requests(config, clock.now() - 10)  # as another process did
    run()
    until = iso(clock.now() - 10 + 3601.0)
    assert f"because token budget spent until {until}" in table(config)
    assert blocked(config, clock, "token_budget") == 1
    clock.advance(HOUR)
    assert run().exit_code == 0
    assert "Insights blocked" not in table(config)
    assert blocked(config, clock, "token_budget") == 0


def test_credentials_rejected_mid_pass_charge_no_participant(sandbox, config, tmp_path, clock, run):
    assert run().exit_code == 0  # the insight type is kept: the first call is a contact's
    clock.advance(HOUR + 60)  # the token has expired, the hour's token requests are back
    sandbox.flexperto.add_archive(
        status="AVAILABLE",
        participants=[{"account_id": "p", "email": "lena.lang@example.org", "name": "Lena"}],
    )
    secret = sandbox.client_secret
    wrong = config_with(tmp_path, sandbox, config, secret, "not-" + secret)
    before = sandbox.totalexpert.token_requests
    assert run_pass(wrong, clock).exit_code == 1
    assert sandbox.totalexpert.token_requests == before + 1  # no look-up asks again
    db = open_state(wrong.state)
    try:
        charged = db.execute("select count(*) from participants where attempts > 0").fetchone()[0]
    finally:
        db.close()
    assert charged == 0
    assert "because credentials rejected (400 invalid_client)" in table(wrong)


def test_status_json_carries_the_block(sandbox, config, tmp_path, clock):
    secret = sandbox.client_secret
    wrong = config_with(tmp_path, sandbox, config, secret, "not-" + secret)
    run_pass(wrong, clock)
    out = io.StringIO()
    db = open_state(wrong.state)
    try:
        status.write_json(db, out)
    finally:
        db.close()
    assert json.loads(out.getvalue())["insights_blocked"] == {
        "kind": "credentials",
        "reason": "credentials rejected (400 invalid_client)",
        "since": iso(clock.now()),
        "next_try_at": iso(clock.now() + HOUR),
    }
