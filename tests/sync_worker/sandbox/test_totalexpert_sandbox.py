"""The sandbox Total Expert API: tokens, limits, lists, filters and insights."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests

from sync_worker.core.clock import FakeClock
from sync_worker.sandbox import Sandbox

# These test the sandbox's lenient dialect itself; test_dialect.py covers the others.
pytestmark = pytest.mark.lenient_only

INSIGHT_TYPE = "flexperto_conference_archived"
CLIENT_CREDENTIALS = {"grant_type": "client_credentials"}
NO_TARGET = "Unable to find target for relationship: '{}'"
BAD_DATE = "insight_date must be formatted YYYY-MM-DD HH:MM:SS"


def contacts_of(te: requests.Session, sandbox: Sandbox, email: str) -> list[dict[str, Any]]:
    answer = te.get(f"{sandbox.totalexpert_url}/contacts", params={"filter": f"email={email}"})
    assert answer.status_code == 200
    return answer.json()["items"]


def insight_body(sandbox: Sandbox, **changes: Any) -> dict[str, Any]:
    """A valid insight for Anna's contact Max Kunde, with ``changes`` applied."""
    max_of_anna = next(
        c
        for c in sandbox.totalexpert.contacts()
        if c["email"] == "max.kunde@example.org"
        and c["owner"]["email"] == "anna.expert@bank.example"
    )
    body = {
        "type": {"type": INSIGHT_TYPE},
        "contact": {"id": max_of_anna["id"]},
        "owner": {"id": max_of_anna["owner"]["id"]},
        "insight_date": "2026-11-20 09:45:00",
        "data": {"description": "Conference archived", "flexperto_archive_id": "a-1"},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


# --- heartbeat, routing -------------------------------------------------------------------


def test_heartbeat_needs_no_auth(sandbox):
    answer = requests.get(f"{sandbox.totalexpert_url}/heartbeat", timeout=5)
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}


def test_unknown_paths_and_wrong_methods(sandbox, te):
    base = sandbox.totalexpert_url
    assert te.get(f"{base}/nothing").status_code == 404
    assert te.get(base.removesuffix("/v1") + "/v2/contacts").status_code == 404
    assert te.put(f"{base}/contacts", json={}).status_code == 405
    assert te.post(f"{base}/heartbeat").status_code == 405
    assert te.get(f"{base}/token").status_code == 405
    assert te.get(f"{base}/nothing").json() == {"error": "Not Found"}


# --- tokens -------------------------------------------------------------------------------


def test_token_is_issued_for_client_credentials(sandbox, get_token):
    answer = get_token()
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert (body["expires_in"], body["token_type"], body["scope"]) == (3600, "bearer", "admin")
    assert (sandbox.totalexpert.token_requests, sandbox.totalexpert.tokens_issued) == (1, 1)


@pytest.mark.parametrize(
    ("headers", "body", "status", "error"),
    [
        (
            {"Authorization": "Basic bm9wZTpub3Bl"},
            {"grant_type": "client_credentials"},
            400,
            "invalid_client",
        ),
        ({}, {"grant_type": "client_credentials"}, 400, "invalid_client"),
        (
            {"Authorization": "Bearer x"},
            {"grant_type": "client_credentials"},
            400,
            "invalid_client",
        ),
        (None, "not json", 400, "invalid_request"),
        (None, {"grant_type": "password"}, 400, "unsupported_grant_type"),
        (None, {}, 400, "unsupported_grant_type"),
    ],
)
def test_token_errors(sandbox, basic_auth, headers, body, status, error):
    sandbox.totalexpert.set_limits(token_requests_per_hour=100)
    kwargs: dict[str, Any] = {"headers": basic_auth if headers is None else headers}
    if isinstance(body, str):
        kwargs["data"] = body
        kwargs["headers"] = {**kwargs["headers"], "Content-Type": "application/json"}
    else:
        kwargs["json"] = body
    answer = requests.post(f"{sandbox.totalexpert_url}/token", timeout=5, **kwargs)
    assert answer.status_code == status
    assert answer.json()["error"] == error and answer.json()["error_description"]
    assert sandbox.totalexpert.tokens_issued == 0


