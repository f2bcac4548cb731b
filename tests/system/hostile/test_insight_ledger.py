"""Total Expert, or whatever answers in its place, against the insight ledger: an insight
counts as sent only when TE's answer proves it, an archive rescued after its state was lost
or abandoned by another worker is looked up before anything is posted for it, an address
shared by a crowd of contacts is parked for an operator, and a nonsense token lifetime
spends no extra token request.

Each test checks the ledger against the sandbox TE's own record: every insight exactly once,
none lost."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
from prometheus_client import generate_latest

from sync_worker.app.cli import main
from sync_worker.app.runner import run_pass
from sync_worker.config import load_config
from sync_worker.ops import metrics
from sync_worker.sandbox import LENIENT, Fault
from sync_worker.sandbox.http import Incoming, Reply
from sync_worker.state.db import open_database
from tests.conftest import write_config

HTML = "<html><body><h1>Request blocked</h1>Reference #18.4c2f</body></html>"
# What a proxy, a WAF or a broken TE may answer a POST /insights with, status 2xx.
UNPROVEN_ANSWERS = {
    "html": (200, "text/html", HTML),
    "not json": (201, "application/json", "created"),
    "json list": (201, "application/json", "[]"),
    "other shape": (200, "application/json", '{"error": "blocked by policy"}'),
    "id not a number": (201, "application/json", '{"id": "abc"}'),
    "no body": (204, "application/json", ""),
}


def in_te(sandbox) -> Counter:
    """How many insights TE holds per (archive id, contact id)."""
    return Counter(
        (i["data"]["flexperto_archive_id"], i["contact_id"]) for i in sandbox.totalexpert.insights()
    )


def ledger(config) -> dict[tuple[str, int], str]:
    db = open_database(config.state.database)
    try:
        return {(r["archive_id"], r["contact_id"]): r["state"] for r in db["insights"].rows}
    finally:
        db.close()


def posts(sandbox, archives: object = None) -> int:
    """How many POST /insights TE saw (for the archives ``archives`` holds: all if None)."""
    return sum(
        1
        for r in sandbox.totalexpert.requests
        if r.method == "POST"
        and r.path.endswith("/insights")
        and (archives is None or json.loads(r.body)["data"]["flexperto_archive_id"] in archives)
    )


def answer_posts_with(sandbox, monkeypatch, status: int, content_type: str, body: str) -> None:
    """TE creates the insight, but what reaches the worker is ``body`` (a proxy's page)."""
    te = sandbox.totalexpert
    create = te._routes[("POST", "/insights")]

    def replaced(request):
        create(request)
        return Reply(status, body.encode(), {"Content-Type": content_type})

    monkeypatch.setitem(te._routes, ("POST", "/insights"), replaced)


def exactly_once(sandbox, config) -> None:
    """Every insight the ledger calls sent is in TE once, and TE has no other."""
    held = in_te(sandbox)
    assert all(n == 1 for n in held.values()), held
    sent = {key for key, state in ledger(config).items() if state == "sent"}
    assert sent == set(held)


def lose_state_file(config) -> None:
    for suffix in ("", "-wal", "-shm"):
        config.state.database.with_name(config.state.database.name + suffix).unlink(missing_ok=True)


def add_meeting(sandbox, email: str, status: str = "AVAILABLE") -> dict:
    return sandbox.flexperto.add_archive(
        status=status,
        moderator={"account_id": "e-1", "email": "anna.expert@bank.example", "name": "Anna"},
        participants=[{"account_id": "p-crowd", "email": email, "name": "Crowd"}],
    )


# --- a 2xx counts as sent only with the shape TE documents ------------------------------


def test_a_post_answered_by_a_proxy_page_is_not_recorded_sent(sandbox, config, run, clock):
    # Nothing reaches TE: a WAF answers every POST with a page of its own, status 200.
    sandbox.add_fault(
        "te",
        Fault(
            method="POST",
            path="/insights$",
            status=200,
            body=HTML,
            headers={"Content-Type": "text/html"},
            times=None,
        ),
    )
    run()
    assert sandbox.totalexpert.insights() == []
    states = set(ledger(config).values())
    assert states and "sent" not in states and states <= {"pending", "sending"}
    db = open_database(config.state.database)
    [error] = {r["last_error"] for r in db["insights"].rows if r["last_error"]}
    db.close()
    assert "not TE's answer" in error and "Reference" not in error  # the page is not echoed

    sandbox.service("te").faults.clear()
    clock.advance(config.retry.max_backoff_seconds)
    assert run().exit_code == 0
    assert set(ledger(config).values()) == {"sent"}
    exactly_once(sandbox, config)


@pytest.mark.parametrize("answer", UNPROVEN_ANSWERS, ids=list(UNPROVEN_ANSWERS))
def test_an_insight_posted_without_proof_is_looked_up_not_posted_again(
    sandbox, config, run, clock, monkeypatch, log_lines, answer
):
    answer_posts_with(sandbox, monkeypatch, *UNPROVEN_ANSWERS[answer])
    run()
    created = len(sandbox.totalexpert.insights())
    assert created >= 1
    assert "sent" not in set(ledger(config).values())

    monkeypatch.undo()
    clock.advance(config.retry.max_backoff_seconds)
    assert run().exit_code == 0
    exactly_once(sandbox, config)
    assert set(ledger(config).values()) == {"sent"}
    assert any(e["event"] == "insight.sent" and e.get("recovered") for e in log_lines())


def test_a_lookup_answered_by_a_proxy_page_is_not_taken_for_no_insight(
    sandbox, config, run, clock, monkeypatch
):
    answer_posts_with(sandbox, monkeypatch, 502, "text/html", HTML)
    run()  # TE has the insight, the gateway's answer hid it: it must be looked up
    created = in_te(sandbox)
    assert created
    first_pass = {archive_id for archive_id, _contact in created}
    monkeypatch.undo()
    for body in (HTML, '{"items": ["<html>"]}', '{"items": [[]], "links": {}}'):
        sandbox.add_fault(
            "te", Fault(method="GET", path="/insights$", status=200, body=body, times=None)
        )
        clock.advance(config.retry.max_backoff_seconds)
        before = posts(sandbox, first_pass)
        run()
        # nothing is posted on a look-up that proves nothing
        assert posts(sandbox, first_pass) == before, body
        sandbox.service("te").faults.clear()
    clock.advance(config.retry.max_backoff_seconds)
    assert run().exit_code == 0
    exactly_once(sandbox, config)
    assert set(created) <= set(in_te(sandbox))


# --- an archive abandoned elsewhere is looked up in TE before any POST -----------------


def test_archives_rescued_after_a_lost_state_file_are_not_posted_again(
    sandbox, config, run, clock, log_lines
):
    assert run().exit_code == 0
    before = in_te(sandbox)
    assert len(before) == 3
    lose_state_file(config)
    clock.advance(3600)
    posts_before = posts(sandbox)
    assert run().exit_code == 0
    held = in_te(sandbox)
    assert max(held.values()) == 1
    # Only the archive that was still packing in the first pass is new to TE.
    assert posts(sandbox) - posts_before == len(held) - len(before) == 1
    sent = {key for key, state in ledger(config).items() if state == "sent"}
    if sandbox.dialect.flexperto_list_all_statuses:  # the list shows ABANDONED archives
        assert sent == set(held)  # the rescued ones found in TE, not posted again
        recovered = [e for e in log_lines() if e["event"] == "insight.sent" and e.get("recovered")]
        assert len(recovered) == 3
    else:  # the strict list shows AVAILABLE archives only: the rescue cannot see them
        assert sent == set(held) - set(before)


def test_a_rescued_archive_is_parked_unverified_when_te_cannot_tell(sandbox_in, clock):
    sandbox, config = sandbox_in(replace(LENIENT, te_insight_data_listed=False))
    assert run_pass(config, clock).exit_code == 0
    before = in_te(sandbox)
    lose_state_file(config)
    clock.advance(3600)
    posts_before = posts(sandbox)
    run_pass(config, clock)
    states = ledger(config)
    assert {states[key] for key in before} == {"unverified"}
    # No POST for a rescued archive: only the one that was packing is posted.
    assert posts(sandbox) - posts_before == 1
    assert max(in_te(sandbox).values()) == 1


def test_an_archive_abandoned_by_another_worker_is_looked_up_first(sandbox_in, clock):
    # Only a list that shows ABANDONED archives (beyond the documents) lets one in.
    sandbox, config = sandbox_in(LENIENT)
    meeting = add_meeting(sandbox, "lena.lang@example.org", status="ABANDONED")
    lena = post_as_another_worker(sandbox, config, meeting["id"], "lena.lang@example.org")
    assert run_pass(config, clock).exit_code == 0
    assert in_te(sandbox)[(meeting["id"], lena)] == 1
    exactly_once(sandbox, config)


def test_an_archive_known_here_but_abandoned_by_another_worker_is_looked_up_first(
    sandbox_in, clock
):
    sandbox, config = sandbox_in(LENIENT)
    meeting = add_meeting(sandbox, "lena.lang@example.org")
    download = Fault(path=f"{meeting['id']}/download$", status=503, times=None)
    sandbox.add_fault("flexperto", download)
    run_pass(config, clock)  # listed AVAILABLE here, not stored
    sandbox.service("flexperto").faults.clear()
    # Meanwhile another worker stores it, posts its insight and abandons it.
    lena = post_as_another_worker(sandbox, config, meeting["id"], "lena.lang@example.org")
    sandbox.flexperto.set_status(meeting["id"], "ABANDONED")
    clock.advance(config.retry.max_backoff_seconds)
    assert run_pass(config, clock).exit_code == 0
    assert in_te(sandbox)[(meeting["id"], lena)] == 1
    exactly_once(sandbox, config)


def post_as_another_worker(sandbox, config, archive_id: str, email: str) -> int:
    """Post the insight another worker would have posted for the archive; the contact id."""
    contact = next(c for c in sandbox.totalexpert.contacts() if c["email"] == email)
    body = {
        "type": {"type": config.totalexpert.insight_type},
        "contact": {"id": contact["id"]},
        "owner": {"id": contact["owner"]["id"]},
        "insight_date": "2026-11-20 09:00:00",
        "data": {"flexperto_archive_id": archive_id},
    }
    headers = {"content-type": "application/json"}
    request = Incoming("POST", "/v1/insights", {}, headers, json.dumps(body).encode())
    assert sandbox.totalexpert._routes[("POST", "/insights")](request).status == 201
    return contact["id"]


# --- contacts per address are bounded ---------------------------------------------------


def crowd(sandbox, email: str, count: int) -> None:
    te = sandbox.totalexpert
    owners = [u["id"] for u in te.users()]
    for n in range(count):
        te.add_contact(email, owners[n % len(owners)], "Crowd", str(n))


@pytest.mark.parametrize("contacts", [30, 2500], ids=["copied", "looked-up"])
def test_an_address_shared_by_a_crowd_of_contacts_is_parked_as_ambiguous(
    sandbox, config, run, clock, tmp_path, capsys, contacts
):
    email = "shared.inbox@example.org"
    crowd(sandbox, email, contacts)
    meeting = add_meeting(sandbox, email)
    contact_pages_before = contact_pages_read(sandbox, email)
    assert run().exit_code == 1
    db = open_database(config.state.database)
    row = db["participants"].get((meeting["id"], email))
    assert row["state"] == "ambiguous"
    assert "more than 20" in row["last_error"] and email in row["last_error"]
    assert db.execute(
        "select count(*) from insights where archive_id = ?", [meeting["id"]]
    ).fetchone() == (0,)
    assert not any(key[0] == meeting["id"] for key in in_te(sandbox))
    # Looked up one by one, the address costs one page, not the crowd's 25.
    assert contact_pages_read(sandbox, email) - contact_pages_before <= 1
    exactly_once(sandbox, config)

    config_file = str(tmp_path / "config.toml")
    assert main(["--config", config_file, "status"]) == 0
    shown = capsys.readouterr().out
    assert "ambiguous 1" in shown and "more than 20" in shown
    scraped = generate_latest(metrics.registry_for([config], clock)).decode()
    assert 'sync_worker_insights{state="ambiguous",tenant=""} 1.0' in scraped

    # The operator merges the duplicates in TE, then releases the participant.
    for contact in sandbox.totalexpert.contacts():
        if contact["email"] == email and contact["last_name"] != "0":
            sandbox.totalexpert.delete_contact(contact["id"])
    assert main(["--config", config_file, "retry", meeting["id"]]) == 0
    assert db["participants"].get((meeting["id"], email))["state"] == "pending"
    db.close()
    if contacts == 2500:  # a copied directory forgets deleted contacts only on a re-read
        clock.advance(config.retry.max_backoff_seconds)
        assert run().exit_code == 0
        assert sum(n for (a, _c), n in in_te(sandbox).items() if a == meeting["id"]) == 1
        exactly_once(sandbox, config)


def contact_pages_read(sandbox, email: str) -> int:
    return sum(
        1
        for r in sandbox.totalexpert.requests
        if r.path.endswith("/contacts") and email in r.query.get("filter", "")
    )


def test_the_ceiling_of_contacts_per_address_is_the_operators(sandbox, tmp_path, clock):
    email = "family@example.org"
    crowd(sandbox, email, 4)
    meeting = add_meeting(sandbox, email)
    path = write_config(tmp_path, sandbox)
    setting = "requests_per_minute = 1000"
    path.write_text(path.read_text().replace(setting, f"{setting}\nmax_contacts_per_address = 3"))
    config = load_config(path, env={})
    run_pass(config, clock)
    db = open_database(config.state.database)
    assert db["participants"].get((meeting["id"], email))["state"] == "ambiguous"
    db.close()


# --- expires_in clamped: one bad answer never spends both token requests -----------------

MISSING = object()


LIFETIMES = {
    "negative": -1,
    "zero": 0,
    "unicode digit": "²",
    "text": "soon",
    "huge": 10**400,
    "fraction": 1.5,
    "bool": True,
    "null": None,
    "missing": MISSING,
}


@pytest.mark.parametrize("expires_in", LIFETIMES.values(), ids=list(LIFETIMES))
def test_a_nonsense_token_lifetime_spends_one_token_request(
    sandbox, config, run, clock, monkeypatch, expires_in
):
    te = sandbox.totalexpert
    issue = te._routes[("POST", "/token")]

    def odd_lifetime(request):
        reply = issue(request)
        payload = json.loads(reply.body)
        if expires_in is MISSING:
            payload.pop("expires_in", None)
        else:
            payload["expires_in"] = expires_in
        return Reply.json(reply.status, payload)

    monkeypatch.setitem(te._routes, ("POST", "/token"), odd_lifetime)
    run()
    assert te.token_requests == 1
    clock.advance(60)  # the daemon's next pass
    add_meeting(sandbox, "lena.lang@example.org")
    assert run().exit_code == 0
    assert te.token_requests == 1
    exactly_once(sandbox, config)
    assert len(in_te(sandbox)) == 5
