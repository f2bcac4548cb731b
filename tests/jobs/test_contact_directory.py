"""Matching participants to TE contacts from the local copy, and what that saves."""

from dataclasses import replace

import pytest

from sync_worker.app.runner import run_pass
from sync_worker.sandbox import LENIENT, Fault
from sync_worker.state import capabilities
from sync_worker.state.configured import open_state
from sync_worker.state.db import open_database
from tests.state_rows import row_of, rows_of

# A test with the sandbox and its config runs on either state (sandbox_in's are on SQLite).
pytestmark = pytest.mark.both_states

ANNA = {"account_id": "e-17", "email": "anna.expert@bank.example", "name": "Anna Expert"}


def add_meeting(sandbox, *emails):
    return sandbox.flexperto.add_archive(
        status="AVAILABLE",
        moderator=ANNA,
        participants=[{"account_id": f"p{i}", "email": e, "name": e} for i, e in enumerate(emails)],
    )


def te_paths(sandbox):
    return [(r.method, r.path, r.query.get("filter", "")) for r in sandbox.totalexpert.requests]


@pytest.mark.lenient_only  # the updated-since filter; its fallback is tested below
def test_once_filled_a_pass_costs_one_post_per_insight_plus_two(sandbox, run):
    run()
    run()  # the archive that was PACKING
    sandbox.totalexpert.clear_requests()
    for _ in range(5):
        add_meeting(sandbox, "lena.lang@example.org", "erika.muster@example.org")
    run()
    requests = te_paths(sandbox)
    posts = [r for r in requests if r[0] == "POST"]
    assert len(posts) == 10
    assert len(requests) == 12  # + contacts and users changed since the last pass
    assert all("internal_updated_at_start=" in f for m, p, f in requests if m == "GET")


def test_big_organisation_and_little_work_looks_emails_up_one_by_one(sandbox, run):
    anna = next(u for u in sandbox.totalexpert.users() if u["email"] == ANNA["email"])
    for n in range(1000):  # 11 pages of contacts, for 4 participants and 3 moderators
        sandbox.totalexpert.add_contact(f"customer{n}@example.org", anna["id"])
    run()
    gets = [r for r in te_paths(sandbox) if r[0] == "GET" and r[1] == "/v1/contacts"]
    assert len(gets) == 1 + 4  # one probe for the size, then one lookup per participant
    assert sum("email=" in f for _m, _p, f in gets) == 4


@pytest.mark.lenient_only  # the updated-since filter; without it, within a day (below)
def test_a_changed_owner_is_picked_up_by_the_next_pass(sandbox, config, run):
    run()
    te = sandbox.totalexpert
    bernd = next(u for u in te.users() if u["email"] == "bernd.berater@bank.example")
    lena = next(c for c in te.contacts() if c["email"] == "lena.lang@example.org")
    te.update_contact(lena["id"], bernd["id"])
    meeting = add_meeting(sandbox, "lena.lang@example.org")
    run()
    [newest] = [i for i in te.insights() if i["data"]["flexperto_archive_id"] == meeting["id"]]
    assert newest["contact_id"] == lena["id"] and newest["owner_id"] == bernd["id"]


def test_a_contact_te_no_longer_knows_is_dropped_from_the_copy(sandbox, config, run):
    run()
    te = sandbox.totalexpert
    lena = next(c for c in te.contacts() if c["email"] == "lena.lang@example.org")
    te.delete_contact(lena["id"])  # deletions do not show in "updated since" queries
    add_meeting(sandbox, "lena.lang@example.org")
    run()
    db = open_state(config.state)
    try:
        assert row_of(db, "te_contacts", contact_id=lena["id"]) is None
        insights = rows_of(db, "insights", "archive_id, contact_id")
    finally:
        db.close()
    parked = [r for r in insights if r["state"] == "given_up"]
    assert len(parked) == 1 and "'contact'" in parked[0]["last_error"]


def test_insight_type_is_asked_for_once(sandbox, run):
    run()
    add_meeting(sandbox, "lena.lang@example.org")
    run()
    asked = [r for r in te_paths(sandbox) if r[1] == "/v1/insight-types"]
    assert len(asked) == 1


