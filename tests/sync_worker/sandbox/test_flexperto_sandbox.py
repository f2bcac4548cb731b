"""The sandbox Flexperto API, its storage host, and the Sandbox object itself."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tomllib
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from sync_worker.core.clock import FakeClock
from sync_worker.sandbox import Sandbox, free_port

# These test the sandbox's lenient dialect itself; test_dialect.py covers the others.
pytestmark = pytest.mark.lenient_only

LIST = "/communication/conferences/archives"


def archives(sandbox: Sandbox, status: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.flexperto.records() if r["status"] == status]


def download_location(fx: requests.Session, fx_api: str, archive_id: str) -> str:
    answer = fx.get(
        f"{fx_api}/communication/archives/archives/{archive_id}/download", allow_redirects=False
    )
    assert answer.status_code == 302, answer.text
    return answer.headers["Location"]


def abandon(fx: requests.Session, fx_api: str, conference_id: str) -> requests.Response:
    return fx.post(
        f"{fx_api}/communication/conferences/conferences/{conference_id}/archive/abandon"
    )


# --- auth, routing ------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "wrong"])
def test_every_call_needs_the_api_key(sandbox, fx_api, key):
    headers = {"api-key": key} if key else {}
    answer = requests.get(fx_api + LIST, headers=headers, timeout=5)
    assert answer.status_code == 401
    assert answer.json()["code"] == 401 and answer.json()["message"]


def test_unknown_path_and_wrong_method(fx, fx_api):
    assert fx.get(f"{fx_api}/communication/nothing").status_code == 404
    wrong = fx.post(fx_api + LIST)
    assert wrong.status_code == 405 and wrong.json()["code"] == 405


# --- listing ------------------------------------------------------------------------------


def test_listing_shape_defaults_and_record_json(sandbox, fx, fx_api):
    body = fx.get(fx_api + LIST).json()
    assert (body["total"], body["limit"], body["offset"]) == (5, 100, 0)
    record = body["items"][0]
    assert set(record) == {
        "id",
        "status",
        "error",
        "sha256CheckSum",
        "created_at",
        "size",
        "subject",
    }
    assert re.fullmatch(r"[0-9a-f]{64}", record["sha256CheckSum"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["created_at"])
    subject = record["subject"]
    assert {"conference_id", "start", "end", "moderator", "participants"} <= set(subject)
    assert set(subject["moderator"]) == {"account_id", "email", "name"}
    assert subject["moderator"]["email"] == "anna.expert@bank.example"


def test_status_filter_paging_and_limits(sandbox, fx, fx_api):
    first = fx.get(fx_api + LIST, params={"status": "AVAILABLE", "limit": 2}).json()
    second = fx.get(fx_api + LIST, params={"status": "AVAILABLE", "limit": 2, "offset": 2}).json()
    assert [len(first["items"]), len(second["items"]), first["total"]] == [2, 1, 3]
    both = fx.get(fx_api + LIST, params={"status": "FAILED,PACKING"}).json()["items"]
    assert sorted(r["status"] for r in both) == ["FAILED", "PACKING"]
    assert fx.get(fx_api + LIST, params={"limit": 500}).status_code == 200
    for bad in ({"limit": 501}, {"limit": 0}, {"offset": -1}, {"limit": "x"}):
        assert fx.get(fx_api + LIST, params=bad).status_code == 400


def test_order_is_by_created_at_then_id(sandbox, fx, fx_api):
    early = datetime(2026, 11, 19, 8, tzinfo=UTC)
    a = sandbox.flexperto.add_archive(archive_id="b-late-id", start=early)
    b = sandbox.flexperto.add_archive(archive_id="a-early-id", start=early)
    ids = [r["id"] for r in fx.get(fx_api + LIST).json()["items"]]
    assert ids[:2] == [b["id"], a["id"]]
    assert ids[2:] == [r["id"] for r in sandbox.flexperto.records()[:5]]


def test_raw_records_and_duplicates_are_listed_after_the_rest(sandbox, fx, fx_api):
    hostile = {"id": "../../etc/passwd", "status": "AVAILABLE", "subject": None}
    sandbox.flexperto.add_raw_record(hostile)
    sandbox.flexperto.add_raw_record("not even an object")
    first = archives(sandbox, "AVAILABLE")[0]
    sandbox.flexperto.duplicate_in_listing(first["id"])
    pages = [
        fx.get(fx_api + LIST, params={"limit": 5, "offset": offset}).json()["items"]
        for offset in (0, 5)
    ]
    assert pages[1] == [hostile, "not even an object", first]
    assert first in pages[0]


def test_packing_turns_available_after_the_configured_listings(tmp_path, clock):
    with Sandbox(tmp_path, clock=clock, packing_listings=2) as sandbox, requests.Session() as s:
        s.headers["api-key"] = sandbox.api_key
        url = f"{sandbox.flexperto_url}/api/v2{LIST}"
        [packing] = archives(sandbox, "PACKING")

        def status_after(archive_id: str, **query: Any) -> str:
            assert s.get(url, params=query).status_code == 200
            return sandbox.flexperto.record(archive_id)["status"]

        seeded = packing["id"]
        assert status_after(seeded, status="AVAILABLE", offset=2) == "PACKING"  # not page 1
        assert status_after(seeded, status="FAILED") == "PACKING"  # cannot show it AVAILABLE
        assert status_after(seeded, status="AVAILABLE") == "PACKING"
        assert status_after(seeded) == "PACKING"
        assert status_after(seeded, status="AVAILABLE,PACKING") == "AVAILABLE"
        later = sandbox.flexperto.add_archive(status="PACKING")["id"]  # counts from now on
        assert status_after(later) == "PACKING"
        assert status_after(later) == "PACKING"
        assert status_after(later) == "AVAILABLE"


def test_failed_record_carries_its_error(sandbox, fx, fx_api):
    [failed] = archives(sandbox, "FAILED")
    assert failed["error"] == "recording missing"
    answer = fx.get(f"{fx_api}/communication/archives/archives/{failed['id']}")
    assert answer.json() == failed


def test_get_one_record(sandbox, fx, fx_api):
    record = archives(sandbox, "AVAILABLE")[0]
    assert fx.get(f"{fx_api}/communication/archives/archives/{record['id']}").json() == record
    missing = fx.get(f"{fx_api}/communication/archives/archives/nope")
    assert missing.status_code == 404 and missing.json()["code"] == 404


# --- download and the storage host --------------------------------------------------------


def test_download_redirects_to_a_signed_url_on_another_host(sandbox, fx, fx_api, clock):
    record = archives(sandbox, "AVAILABLE")[0]
    location = download_location(fx, fx_api, record["id"])
    parts = urlsplit(location)
    query = parse_qs(parts.query)
    assert location.startswith(f"{sandbox.s3_url}/archives/{record['id']}.zip?")
    assert int(query["expires"][0]) == int(clock.now()) + 300
    assert re.fullmatch(r"[0-9a-f]{64}", query["signature"][0])
    answer = requests.get(location, timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/zip"
    assert answer.headers["Accept-Ranges"] == "bytes"
    assert int(answer.headers["Content-Length"]) == record["size"] == len(answer.content)
    assert hashlib.sha256(answer.content).hexdigest() == record["sha256CheckSum"]
    names = zipfile.ZipFile(io.BytesIO(answer.content)).namelist()
    assert sorted(names) == [
        "mithra/contract.pdf",
        "themis/chat.json",
        "themis/metadata.json",
        "themis/recording.mp4",
    ]
    assert sandbox.s3.api_key_rejections == 0


def test_download_only_when_available_or_abandoned(sandbox, fx, fx_api):
    for status in ("FAILED", "PACKING"):
        [record] = archives(sandbox, status)
        url = f"{fx_api}/communication/archives/archives/{record['id']}/download"
        answer = fx.get(url, allow_redirects=False)
        assert answer.status_code == 409
        assert answer.json()["message"] == f"archive not downloadable in status {status}"
    assert fx.get(f"{fx_api}/communication/archives/archives/nope/download").status_code == 404
    record = archives(sandbox, "AVAILABLE")[0]
    abandon(fx, fx_api, record["subject"]["conference_id"])
    assert requests.get(download_location(fx, fx_api, record["id"]), timeout=5).ok


def test_signed_url_expires_after_five_minutes(sandbox, fx, fx_api, clock):
    location = download_location(fx, fx_api, archives(sandbox, "AVAILABLE")[0]["id"])
    clock.advance(300)
    assert requests.get(location, timeout=5).status_code == 200
    clock.advance(1)
    expired = requests.get(location, timeout=5)
    assert expired.status_code == 403
    assert expired.headers["Content-Type"] == "application/xml"
    assert expired.text == (
        "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    )


def test_bad_signatures_are_refused(sandbox, fx, fx_api):
    records = archives(sandbox, "AVAILABLE")
    location = download_location(fx, fx_api, records[0]["id"])
    other_key = location.replace(records[0]["id"], records[1]["id"])
    for url in (
        location.replace("signature=", "signature=0"),
        other_key,
        location.split("?")[0],
        re.sub(r"expires=\d+", "expires=9999999999", location),
    ):
        answer = requests.get(url, timeout=5)
        assert answer.status_code == 403 and "<Code>AccessDenied</Code>" in answer.text
    unknown = requests.get(f"{sandbox.s3_url}/archives/nope.zip", timeout=5)
    assert unknown.status_code == 403  # no signature, no hint whether the key exists


def test_storage_host_rejects_any_api_key(sandbox, fx, fx_api):
    location = download_location(fx, fx_api, archives(sandbox, "AVAILABLE")[0]["id"])
    assert fx.get(location).status_code == 403
    assert requests.get(location, headers={"api-key": ""}, timeout=5).status_code == 403
    assert sandbox.s3.api_key_rejections == 2
    assert requests.get(location, timeout=5).status_code == 200


def test_ranges(sandbox, fx, fx_api):
    record = sandbox.flexperto.add_archive(content=bytes(range(256)) * 4)
    location = download_location(fx, fx_api, record["id"])

    def get(spec: str) -> requests.Response:
        return requests.get(location, headers={"Range": spec}, timeout=5)

    tail = get("bytes=1000-")
    assert tail.status_code == 206 and tail.content == (bytes(range(256)) * 4)[1000:]
    assert tail.headers["Content-Range"] == "bytes 1000-1023/1024"
    middle = get("bytes=10-19")
    assert middle.content == bytes(range(10, 20))
    assert middle.headers["Content-Range"] == "bytes 10-19/1024"
    assert get("bytes=1020-5000").content == bytes(range(252, 256))
    for bad in ("bytes=1024-", "bytes=5-2", "lines=1-2"):
        refused = get(bad)
        assert refused.status_code == 416 and refused.headers["Content-Range"] == "bytes */1024"


def test_storage_host_methods_and_head(sandbox, fx, fx_api):
    record = archives(sandbox, "AVAILABLE")[0]
    location = download_location(fx, fx_api, record["id"])
    head = requests.head(location, timeout=5)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(record["size"])
    assert requests.put(location, data=b"x", timeout=5).status_code == 405


# --- abandon ------------------------------------------------------------------------------


def test_abandon_claims_every_available_archive_of_the_conference(sandbox, fx, fx_api, clock):
    record = archives(sandbox, "AVAILABLE")[0]
    conference = record["subject"]["conference_id"]
    sibling = sandbox.flexperto.add_archive(conference_id=conference)
    packing = sandbox.flexperto.add_archive(conference_id=conference, status="PACKING")
    clock.advance(42)
    answer = abandon(fx, fx_api, conference)
    assert answer.status_code == 200
    assert answer.json() == {"conference_id": conference, "status": "ABANDONED"}
    for archive in (record, sibling):
        assert sandbox.flexperto.record(archive["id"])["status"] == "ABANDONED"
        assert sandbox.flexperto.abandoned_at(archive["id"]) == clock.now()
    assert sandbox.flexperto.record(packing["id"])["status"] == "PACKING"
    assert sandbox.flexperto.abandoned_at(packing["id"]) is None
    clock.advance(5)
    assert abandon(fx, fx_api, conference).status_code == 200  # idempotent
    assert sandbox.flexperto.abandoned_at(record["id"]) == clock.now() - 5
    assert abandon(fx, fx_api, "c-0000").status_code == 404
    abandon_url = f"{fx_api}/communication/conferences/conferences/{conference}/archive/abandon"
    assert fx.get(abandon_url).status_code == 405
    assert len(archives(sandbox, "ABANDONED")) == 2


# --- state API ----------------------------------------------------------------------------


def test_big_archive_is_written_by_size(sandbox, fx, fx_api):
    size = 3 * 1024 * 1024 + 17
    record = sandbox.flexperto.add_archive(size=size)
    blob = Path(sandbox.flexperto.blob(record["id"]).path)
    assert blob.stat().st_size == size == record["size"]
    assert sandbox.flexperto.blob_sha256(record["id"]) == record["sha256CheckSum"]
    with blob.open("rb") as handle:
        first, second = handle.read(1024 * 1024), handle.read(1024 * 1024)
    assert first != second
    served = requests.get(download_location(fx, fx_api, record["id"]), timeout=5).content
    assert hashlib.sha256(served).hexdigest() == record["sha256CheckSum"]


def test_content_ids_and_mutators(sandbox):
    flexperto = sandbox.flexperto
    record = flexperto.add_archive(content=b"hello", archive_id="fixed", conference_id="c-1")
    assert record["sha256CheckSum"] == hashlib.sha256(b"hello").hexdigest()
    assert (record["id"], record["subject"]["conference_id"], record["size"]) == (
        "fixed",
        "c-1",
        5,
    )
    generated = flexperto.add_archive()
    assert re.fullmatch(r"[0-9a-f-]{36}", generated["id"])
    assert re.fullmatch(r"c-\d{4}", generated["subject"]["conference_id"])
    with pytest.raises(ValueError):
        flexperto.add_archive(archive_id="fixed")
    flexperto.corrupt_blob("fixed")
    assert flexperto.blob_sha256("fixed") != record["sha256CheckSum"]
    flexperto.set_checksum("fixed", "0" * 64)
    flexperto.set_status("fixed", "EXPIRED")
    assert flexperto.record("fixed")["sha256CheckSum"] == "0" * 64
    assert flexperto.record("fixed")["status"] == "EXPIRED"
    flexperto.record("fixed")["status"] = "changed on a copy"
    assert flexperto.record("fixed")["status"] == "EXPIRED"


def test_seed_is_deterministic(tmp_path):
    def snapshot(folder: Path) -> list[tuple[str, str, str]]:
        sandbox = Sandbox(folder, clock=FakeClock())
        try:
            return [
                (r["id"], r["subject"]["conference_id"], r["sha256CheckSum"])
                for r in sandbox.flexperto.records()
            ]
        finally:
            sandbox.stop()

    first = snapshot(tmp_path / "one")
    assert len(first) == 5 and first == snapshot(tmp_path / "two")


def test_seed_people(sandbox):
    by_moderator = {r["subject"]["moderator"]["email"]: r for r in archives(sandbox, "AVAILABLE")}
    assert set(by_moderator) == {
        "anna.expert@bank.example",
        "bernd.berater@bank.example",
        "kim.extern@partner.example",
    }
    anna = {p["email"] for p in by_moderator["anna.expert@bank.example"]["subject"]["participants"]}
    assert {"max.kunde@example.org", "nobody@nowhere.example"} <= anna
    [packing] = archives(sandbox, "PACKING")
    assert packing["subject"]["moderator"]["email"] == "anna.expert@bank.example"


def test_unseeded_sandbox_is_empty(tmp_path):
    with Sandbox(tmp_path, clock=FakeClock(), seed=False) as sandbox:
        assert sandbox.flexperto.records() == [] and sandbox.totalexpert.users() == []


# --- the Sandbox object -------------------------------------------------------------------


def test_urls_secrets_and_config(sandbox):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sandbox.flexperto_url)
    assert re.fullmatch(r"http://127\.0\.0\.[12]:\d+", sandbox.s3_url)
    assert sandbox.s3_url != sandbox.flexperto_url
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", sandbox.totalexpert_url)
    assert len({sandbox.api_key, sandbox.client_id, sandbox.client_secret}) == 3
    config = tomllib.loads(sandbox.config_toml('arch "ives"', "state\\db"))
    assert config["flexperto"] == {
        "base_url": sandbox.flexperto_url,
        "api_key": sandbox.api_key,
        "page_size": 100,
        "download_hosts_allowed": [sandbox.s3_url.removeprefix("http://")],  # exactly it
    }
    assert config["totalexpert"] == {
        "base_url": sandbox.totalexpert_url,
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "insight_type": "flexperto_conference_archived",
        "requests_per_minute": 1000,
        "token_requests_per_hour": 2,
    }
    assert config["storage"] == {"archive_dir": 'arch "ives"'}
    assert config["state"] == {"database": "state\\db"}


def test_storage_host_on_a_second_loopback_address_when_possible(sandbox):
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 cannot be bound here")
    assert sandbox.s3_url.startswith("http://127.0.0.2:")


def test_given_ports_are_used(tmp_path):
    ports = [free_port() for _ in range(3)]
    with Sandbox(tmp_path, clock=FakeClock(), seed=False, ports=tuple(ports)) as sandbox:
        assert sandbox.flexperto_url.endswith(f":{ports[0]}")
        assert sandbox.s3_url.endswith(f":{ports[1]}")
        assert sandbox.totalexpert_url.endswith(f":{ports[2]}/v1")


def test_request_log(sandbox, fx, fx_api, clock):
    clock.advance(1)
    fx.get(fx_api + LIST, params={"status": "AVAILABLE", "limit": 7})
    requests.get(f"{sandbox.totalexpert_url}/heartbeat", timeout=5)
    fx.post(f"{fx_api}/communication/conferences/conferences/c-9/archive/abandon", data=b"{}")
    listed, heartbeat, abandoned = sandbox.requests()
    assert (listed.server, listed.method, listed.path) == ("flexperto", "GET", "/api/v2" + LIST)
    assert listed.query == {"status": "AVAILABLE", "limit": "7"}
    assert listed.headers["api-key"] == sandbox.api_key
    assert listed.status == 200 and listed.received_at == listed.finished_at == clock.now()
    assert (heartbeat.server, heartbeat.status) == ("totalexpert", 200)
    assert (abandoned.body, abandoned.status) == (b"{}", 404)
    assert sandbox.flexperto.requests == [listed, abandoned]
    sandbox.flexperto.clear_requests()
    assert sandbox.flexperto.requests == [] and sandbox.requests() == [heartbeat]


def test_concurrent_requests_are_all_served_and_logged(sandbox, fx_api):
    def list_once(_: int) -> int:
        answer = requests.get(fx_api + LIST, headers={"api-key": sandbox.api_key}, timeout=5)
        return answer.status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(list_once, range(64)))
    assert statuses == [200] * 64
    assert len(sandbox.flexperto.requests) == 64


def test_stop_closes_kept_alive_connections(tmp_path):
    sandbox = Sandbox(tmp_path, clock=FakeClock()).start()
    with requests.Session() as session:
        session.headers["api-key"] = sandbox.api_key
        url = f"{sandbox.flexperto_url}/api/v2{LIST}"
        assert session.get(url, timeout=5).status_code == 200
        sandbox.stop()
        with pytest.raises(requests.ConnectionError):
            session.get(url, timeout=5)
    sandbox.stop()  # twice is harmless
