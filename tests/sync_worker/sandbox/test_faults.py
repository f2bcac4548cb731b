"""Fault specs, fault lists, and every fault action against the running servers."""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from sync_worker.sandbox import Fault
from sync_worker.sandbox.faults import FaultList
from sync_worker.sandbox.http import TRICKLE_BYTES

# These test the sandbox's lenient dialect itself; test_dialect.py covers the others.
pytestmark = pytest.mark.lenient_only

LIST = "/communication/conferences/archives"


def available_id(sandbox: Any) -> str:
    return next(r["id"] for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE")


def location(sandbox: Any, fx: requests.Session, fx_api: str) -> str:
    url = f"{fx_api}/communication/archives/archives/{available_id(sandbox)}/download"
    return fx.get(url, allow_redirects=False).headers["Location"]


# --- Fault.parse --------------------------------------------------------------------------


def test_parse_every_key():
    server, fault = Fault.parse(
        "te:method=post,path=/insights$,status=503,action=respond,delay=0.5,times=2,"
        "retry_after=7,body={}"
    )
    assert server == "totalexpert"
    assert (fault.method, fault.path, fault.status, fault.action) == (
        "post",
        "/insights$",
        503,
        "respond",
    )
    assert (fault.delay, fault.times, fault.headers, fault.body) == (
        0.5,
        2,
        {"Retry-After": "7"},
        "{}",
    )
    assert fault.matches("POST", "/v1/insights") and not fault.matches("GET", "/v1/insights")


def test_parse_defaults_and_servers():
    for spec, server in (
        ("flexperto:", "flexperto"),
        ("s3:", "s3"),
        ("totalexpert:", "totalexpert"),
    ):
        assert Fault.parse(spec + "action=reset")[0] == server
    _, fault = Fault.parse("s3:action=truncate,times=inf")
    assert (fault.method, fault.path, fault.times, fault.action) == (None, ".*", None, "truncate")
    assert Fault.parse("flexperto:status=500")[1].times == 1


@pytest.mark.parametrize(
    "spec",
    [
        "ftp:status=500",
        "status=500",
        "te:colour=red",
        "te:status",
        "te:status=abc",
        "te:delay=soon,action=delay",
        "te:times=0,status=500",
        "te:action=explode",
        "te:action=respond",
        "te:action=call",
        "te:path=(,status=500",
    ],
)
def test_parse_rejects(spec):
    with pytest.raises(ValueError):
        Fault.parse(spec)


# --- FaultList ----------------------------------------------------------------------------


def test_fault_list_order_use_and_clear():
    faults = FaultList()
    once = Fault(method="GET", path="^/a", status=500)
    always = Fault(path="/a", status=503, times=None)
    faults.add(once)
    faults.add(always)
    assert faults.take("POST", "/a") is always  # method must match
    assert faults.take("GET", "/a") is once
    assert [faults.take("GET", "/a") for _ in range(3)] == [always] * 3
    assert faults.take("GET", "/b") is None
    assert once.times == 1  # the Fault itself is not used up, only its place in the list
    faults.clear()
    assert len(faults) == 0 and faults.take("GET", "/a") is None


# --- actions against the servers ----------------------------------------------------------


def test_respond_uses_each_apis_error_body(sandbox, fx, fx_api, te):
    sandbox.add_fault("flexperto", Fault(path=LIST, status=503))
    sandbox.add_fault("te", Fault(path="/users$", status=500))
    sandbox.add_fault("s3", Fault(status=500))
    flexperto = fx.get(fx_api + LIST)
    assert (flexperto.status_code, flexperto.json()["code"]) == (503, 503)
    assert "message" in flexperto.json()
    total_expert = te.get(f"{sandbox.totalexpert_url}/users")
    assert total_expert.status_code == 500 and "error" in total_expert.json()
    storage = requests.get(f"{sandbox.s3_url}/archives/x.zip", timeout=5)
    assert storage.status_code == 500 and storage.text.startswith("<Error>")
    assert fx.get(fx_api + LIST).status_code == 200  # times=1: used up


def test_respond_with_headers_and_body(sandbox, te):
    sandbox.add_fault("te", Fault.parse("te:path=/users,status=429,retry_after=3,times=2")[1])
    sandbox.add_fault("te", Fault(path="/users", status=418, body=b"teapot", headers={"X": "y"}))
    url = f"{sandbox.totalexpert_url}/users"
    first, second, third, fourth = (te.get(url) for _ in range(4))
    assert [first.status_code, second.status_code] == [429, 429]
    assert first.headers["Retry-After"] == "3"
    assert (third.status_code, third.content, third.headers["X"]) == (418, b"teapot", "y")
    assert fourth.status_code == 200
    assert [r.status for r in sandbox.totalexpert.requests[-4:]] == [429, 429, 418, 200]
    assert sandbox.totalexpert.rate_limited_count == 0  # injected, not the limits


def test_reset_drops_the_connection(sandbox, fx, fx_api):
    sandbox.add_fault("flexperto", Fault(method="GET", path=LIST, action="reset"))
    with pytest.raises(requests.ConnectionError):
        fx.get(fx_api + LIST)
    assert fx.get(fx_api + LIST).status_code == 200  # a new connection is served
    reset, served = sandbox.flexperto.requests
    assert (reset.status, served.status) == (0, 200)


def test_delay_outlasts_a_client_timeout(sandbox, fx, fx_api):
    sandbox.add_fault("flexperto", Fault(path=LIST, action="delay", delay=0.3))
    with pytest.raises(requests.Timeout):  # the client gave up before the answer came
        fx.get(fx_api + LIST, timeout=0.1)
    assert requests.get(fx_api + LIST, headers=dict(fx.headers), timeout=5).status_code == 200


def test_truncate_sends_half_the_body(sandbox, fx, fx_api):
    url = urlsplit(location(sandbox, fx, fx_api))
    sandbox.add_fault("s3", Fault(action="truncate"))
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    try:
        connection.request("GET", f"{url.path}?{url.query}")
        answer = connection.getresponse()
        assert answer.status == 200
        size = int(answer.headers["Content-Length"])
        with pytest.raises(http.client.IncompleteRead) as short:
            answer.read()
    finally:
        connection.close()
    assert len(short.value.partial) == size // 2
    assert len(requests.get(url.geturl(), timeout=5).content) == size


def test_trickle_sends_the_whole_body_slowly_on_the_sandbox_clock(sandbox, fx, fx_api, clock):
    url = f"{fx_api}/communication/archives/archives/{available_id(sandbox)}"
    whole = fx.get(url).content
    sandbox.add_fault("flexperto", Fault(path="/archives/archives/", action="trickle", delay=2))
    started = clock.now()
    answer = fx.get(url)
    assert answer.status_code == 200 and answer.content == whole
    assert clock.now() - started == 2 * -(-len(whole) // TRICKLE_BYTES)


def test_malformed_json(sandbox, fx, fx_api):
    sandbox.add_fault("flexperto", Fault(path=LIST, action="malformed_json"))
    answer = fx.get(fx_api + LIST)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.content == b'{"items": ['
    with pytest.raises(requests.JSONDecodeError):
        answer.json()


def test_call_changes_state_before_the_answer(sandbox, fx, fx_api):
    target = available_id(sandbox)
    seen: list[Any] = []

    def to_packing(state: Any) -> None:
        seen.append(state)
        state.set_status(target, "PACKING")

    sandbox.add_fault(
        "flexperto", Fault(path=f"{target}/download$", action="call", callback=to_packing)
    )
    url = f"{fx_api}/communication/archives/archives/{target}/download"
    answer = fx.get(url, allow_redirects=False)
    assert answer.status_code == 409
    assert seen == [sandbox.flexperto]


def test_faults_are_per_server_and_clearable(sandbox, fx, fx_api):
    sandbox.add_fault("te", Fault(status=503, times=None))
    assert fx.get(fx_api + LIST).status_code == 200
    heartbeat = f"{sandbox.totalexpert_url}/heartbeat"
    assert requests.get(heartbeat, timeout=5).status_code == 503
    sandbox.totalexpert.faults.clear()
    assert requests.get(heartbeat, timeout=5).status_code == 200
    with pytest.raises(KeyError):
        sandbox.add_fault("ftp", Fault(status=500))