def test_token_wants_json(sandbox, basic_auth):
    answer = requests.post(
        f"{sandbox.totalexpert_url}/token",
        headers=basic_auth,
        data={"grant_type": "client_credentials"},
        timeout=5,
    )
    assert answer.status_code == 415


def test_two_token_requests_an_hour(sandbox, get_token, clock):
    assert [get_token().status_code for _ in range(3)] == [200, 200, 429]
    refused = get_token()
    assert refused.json() == {"error": "Too Many Requests"}
    assert "Retry-After" not in refused.headers
    clock.advance(3599)
    assert get_token().status_code == 429
    clock.advance(1)
    assert get_token().status_code == 200
    te = sandbox.totalexpert
    assert (te.token_requests, te.tokens_issued, te.rate_limited_count) == (6, 3, 3)
    assert te.max_token_requests_in_window(3600) == 5  # attempts, refused ones too
    assert te.max_token_requests_in_window(1) == 4


def test_bearer_token_is_required_and_expires(sandbox, te, clock):
    url = f"{sandbox.totalexpert_url}/users"
    assert te.get(url).status_code == 200
    for headers in ({}, {"Authorization": "Bearer made-up"}, {"Authorization": "Basic x"}):
        answer = requests.get(url, headers=headers, timeout=5)
        assert answer.status_code == 401 and answer.json() == {"error": "invalid_token"}
    clock.advance(3599)
    assert te.get(url).status_code == 200
    clock.advance(1)
    assert te.get(url).status_code == 401


def test_revoked_tokens_stop_working(sandbox, te):
    url = f"{sandbox.totalexpert_url}/users"
    assert te.get(url).status_code == 200
    sandbox.totalexpert.revoke_tokens()
    assert te.get(url).status_code == 401


# --- per-minute limit ---------------------------------------------------------------------


def test_requests_per_minute_slide(tmp_path):
    clock = FakeClock()
    with Sandbox(tmp_path, clock=clock, te_requests_per_minute=5) as sandbox:
        url = f"{sandbox.totalexpert_url}/heartbeat"
        get = lambda: requests.get(url, timeout=5)  # noqa: E731
        assert [get().status_code for _ in range(3)] == [200] * 3
        clock.advance(30)
        assert [get().status_code for _ in range(3)] == [200, 200, 429]
        refused = get()
        assert refused.status_code == 429 and "Retry-After" not in refused.headers
        clock.advance(30)  # the first three left the window
        assert [get().status_code for _ in range(4)] == [200, 200, 200, 429]
        te = sandbox.totalexpert
        assert te.rate_limited_count == 3
        assert te.max_requests_in_window(60) == 8  # arrivals in (t - 60, t], refused ones too
        te.set_limits(requests_per_minute=100)
        assert get().status_code == 200


def test_token_requests_count_toward_the_minute(tmp_path, basic_auth):
    with Sandbox(tmp_path, clock=FakeClock(), te_requests_per_minute=2) as sandbox:
        base = sandbox.totalexpert_url
        requests.get(f"{base}/heartbeat", timeout=5)
        requests.get(f"{base}/heartbeat", timeout=5)
        answer = requests.post(f"{base}/token", json={}, timeout=5)
        assert answer.status_code == 429
        assert sandbox.totalexpert.token_requests == 0  # refused before the token endpoint


# --- lists --------------------------------------------------------------------------------


