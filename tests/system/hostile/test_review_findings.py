"""Findings of the adversarial review of issue 17: each test failed before its fix."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sync_worker.sandbox import Fault
from sync_worker.sandbox.http import Incoming, Reply
from sync_worker.sandbox.seed import ANNA
from sync_worker.state import archives, held_records
from sync_worker.state.db import open_database
from sync_worker.state.lifecycles import ArchiveState
from tests.system.hostile.test_insight_ledger import HTML, answer_posts_with, in_te, ledger
from tests.system.hostile.test_poisoned_answers import rewritten, wrap

GOOD = {"account_id": "p", "email": "lena.lang@example.org", "name": "Lena"}
LIST = "/communication/conferences/archives$"


def abandons(sandbox, conference_id: str) -> int:
    return sum(
        1
        for r in sandbox.flexperto.requests
        if r.method == "POST" and r.path.endswith(f"/{conference_id}/archive/abandon")
    )


@pytest.mark.lenient_only  # the listing asks for each status in turn
def test_a_listing_that_fails_half_way_abandons_nothing(sandbox, config, run):
    """The listing fails after its first page: the statuses it never read may hold a
    sibling still being packed, which no ledger row nor held record knows of yet."""
    stored = sandbox.flexperto.add_archive(conference_id="c-r1", participants=[GOOD])
    packing = sandbox.flexperto.add_archive(
        conference_id="c-r1", status="PACKING", participants=[GOOD]
    )

    def fail_the_rest(_service) -> None:
        sandbox.add_fault("flexperto", Fault(method="GET", path=LIST, status=503, times=None))

    sandbox.add_fault(
        "flexperto", Fault(method="GET", path=LIST, action="call", callback=fail_the_rest)
    )
    run()
    db = open_database(config.state.database)
    assert archives.get(db, stored["id"]).state == ArchiveState.STORED  # stored all the same
    db.close()
    assert abandons(sandbox, "c-r1") == 0
    assert sandbox.flexperto.record(packing["id"])["status"] == "PACKING"

    sandbox.service("flexperto").faults.clear()  # the listing is read whole again
    sandbox.flexperto.set_status(packing["id"], "AVAILABLE")
    run()
    assert abandons(sandbox, "c-r1") == 1


def test_a_te_repeating_a_page_of_insights_is_no_proof_that_one_is_missing(
    sandbox, config, run, clock, monkeypatch
):
    """An insight whose POST was answered by a gateway's page is looked for; TE then
    serves the contact's first page whatever page is asked for, with a next link: what
    was not shown may well be there, and posting it again would double it."""
    assert run().exit_code == 0  # the seed's insights, one of them for Max
    answer_posts_with(sandbox, monkeypatch, 502, "text/html", HTML)
    clock.advance(3600)
    run()  # the seed's archive that was packing: TE has Max's second insight, unproven
    monkeypatch.undo()
    sending = [key for key, state in ledger(config).items() if state == "sending"]
    assert sending and all(in_te(sandbox)[key] == 1 for key in sending)

    def first_page_forever(request: Incoming, normal) -> Reply:
        if request.method != "GET" or not request.path.endswith("/insights"):
            return normal(request)
        number = int(request.query.get("page[number]", 1))
        query = {**request.query, "page[number]": "1", "page[size]": "1"}
        reply = normal(replace(request, query=query))

        def next_link(body: dict) -> None:
            body["links"]["next"] = number + 1 if number < 50 else None

        return rewritten(reply, next_link)

    wrap(sandbox.totalexpert, first_page_forever)
    clock.advance(config.retry.max_backoff_seconds)
    run()
    assert max(in_te(sandbox).values()) == 1
    assert all(ledger(config)[key] != "sent" for key in sending)  # nor proven missing


def _contact_id(sandbox, email: str) -> int:
    return next(c["id"] for c in sandbox.totalexpert.contacts() if c["email"] == email)


@pytest.mark.parametrize("field", ["id", "conference_id"])
def test_a_lone_surrogate_in_a_rejected_record_fails_only_that_record(sandbox, config, run, field):
    """JSON may escape half a UTF-16 pair ("\\udc80"), which Python reads as a lone
    surrogate: SQLite cannot take it as text, and the held record must still be kept."""
    good = sandbox.flexperto.add_archive(conference_id="c-r3", participants=[GOOD])
    bad = "a\udc80b"
    record = {"id": "r-3", "status": "AVAILABLE", "subject": {"conference_id": "c-r3"}}
    if field == "id":
        record["id"] = bad
    else:
        record["subject"] = {"conference_id": bad}
    sandbox.flexperto.add_raw_record(record)
    run()
    db = open_database(config.state.database)
    assert archives.get(db, good["id"]).state == ArchiveState.STORED  # the job went on
    assert held_records.counts(db)[held_records.REJECTED] == 1
    db.close()
    assert abandons(sandbox, "c-r3") == 0  # held: its own conference, or every one


def test_a_te_contact_whose_address_holds_a_lone_surrogate_fails_no_pass(
    sandbox, config, run, clock
):
    """One contact of TE's directory with such an address is skipped; the others' insights
    are posted as ever."""
    anna = next(u for u in sandbox.totalexpert.users() if u["email"] == ANNA["email"])
    sandbox.totalexpert.add_contact("x\udc80@example.org", anna["id"])
    result = run()
    clock.advance(config.retry.max_backoff_seconds)
    run()
    assert len(in_te(sandbox)) >= 3, result  # the seed's insights


@pytest.mark.parametrize("field", ["email", "name"])
def test_a_participant_holding_a_lone_surrogate_fails_not_its_archive(sandbox, config, run, field):
    """The archive is stored and abandoned; the poisoned participant alone is left out."""
    poisoned = {**GOOD, "email": "z@example.org", field: "z\udc80@example.org"}
    meeting = sandbox.flexperto.add_archive(conference_id="c-r4", participants=[GOOD, poisoned])
    run()
    db = open_database(config.state.database)
    assert archives.get(db, meeting["id"]).state == ArchiveState.CLAIMED
    db.close()


def test_an_error_answer_holding_a_lone_surrogate_fails_only_its_item(sandbox, config, run):
    """The service's message is kept as the item's error: SQLite must be able to take it."""
    target = sandbox.flexperto.add_archive(conference_id="c-r5", participants=[GOOD])
    other = sandbox.flexperto.add_archive(conference_id="c-r6", participants=[GOOD])
    body = '{"message": "no \\udc80 such archive"}'
    sandbox.add_fault(
        "flexperto",
        Fault(path=f"/{target['id']}/download$", status=500, body=body, times=None),
    )
    run()
    db = open_database(config.state.database)
    assert archives.get(db, target["id"]).state == ArchiveState.FAILED
    assert archives.get(db, other["id"]).state == ArchiveState.CLAIMED
    db.close()


def test_two_rejected_records_under_one_key_hold_back_both_conferences(sandbox, config, run):
    """Two records with the same id (or ids alike in their first 200 characters) in two
    conferences: holding the second must not release the first one's conference."""
    for conference in ("c-r7", "c-r8"):
        sandbox.flexperto.add_archive(conference_id=conference, participants=[GOOD])
        sandbox.flexperto.add_raw_record(
            {"id": "dup+id", "status": "AVAILABLE", "subject": {"conference_id": conference}}
        )
    run()
    run()  # and in every later listing
    assert abandons(sandbox, "c-r7") == abandons(sandbox, "c-r8") == 0
