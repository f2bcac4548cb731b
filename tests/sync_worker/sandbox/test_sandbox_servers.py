"""The sandbox servers themselves, spoken to with plain requests."""

import base64

import pytest
import requests

from sync_worker.sandbox import Fault

# These test the sandbox's lenient dialect itself; test_dialect.py covers the others.
pytestmark = pytest.mark.lenient_only

API = "/api/v2"


@pytest.fixture
def fx(sandbox):
    session = requests.Session()
    session.headers["api-key"] = sandbox.api_key
    return session


def list_url(sandbox, **query):
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{sandbox.flexperto_url}{API}/communication/conferences/archives?{params}"


def token(sandbox):
    credentials = base64.b64encode(f"{sandbox.client_id}:{sandbox.client_secret}".encode())
    answer = requests.post(
        f"{sandbox.totalexpert_url}/token",
        headers={"Authorization": "Basic " + credentials.decode()},
        json={"grant_type": "client_credentials"},
    )
    return answer


def test_flexperto_wants_the_api_key(sandbox):
    assert requests.get(list_url(sandbox)).status_code == 401


def test_listing_pages_and_filters(sandbox, fx):
    first = fx.get(list_url(sandbox, status="AVAILABLE", limit=2, offset=0)).json()
    second = fx.get(list_url(sandbox, status="AVAILABLE", limit=2, offset=2)).json()
    assert len(first["items"]) == 2 and len(second["items"]) == 1
    assert first["total"] == 3
    assert fx.get(list_url(sandbox, limit=1000)).status_code == 400


def test_packing_archive_turns_available_after_a_listing(sandbox, fx):
    packing = [r for r in sandbox.flexperto.records() if r["status"] == "PACKING"]
    assert len(packing) == 1
    fx.get(list_url(sandbox, status="AVAILABLE"))
    assert sandbox.flexperto.record(packing[0]["id"])["status"] == "PACKING"
    fx.get(list_url(sandbox, status="AVAILABLE"))
    assert sandbox.flexperto.record(packing[0]["id"])["status"] == "AVAILABLE"


def test_download_redirects_to_a_signed_url_that_expires(sandbox, fx, clock):
    record = next(r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE")
    base = f"{sandbox.flexperto_url}{API}/communication/archives/archives/{record['id']}"
    answer = fx.get(base + "/download", allow_redirects=False)
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith(sandbox.s3_url)
    assert requests.get(location).status_code == 200
    assert requests.get(location, headers={"api-key": "x"}).status_code == 403
    assert sandbox.s3.api_key_rejections == 1
    assert requests.get(location.replace("signature=", "signature=0")).status_code == 403
    ranged = requests.get(location, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and len(ranged.content) == 10
    assert requests.get(location, headers={"Range": "bytes=999999-"}).status_code == 416
    clock.advance(301)
    assert b"expired" in requests.get(location).content


def test_only_downloadable_archives_download(sandbox, fx):
    failed = next(r for r in sandbox.flexperto.records() if r["status"] == "FAILED")
    url = f"{sandbox.flexperto_url}{API}/communication/archives/archives/{failed['id']}/download"
    assert fx.get(url, allow_redirects=False).status_code == 409


def test_abandon_works_per_conference_and_is_idempotent(sandbox, fx):
    record = next(r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE")
    conference = record["subject"]["conference_id"]
    url = f"{sandbox.flexperto_url}{API}/communication/conferences/conferences/{conference}"
    assert fx.post(url + "/archive/abandon").status_code == 200
    assert fx.post(url + "/archive/abandon").status_code == 200
    assert sandbox.flexperto.record(record["id"])["status"] == "ABANDONED"
    missing = f"{sandbox.flexperto_url}{API}/communication/conferences/conferences/nope"
    assert fx.post(missing + "/archive/abandon").status_code == 404


def test_te_token_needs_basic_auth_and_is_limited(sandbox, clock):
    bad = requests.post(
        f"{sandbox.totalexpert_url}/token", json={"grant_type": "client_credentials"}
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_client"
    assert token(sandbox).status_code == 200
    assert token(sandbox).status_code == 429  # the bad one counted too: 2 an hour
    clock.advance(3601)
    assert token(sandbox).status_code == 200


def test_te_bearer_lists_and_insights(sandbox, clock):
    headers = {"Authorization": "Bearer " + token(sandbox).json()["access_token"]}
    te = sandbox.totalexpert_url
    assert requests.get(f"{te}/contacts", headers={"Authorization": "Bearer x"}).status_code == 401
    found = requests.get(
        f"{te}/contacts", params={"filter": "email=MAX.KUNDE@example.org"}, headers=headers
    ).json()
    assert len(found["items"]) == 2 and found["links"]["next"] is None
    contact = found["items"][0]
    body = {
        "type": {"type": "flexperto_conference_archived"},
        "contact": {"id": contact["id"]},
        "owner": {"id": contact["owner"]["id"]},
        "insight_date": "2026-11-20 09:45:00",
        "data": {"flexperto_archive_id": "a1"},
    }
    created = requests.post(f"{te}/insights", json=body, headers=headers)
    assert created.status_code == 201
    missing = requests.post(f"{te}/insights", json={**body, "contact": {"id": 1}}, headers=headers)
    assert missing.status_code == 422 and "'contact'" in missing.json()["error"]
    listed = requests.get(
        f"{te}/insights", params={"filter": f"contact_id={contact['id']}"}, headers=headers
    ).json()
    assert [i["data"] for i in listed["items"]] == [{"flexperto_archive_id": "a1"}]
    clock.advance(3600)
    assert requests.get(f"{te}/contacts", headers=headers).status_code == 401


def test_te_per_minute_limit(sandbox, clock):
    sandbox.totalexpert.set_limits(requests_per_minute=3)
    statuses = [requests.get(f"{sandbox.totalexpert_url}/heartbeat").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    clock.advance(60)
    assert requests.get(f"{sandbox.totalexpert_url}/heartbeat").status_code == 200
    assert sandbox.totalexpert.rate_limited_count == 1


def test_fault_parse():
    server, fault = Fault.parse("te:path=/insights,status=503,times=2,retry_after=5")
    assert server == "totalexpert"
    assert (fault.path, fault.status, fault.times, fault.headers) == (
        "/insights",
        503,
        2,
        {"Retry-After": "5"},
    )
    assert Fault.parse("s3:action=truncate,times=inf")[1].times is None
    with pytest.raises(ValueError):
        Fault.parse("ftp:status=500")
    with pytest.raises(ValueError):
        Fault.parse("te:colour=red")


def test_faults_are_consumed_in_order(sandbox):
    sandbox.add_fault("te", Fault(path="/heartbeat", status=503, times=2))
    codes = [requests.get(f"{sandbox.totalexpert_url}/heartbeat").status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    assert [r.status for r in sandbox.totalexpert.requests] == codes