def test_contacts_by_email_are_case_insensitive_and_per_owner(sandbox, te):
    found = contacts_of(te, sandbox, "MAX.Kunde@Example.org")
    assert len(found) == 2
    assert {c["owner"]["email"] for c in found} == {
        "anna.expert@bank.example",
        "bernd.berater@bank.example",
    }
    contact = found[0]
    assert set(contact) == {
        "id",
        "email",
        "first_name",
        "last_name",
        "internal_updated_at",
        "owner",
    }
    assert isinstance(contact["id"], int)
    assert set(contact["owner"]) == {"id", "email", "username", "external_id"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", contact["internal_updated_at"])
    assert contacts_of(te, sandbox, "nobody@nowhere.example") == []
    encoded = te.get(f"{sandbox.totalexpert_url}/contacts?filter=email%3Dlena.lang%40example.org")
    assert [c["email"] for c in encoded.json()["items"]] == ["lena.lang@example.org"]


def test_contacts_updated_since(sandbox, te, clock):
    anna = next(u for u in sandbox.totalexpert.users() if u["username"] == "anna.expert")
    sandbox.totalexpert.add_contact("new@example.org", anna["id"], updated_at=clock.now() + 90)
    sandbox.totalexpert.add_contact("old@example.org", anna["id"], updated_at=0.0)
    url = f"{sandbox.totalexpert_url}/contacts"
    # the seed's contacts date from the fake clock's start, 2026-11-18 11:06:40
    since = te.get(url, params={"filter": "internal_updated_at_start=2026-11-18 11:07:00"})
    assert [c["email"] for c in since.json()["items"]] == ["new@example.org"]
    everyone = te.get(url).json()["items"]
    assert len(everyone) == 6
    old = next(c for c in everyone if c["email"] == "old@example.org")
    assert old["internal_updated_at"] == "1970-01-01 00:00:00"


def test_paging(tmp_path):
    with Sandbox(tmp_path, clock=FakeClock(), seed=False) as sandbox, requests.Session() as s:
        owner = sandbox.totalexpert.add_user("owner@bank.example")
        for n in range(250):
            sandbox.totalexpert.add_contact(f"c{n}@example.org", owner["id"])
        token = sandbox_token(sandbox)
        s.headers["Authorization"] = f"Bearer {token}"
        url = f"{sandbox.totalexpert_url}/contacts"

        def page(**query: Any) -> dict[str, Any]:
            answer = s.get(url, params=query)
            assert answer.status_code == 200
            return answer.json()

        first = page()
        assert len(first["items"]) == 100
        assert first["links"] == {"first": 1, "last": 3, "next": 2, "prev": None}
        last = page(**{"page[number]": 3, "page[size]": 100})
        assert [c["email"] for c in last["items"]][-1] == "c249@example.org"
        assert last["links"] == {"first": 1, "last": 3, "next": None, "prev": 2}
        small = page(**{"page[number]": 2, "page[size]": 7})
        assert [c["email"] for c in small["items"]] == [f"c{n}@example.org" for n in range(7, 14)]
        assert page(**{"page[number]": 9})["items"] == []
        for bad in (
            {"page[size]": 101},
            {"page[size]": 0},
            {"page[number]": 0},
            {"page[size]": "x"},
        ):
            assert s.get(url, params=bad).status_code == 400
        request = sandbox.totalexpert.requests[-1]
        assert "page[size]" in request.query


def sandbox_token(sandbox: Sandbox) -> str:
    answer = requests.post(
        f"{sandbox.totalexpert_url}/token",
        auth=(sandbox.client_id, sandbox.client_secret),
        json={"grant_type": "client_credentials"},
        timeout=5,
    )
    return answer.json()["access_token"]


def test_users_and_insight_types(sandbox, te):
    base = sandbox.totalexpert_url
    users = te.get(f"{base}/users", params={"filter": "email=Anna.Expert@bank.example"}).json()
    [anna] = users["items"]
    assert {k: anna[k] for k in ("email", "username", "external_id")} == {
        "email": "anna.expert@bank.example",
        "username": "anna.expert",
        "external_id": "e-17",
    }
    assert len(te.get(f"{base}/users").json()["items"]) == 2
    types = te.get(f"{base}/insight-types", params={"filter": f"type={INSIGHT_TYPE}"}).json()
    [kind] = types["items"]
    assert set(kind) == {"id", "type", "description"}
    assert kind["description"] == "Flexperto: Conference archived"
    assert te.get(f"{base}/insight-types", params={"filter": "type=other"}).json()["items"] == []


# --- insights -----------------------------------------------------------------------------


def test_insight_is_created_and_listed(sandbox, te, clock):
    base = sandbox.totalexpert_url
    body = insight_body(sandbox)
    created = te.post(f"{base}/insights", json=body)
    assert created.status_code == 201
    insight_id = created.json()["id"]
    assert created.json() == {"id": insight_id, "created": f"{base}/insights/{insight_id}"}
    kind = sandbox.totalexpert.insights()[0]["type"]
    by_id = te.post(f"{base}/insights", json={**body, "type": {"id": kind["id"]}})
    assert by_id.status_code == 201
    [stored, _] = sandbox.totalexpert.insights()
    assert stored["contact_id"] == body["contact"]["id"]
    assert stored["owner_id"] == body["owner"]["id"]
    assert stored["type_id"] == kind["id"]
    assert stored["created_at"] == clock.now() and stored["data"] == body["data"]
    query = {"filter": f"contact_id={body['contact']['id']},type_id={kind['id']}"}
    listed = te.get(f"{base}/insights", params=query).json()["items"]
    assert len(listed) == 2
    assert listed[0] == {
        "id": insight_id,
        "type": {"id": kind["id"], "type": INSIGHT_TYPE},
        "contact": body["contact"],
        "owner": body["owner"],
        "insight_date": body["insight_date"],
        "data": body["data"],
    }
    other = te.get(f"{base}/insights", params={"filter": "contact_id=1"}).json()
    assert other["items"] == []


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"type": {"type": "unknown"}}, "Unable to find target for relationship: 'type'"),
        (
            {"type": "flexperto_conference_archived"},
            "Unable to find target for relationship: 'type'",
        ),
        ({"contact": {"id": 1}}, "Unable to find target for relationship: 'contact'"),
        ({"contact": {"id": [1]}}, "Unable to find target for relationship: 'contact'"),
        ({"contact": {"id": "451"}}, "Unable to find target for relationship: 'contact'"),
        ({"owner": {"id": 1}}, "Unable to find target for relationship: 'owner'"),
        ({"owner": None}, "owner is required when acting as admin"),
        (
            {"insight_date": "2026-11-20T09:45:00Z"},
            "insight_date must be formatted YYYY-MM-DD HH:MM:SS",
        ),
        (
            {"insight_date": "2026-02-30 09:45:00"},
            "insight_date must be formatted YYYY-MM-DD HH:MM:SS",
        ),
        ({"data": ["not", "an", "object"]}, "data must be an object"),
    ],
)
def test_insight_422s(sandbox, te, changes, error):
    answer = te.post(f"{sandbox.totalexpert_url}/insights", json=insight_body(sandbox, **changes))
    assert answer.status_code == 422 and answer.json() == {"error": error}
    assert sandbox.totalexpert.insights() == []


def test_insight_needs_json(sandbox, te):
    url = f"{sandbox.totalexpert_url}/insights"
    broken = te.post(url, data=b"{nope", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json() == {"error": "Unable to parse JSON"}
    listed = te.post(url, json=[1, 2])
    assert listed.status_code == 400
    assert te.post(url, data={"type": "x"}).status_code == 415
    assert sandbox.totalexpert.insights() == []


def test_state_api(sandbox):
    te = sandbox.totalexpert
    user = te.add_user("new.user@bank.example")
    assert user["username"] == "new.user" and user["external_id"] is None
    contact = te.add_contact("Mixed.Case@Example.org", user["id"], "Mixed", "Case")
    assert contact["owner"]["id"] == user["id"]
    kind = te.add_insight_type("other_type", "Other")
    assert kind["type"] == "other_type" and isinstance(kind["id"], int)
    contact["email"] = "changed on a copy"
    assert any(c["email"] == "Mixed.Case@Example.org" for c in te.contacts())
