"""Full passes against the sandbox over real HTTP with a real SQLite file."""

import hashlib
import json

from sync_worker.core.locks import job_lock
from sync_worker.state.db import open_database


def sha256_of(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def available_ids(sandbox):
    return [r["id"] for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE"]


def test_full_pass_stores_verifies_abandons_and_pushes_insights(sandbox, config, run):
    expected = available_ids(sandbox)
    assert len(expected) == 3
    result = run()
    assert result.exit_code == 0
    db = open_database(config.state.database)
    for archive_id in expected:
        row = db["archives"].get(archive_id)
        record = sandbox.flexperto.record(archive_id)
        assert row["state"] == "claimed"
        path = config.storage.archive_dir / record["subject"]["conference_id"] / f"{archive_id}.zip"
        assert str(path) == row["path"]
        assert sha256_of(path) == record["sha256CheckSum"]
        assert json.loads(path.with_suffix(".json").read_text())["id"] == archive_id
        assert record["status"] == "ABANDONED"
    created = sandbox.totalexpert.insights()
    assert len(created) == 3
    for insight in created:
        assert insight["data"]["flexperto_archive_id"] in expected
        assert insight["data"]["description"].startswith("Video conference with ")
    assert sandbox.s3.api_key_rejections == 0


def test_moderators_own_contact_is_preferred_and_unknown_participants_are_no_match(
    sandbox, config, run
):
    run()
    te = sandbox.totalexpert
    anna = next(u for u in te.users() if u["email"] == "anna.expert@bank.example")
    max_contacts = [c for c in te.contacts() if c["email"] == "max.kunde@example.org"]
    assert len(max_contacts) == 2
    to_max = [i for i in te.insights() if i["contact_id"] in {c["id"] for c in max_contacts}]
    assert len(to_max) == 1
    chosen = next(c for c in max_contacts if c["id"] == to_max[0]["contact_id"])
    assert chosen["owner"]["id"] == anna["id"] == to_max[0]["owner_id"]
    db = open_database(config.state.database)
    states = {r["email"]: r["state"] for r in db["participants"].rows}
    assert states["nobody@nowhere.example"] == "no_match"


def test_insight_fields(sandbox, config, run):
    run()
    record = next(
        r
        for r in sandbox.flexperto.records()
        if r["subject"]["moderator"]["email"] == "bernd.berater@bank.example"
    )
    [insight] = [
        i
        for i in sandbox.totalexpert.insights()
        if i["data"]["flexperto_archive_id"] == record["id"]
    ]
    end = record["subject"]["end"].replace("T", " ").removesuffix("Z")
    assert insight["insight_date"] == end[:19]
    assert insight["data"]["flexperto_conference_id"] == record["subject"]["conference_id"]
    assert "Bernd Berater" in insight["data"]["description"]
    assert "UTC archived (archive " in insight["data"]["description"]


def test_packing_archive_is_claimed_on_a_later_pass_and_then_nothing_is_done(sandbox, config, run):
    run()
    run()  # the PACKING archive has become AVAILABLE
    assert len(sandbox.totalexpert.insights()) == 4
    sandbox.flexperto.clear_requests()
    sandbox.s3.clear_requests()
    sandbox.totalexpert.clear_requests()
    result = run()
    assert result.exit_code == 0
    assert {r.method for r in sandbox.flexperto.requests} == {"GET"}
    assert all(
        r.path.endswith("/communication/conferences/archives") for r in sandbox.flexperto.requests
    )
    assert sandbox.s3.requests == []
    assert sandbox.totalexpert.requests == []


def test_token_is_requested_once_and_reused_across_passes(sandbox, run):
    run()
    run()
    assert sandbox.totalexpert.tokens_issued == 1


def test_a_held_lock_makes_the_second_run_step_aside(sandbox, config, run, log_lines):
    with job_lock(config.state.database, "archives"):
        result = run()
    assert result.locked_out and result.exit_code == 0
    assert sandbox.flexperto.requests == []
    assert any(e["event"] == "run.skipped" for e in log_lines())


def test_summary_event_counts_the_pass(sandbox, run, log_lines):
    run()
    [summary] = [e for e in log_lines() if e["event"] == "run.finished"]
    assert summary["outcomes"]["stored"] == 3
    assert summary["outcomes"]["abandoned"] == 3
    assert summary["outcomes"]["sent"] == 3
    assert summary["outcomes"]["no_match"] == 1
    assert summary["bytes_downloaded"] > 0
    assert summary["te_tokens_requested"] == 1
    assert summary["te_requests"] == len(sandbox.totalexpert.requests)
