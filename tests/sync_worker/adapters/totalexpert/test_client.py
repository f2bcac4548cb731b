"""The Total Expert client on its own, against the sandbox TE: paging, the token and its
budget, which requests are repeated, and the answers the documents leave open."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import requests

from sync_worker.adapters.http import ApiError, TransientError
from sync_worker.adapters.totalexpert import (
    FILTER_IGNORED,
    FILTER_REJECTED,
    FILTER_SUPPORTED,
    CredentialsRejected,
    TokenBudgetExhausted,
    TotalExpertClient,
    TotalExpertSession,
)
from sync_worker.config import HttpConfig
from sync_worker.sandbox import LENIENT, STRICT, Fault
from sync_worker.state.db import open_database
from sync_worker.state.te_access import SharedAccess

HTTP = HttpConfig(timeout_seconds=5, retries=2, retry_wait_seconds=1, retry_max_wait_seconds=5)


@pytest.fixture
def client_for(tmp_path, clock):
    """A client of a sandbox's TE, its budgets in a state file of the test's own."""
    clients = []

    def make(sandbox, config, requests_per_minute=1000, token_requests_per_hour=2):
        te = replace(
            config.totalexpert,
            requests_per_minute=requests_per_minute,
            token_requests_per_hour=token_requests_per_hour,
        )
        access = SharedAccess.for_config(open_database(tmp_path / "te.db"), te, 5.0)
        client = TotalExpertClient(TotalExpertSession(te, HTTP, access, clock))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def te_requests(sandbox, method=None, path=None):
    return [
        r
        for r in sandbox.totalexpert.requests
        if (method is None or r.method == method) and (path is None or r.path.endswith(path))
    ]


def insight(contact_id, owner_id, archive_id="a-1"):
    return {
        "type": {"type": "flexperto_conference_archived"},
        "contact": {"id": contact_id},
        "owner": {"id": owner_id},
        "insight_date": "2026-11-20 09:45:00",
        "data": {"description": "archived", "flexperto_archive_id": archive_id},
    }


def lena(sandbox):
    return next(c for c in sandbox.totalexpert.contacts() if c["email"].startswith("lena"))


def test_every_page_is_read(sandbox, config, client_for):
    anna = sandbox.totalexpert.users()[0]
    for n in range(250):
        sandbox.totalexpert.add_contact(f"c{n}@example.org", anna["id"])
    contacts = list(client_for(sandbox, config).contacts_from_page(1))
    assert len(contacts) == 254
    assert len(te_requests(sandbox, "GET", "/contacts")) == 3


def test_one_token_serves_every_client_of_the_state_file(sandbox, config, client_for):
    client_for(sandbox, config).heartbeat()
    for _ in range(2):
        client_for(sandbox, config).insight_type_id("flexperto_conference_archived")
    assert sandbox.totalexpert.tokens_issued == 1
    assert te_requests(sandbox, "GET", "/heartbeat")[0].headers.get("authorization") is None


def test_while_another_process_requests_a_token_the_client_waits_and_shares_it(
    sandbox, config, client_for, clock, tmp_path, monkeypatch
):
    other = SharedAccess.for_config(open_database(tmp_path / "te.db"), config.totalexpert, 5.0)
    assert other.take_token_lease(clock.now(), 30.0) is None
    waits = []

    def other_process_gets_its_token(seconds):
        waits.append(seconds)
        if len(waits) == 3:  # the other process's answer comes in while the client waits
            answer = requests.post(
                config.totalexpert.base_url + "/token",
                auth=(config.totalexpert.client_id, config.totalexpert.client_secret),
                json={"grant_type": "client_credentials"},
                timeout=5,
            )
            other.keep_token(answer.json()["access_token"], clock.now() + 3600, clock.now())
            other.release_token_lease()
        clock.advance(seconds)

    monkeypatch.setattr(clock, "sleep", other_process_gets_its_token)
    assert client_for(sandbox, config).insight_type_id("flexperto_conference_archived")
    assert sandbox.totalexpert.tokens_issued == 1
    assert len(waits) == 3


def test_a_token_requester_that_died_holds_the_others_up_only_until_its_lease_ends(
    sandbox, config, client_for, clock, tmp_path
):
    dead = SharedAccess.for_config(open_database(tmp_path / "te.db"), config.totalexpert, 5.0)
    dead.take_token_lease(clock.now(), 30.0)
    started = clock.now()
    client_for(sandbox, config).session.fetch_token()
    assert sandbox.totalexpert.tokens_issued == 1
    assert 30.0 <= clock.now() - started < 31.0


def test_a_rejected_token_is_replaced_once(sandbox, config, client_for):
    client = client_for(sandbox, config)
    client.insight_type_id("flexperto_conference_archived")
    sandbox.totalexpert.revoke_tokens()
    assert client.insight_type_id("flexperto_conference_archived") is not None
    assert sandbox.totalexpert.tokens_issued == 2


def test_a_token_request_is_never_repeated(sandbox, config, client_for):
    sandbox.add_fault("te", Fault(path="/token$", status=503, times=None))
    with pytest.raises(ApiError, match="token request failed"):
        client_for(sandbox, config).session.fetch_token()
    assert len(te_requests(sandbox, path="/token")) == 1


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (401, '{"error": "invalid_client"}', "credentials rejected (401 invalid_client)"),
        (401, "<html>no</html>", "credentials rejected (401 unauthorized)"),
        (400, '{"error": "invalid_client"}', "credentials rejected (400 invalid_client)"),
    ],
)
def test_rejected_credentials_are_told_apart(sandbox, config, client_for, status, body, reason):
    sandbox.add_fault("te", Fault(path="/token$", status=status, body=body, times=None))
    with pytest.raises(CredentialsRejected) as rejected:
        client_for(sandbox, config).session.fetch_token()
    assert rejected.value.reason == reason
    assert len(te_requests(sandbox, path="/token")) == 1


def test_other_refusals_of_a_token_are_no_rejected_credentials(sandbox, config, client_for):
    sandbox.add_fault(
        "te", Fault(path="/token$", status=400, body='{"error": "invalid_request"}', times=None)
    )
    with pytest.raises(ApiError) as refused:
        client_for(sandbox, config).session.fetch_token()
    assert not isinstance(refused.value, CredentialsRejected)


def test_a_spent_token_budget_asks_nothing(sandbox, config, client_for):
    client = client_for(sandbox, config, token_requests_per_hour=1)
    client.session.fetch_token()
    sandbox.totalexpert.revoke_tokens()
    # the next allowed time as people read it (ISO 8601 with zone), not as epoch seconds
    spent = r"token request budget spent until 2026-11-18T\d\d:\d\d:\d\d\+00:00$"
    with pytest.raises(TokenBudgetExhausted, match=spent):
        client.insight_type_id("flexperto_conference_archived")
    assert len(te_requests(sandbox, path="/token")) == 1


def test_without_expires_in_the_token_is_good_for_the_documented_hour(
    sandbox, config, client_for, clock
):
    answer = json.dumps({"access_token": "tok-without-expiry", "token_type": "bearer"})
    sandbox.add_fault("te", Fault(path="/token$", status=200, body=answer))
    client = client_for(sandbox, config)
    client.session.fetch_token()
    assert 3000 < client.session.token_usable_until() - clock.now() < 3600


def test_the_per_minute_budget_makes_the_client_wait(sandbox, config, client_for, clock):
    client = client_for(sandbox, config, requests_per_minute=2)
    started = clock.now()
    for _ in range(3):
        client.heartbeat()
    assert clock.now() - started >= 60
    assert sandbox.totalexpert.rate_limited_count == 0


def test_an_insight_post_is_repeated_only_when_te_surely_did_not_act(sandbox, config, client_for):
    client = client_for(sandbox, config)
    contact = lena(sandbox)
    sandbox.add_fault("te", Fault(method="POST", path="/insights$", status=503, times=1))
    client.create_insight(insight(contact["id"], contact["owner"]["id"]))
    assert len(sandbox.totalexpert.insights()) == 1  # the second try went through
    sandbox.add_fault("te", Fault(method="POST", path="/insights$", status=502, times=1))
    with pytest.raises(TransientError):
        client.create_insight(insight(contact["id"], contact["owner"]["id"], "a-2"))
    assert len(te_requests(sandbox, "POST", "/insights")) == 3


def test_an_answer_without_an_id_means_created(sandbox_in, client_for):
    sandbox, config = sandbox_in(replace(LENIENT, te_insight_answer_id=False))
    contact = lena(sandbox)
    assert client_for(sandbox, config).create_insight(insight(contact["id"], 51)) is None
    assert len(sandbox.totalexpert.insights()) == 1


def test_an_insight_is_found_by_its_archive_id(sandbox, config, client_for):
    client = client_for(sandbox, config)
    contact = lena(sandbox)
    type_id = client.insight_type_id("flexperto_conference_archived")
    client.create_insight(insight(contact["id"], contact["owner"]["id"], "a-1"))
    found = client.find_insight(contact["id"], type_id, "a-1")
    assert found.found and found.insight_id == sandbox.totalexpert.insights()[0]["id"]
    missing = client.find_insight(contact["id"], type_id, "a-2")
    assert (missing.found, missing.verifiable) == (False, True)


def test_a_listing_without_data_cannot_prove_an_absence(sandbox_in, client_for):
    sandbox, config = sandbox_in(replace(LENIENT, te_insight_data_listed=False))
    client = client_for(sandbox, config)
    contact = lena(sandbox)
    type_id = client.insight_type_id("flexperto_conference_archived")
    assert client.find_insight(contact["id"], type_id, "a-1").verifiable  # nothing listed
    client.create_insight(insight(contact["id"], contact["owner"]["id"], "a-1"))
    search = client.find_insight(contact["id"], type_id, "a-1")
    assert (search.found, search.verifiable) == (False, False)


def test_an_insight_of_another_contact_is_not_taken(sandbox, config, client_for):
    # as if TE ignored the contact filter and listed every insight of the type
    other = {"id": 9, "contact": {"id": 999}, "data": {"flexperto_archive_id": "a-1"}}
    body = json.dumps({"items": [other], "links": {"next": None}})
    sandbox.add_fault("te", Fault(method="GET", path="/insights$", status=200, body=body))
    assert not client_for(sandbox, config).find_insight(454, 8, "a-1").found


@pytest.mark.parametrize(
    ("dialect", "verdict"),
    [
        (LENIENT, FILTER_SUPPORTED),
        (STRICT, FILTER_REJECTED),
        (replace(LENIENT, te_updated_since="ignored"), FILTER_IGNORED),
    ],
    ids=["lenient", "strict", "ignored"],
)
def test_the_updated_since_probe(sandbox_in, client_for, dialect, verdict):
    sandbox, config = sandbox_in(dialect)
    assert client_for(sandbox, config).probe_updated_since() == verdict