def test_unknown_address_falls_back_to_one_lookup(sandbox, run):
    run()
    sandbox.totalexpert.clear_requests()
    add_meeting(sandbox, "new.person@example.org")
    run()
    lookups = [f for m, p, f in te_paths(sandbox) if p == "/v1/contacts" and "email=" in f]
    assert lookups == ["email=new.person@example.org"]


def events_named(log_lines, name):
    return [e for e in log_lines() if e["event"] == name]


@pytest.mark.parametrize("answer", ["rejected", "ignored"])
def test_without_the_updated_since_filter_the_copy_is_read_whole_once_a_day(
    sandbox_in, clock, log_lines, answer
):
    sandbox, config = sandbox_in(replace(LENIENT, te_updated_since=answer))
    te = sandbox.totalexpert
    run_pass(config, clock)  # fills the copy
    run_pass(config, clock)  # the archive that was PACKING: the filter is tried, found wanting
    [missing] = events_named(log_lines, "te.capability_missing")
    assert missing["answer"] == answer and "internal_updated_at_start" in missing["capability"]
    db = open_database(config.state.database)
    assert capabilities.get(db, capabilities.UPDATED_SINCE).value == answer

    bernd = next(u for u in te.users() if u["email"] == "bernd.berater@bank.example")
    lena = next(c for c in te.contacts() if c["email"] == "lena.lang@example.org")
    te.update_contact(lena["id"], bernd["id"])
    te.clear_requests()
    add_meeting(sandbox, "lena.lang@example.org")
    run_pass(config, clock)  # within the day: the copy answers, no request but the POST
    assert [(m, p) for m, p, _f in te_paths(sandbox)] == [("POST", "/v1/insights")]

    clock.advance(24 * 3600)
    te.clear_requests()
    meeting = add_meeting(sandbox, "lena.lang@example.org")
    run_pass(config, clock)  # a day on: read whole again, and so up to date
    assert not any("internal_updated_at_start" in f for _m, _p, f in te_paths(sandbox))
    assert len(events_named(log_lines, "te.directory_filled")) == 2
    [newest] = [i for i in te.insights() if i["data"]["flexperto_archive_id"] == meeting["id"]]
    assert newest["owner_id"] == bernd["id"]
    assert len(events_named(log_lines, "te.capability_missing")) == 1  # said once


def test_the_missing_filter_is_tried_again_after_a_week(sandbox_in, clock, log_lines):
    sandbox, config = sandbox_in(replace(LENIENT, te_updated_since="rejected"))
    run_pass(config, clock)
    run_pass(config, clock)  # tried: rejected
    sandbox.totalexpert.clear_requests()
    clock.advance(8 * 24 * 3600)
    add_meeting(sandbox, "lena.lang@example.org")
    run_pass(config, clock)
    probes = [f for _m, p, f in te_paths(sandbox) if "internal_updated_at_start" in f]
    assert len(probes) == 1  # asked once more; still missing, so no second warning
    assert len(events_named(log_lines, "te.capability_missing")) == 1


def test_a_full_re_read_drops_contacts_te_deleted(sandbox_in, clock):
    sandbox, config = sandbox_in(replace(LENIENT, te_updated_since="rejected"))
    run_pass(config, clock)
    te = sandbox.totalexpert
    erika = next(c for c in te.contacts() if c["email"] == "erika.muster@example.org")
    te.delete_contact(erika["id"])
    clock.advance(24 * 3600)
    add_meeting(sandbox, "lena.lang@example.org")
    run_pass(config, clock)
    db = open_database(config.state.database)
    assert db["te_contacts"].count_where("contact_id = ?", [erika["id"]]) == 0
    assert db["te_contacts"].count > 0


def test_te_failing_while_the_copy_is_filled_means_lookups_for_this_pass(
    sandbox, config, run, log_lines
):
    # every try of the fill's user listing (1 + 3 retries) fails; single lookups then work
    sandbox.add_fault("te", Fault(path="/users$", status=500, times=4))
    assert run().exit_code == 0
    [unavailable] = events_named(log_lines, "te.directory_unavailable")
    assert "500" in unavailable["error"]
    assert len(sandbox.totalexpert.insights()) == 3
    lookups = [f for m, p, f in te_paths(sandbox) if p == "/v1/contacts" and "email=" in f]
    assert len(lookups) == 4  # one per participant address
