"""Several tenants in one worker: each with its own Flexperto, archive folder and state
file, all on one Total Expert whose limit they share, fairly, without a 429."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from sync_worker.app.runner import run_passes
from sync_worker.config import load_tenants
from sync_worker.sandbox import Sandbox, tenants_toml
from sync_worker.sandbox.seed import ANNA, BERND, ERIKA, MAX
from sync_worker.sandbox.worker_process import run_worker
from sync_worker.state import pass_history
from sync_worker.state.db import open_database
from tests.conftest import TEST_SETTINGS


@pytest.fixture
def two_sandboxes(tmp_path, clock):
    """Tenant a: the seeded sandbox, whose TE both use; tenant b: a Flexperto of its own."""
    a = Sandbox(tmp_path / "sandbox-a", clock=clock).start()
    b = Sandbox(tmp_path / "sandbox-b", clock=clock, seed=False).start()
    yield a, b
    a.stop()
    b.stop()


def write(folder: Path, text: str) -> Path:
    path = folder / "config.toml"
    path.write_text(text)
    path.chmod(0o600)  # it holds the sandboxes' secrets
    return path


def test_two_tenants_pass_side_by_side_each_in_its_own_files_and_log_fields(
    two_sandboxes, tmp_path, clock, log_lines
):
    a, b = two_sandboxes
    for moderator, participant in ((ANNA, MAX), (BERND, ERIKA)):
        b.flexperto.add_archive(moderator=moderator, participants=[participant])
    configs = load_tenants(
        write(tmp_path, tenants_toml(a, {"a": a, "b": b}) + TEST_SETTINGS), env={}
    )
    assert [result.exit_code for result in run_passes(configs, clock)] == [0, 0]

    for name, box in (("a", a), ("b", b)):
        db = open_database(tmp_path / name / "state.db")
        stored = {row["archive_id"] for row in db["archives"].rows if row["state"] == "claimed"}
        available = {r["id"] for r in box.flexperto.records() if r["status"] == "ABANDONED"}
        assert stored == available and stored
        assert {p.stem for p in (tmp_path / name / "archives").rglob("*.zip")} == stored
        [kept] = pass_history.passes(db)  # the pass, in the tenant's own history
        assert (kept.tenant, kept.outcome) == (name, "ok")
    assert len(a.totalexpert.insights()) == 3 + 2
    assert a.totalexpert.rate_limited_count == 0

    events = log_lines()
    of_passes = [e for e in events if e["event"] not in ("daemon.started",)]
    assert all(e.get("tenant") in ("a", "b") for e in of_passes), of_passes
    downloaded = [e for e in events if e["event"] == "archive.downloaded"]
    assert {e["tenant"] for e in downloaded} == {"a", "b"}  # also from the download threads


def test_a_single_tenant_config_logs_no_tenant_field(sandbox, config, run, log_lines):
    run()
    assert all("tenant" not in event for event in log_lines())


BACKLOG_A, BACKLOG_B, LIMIT = 6, 1, 12


def at_time(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def at(event: dict) -> float:
    return at_time(event["timestamp"])


def test_a_big_backlog_does_not_starve_a_small_one_and_nothing_gets_a_429(tmp_path):
    """Real processes and clock: the limit binds for a minute (TE's window)."""
    a = Sandbox(tmp_path / "sandbox-a", seed=False, te_requests_per_minute=LIMIT).start()
    b = Sandbox(tmp_path / "sandbox-b", seed=False).start()
    try:
        te = a.totalexpert
        expert = te.add_user(ANNA["email"])
        te.add_insight_type("flexperto_conference_archived")
        contacts: dict[str, list[int]] = {"a": [], "b": []}
        for name, box, count in (("a", a, BACKLOG_A), ("b", b, BACKLOG_B)):
            for n in range(count):
                email = f"{box.api_key[:6].lower()}-{n}@example.org"
                contacts[name].append(te.add_contact(email, expert["id"])["id"])
                box.flexperto.add_archive(
                    moderator=ANNA, participants=[{"account_id": "p", "email": email, "name": "P"}]
                )
        config = write(tmp_path, tenants_toml(a, {"a": a, "b": b}))
        done = run_worker("--log-format", "json", "run-once", config=config, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        events = [json.loads(line) for line in done.stderr.splitlines()]
        sent = {
            name: [
                e["timestamp"]
                for e in events
                if e["event"] == "insight.sent" and e["tenant"] == name
            ]
            for name in ("a", "b")
        }
        assert (len(sent["a"]), len(sent["b"])) == (BACKLOG_A, BACKLOG_B)
        assert len(te.requests) > LIMIT  # the limit bound
        assert te.rate_limited_count == 0
        assert te.max_requests_in_window(60) <= LIMIT
        # b's one insight went out within TE's first minute of requests; a's last had to
        # wait for the minute to pass (counted in requests, not timed)
        posts = [
            (index, json.loads(r.body)["contact"]["id"])
            for index, r in enumerate(te.requests)
            if r.method == "POST" and r.path.endswith("/insights")
        ]
        first_minute = [contact for index, contact in posts if index < LIMIT]
        assert set(contacts["b"]) <= set(first_minute)
        assert not set(contacts["a"]) <= set(first_minute)
    finally:
        a.stop()
        b.stop()
