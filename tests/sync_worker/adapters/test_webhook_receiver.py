"""The webhook endpoint on its own, over real HTTP on loopback."""

from __future__ import annotations

import json
import socket
import threading

import pytest
import requests

from sync_worker.adapters.webhook_receiver import MAX_BODY, WebhookReceiver
from sync_worker.sandbox import free_port

SECRET = "F40mfum7pZC8DtdgGOYSijx26blP0HLs"
PAYLOAD = {"data": {"archive_id": "a-1", "archive_subject": {"conference_id": "c-1"}}}


@pytest.fixture
def receiver():
    woken = []
    port = free_port()
    running = WebhookReceiver(f"127.0.0.1:{port}", woken.append).start()
    running.accept("bank-a", [SECRET])
    yield running, woken, f"http://127.0.0.1:{port}"
    running.shutdown()


def test_a_delivery_to_the_secret_path_wakes_its_tenant_and_is_logged(receiver, log_lines):
    _running, woken, url = receiver
    answer = requests.post(f"{url}/callbacks/flexperto/{SECRET}", json=PAYLOAD, timeout=3)
    assert answer.status_code == 204
    assert woken == ["bank-a"]
    [event] = [e for e in log_lines() if e["event"] == "webhook.received"]
    assert (event["archive_id"], event["conference_id"], event["tenant"]) == (
        "a-1",
        "c-1",
        "bank-a",
    )
    assert SECRET not in json.dumps(log_lines())


@pytest.mark.parametrize("path", ["/", "/callbacks/flexperto", f"/{SECRET}x", f"/{SECRET[:-1]}"])
def test_any_other_path_is_404_and_wakes_nothing(receiver, path):
    _running, woken, url = receiver
    assert requests.post(url + path, json=PAYLOAD, timeout=3).status_code == 404
    assert woken == []


def test_only_post_is_taken(receiver):
    _running, woken, url = receiver
    assert requests.get(f"{url}/{SECRET}", timeout=3).status_code == 405
    assert requests.put(f"{url}/{SECRET}", data=b"{}", timeout=3).status_code == 405
    assert woken == []


def test_an_oversized_body_is_refused(receiver):
    _running, woken, url = receiver
    answer = requests.post(f"{url}/{SECRET}", data=b"x" * (MAX_BODY + 1), timeout=3)
    assert answer.status_code == 413 and woken == []


def test_an_unreadable_or_hostile_payload_still_wakes_the_job_but_is_not_logged(
    receiver, log_lines
):
    _running, woken, url = receiver
    hostile = {"data": {"archive_id": "../../etc/passwd", "archive_subject": "x"}}
    for body in (b"not json", json.dumps(hostile).encode(), b"[]"):
        assert requests.post(f"{url}/{SECRET}", data=body, timeout=3).status_code == 204
    assert woken == ["bank-a"] * 3
    logged = [e for e in log_lines() if e["event"] == "webhook.received"]
    assert [e.get("archive_id") for e in logged] == [None, None, None]
    assert logged[0]["payload"] == "unreadable"


def test_concurrent_duplicate_and_out_of_order_deliveries_are_all_answered(receiver):
    _running, woken, url = receiver
    bodies = [
        {"data": {"archive_id": f"a-{n % 3}", "archive_subject": {"conference_id": "c"}}}
        for n in (2, 0, 1, 0, 2, 2, 1, 0)
    ]
    answers = []

    def deliver(body):
        answers.append(requests.post(f"{url}/{SECRET}", json=body, timeout=3).status_code)

    threads = [threading.Thread(target=deliver, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [204] * len(bodies)
    assert woken == ["bank-a"] * len(bodies)


def test_rotated_secrets_replace_the_tenants_old_ones(receiver):
    running, woken, url = receiver
    running.accept("bank-b", ["other-secret"])
    running.accept("bank-a", ["new-secret"])
    assert requests.post(f"{url}/{SECRET}", json=PAYLOAD, timeout=3).status_code == 404
    assert requests.post(f"{url}/new-secret", json=PAYLOAD, timeout=3).status_code == 204
    assert requests.post(f"{url}/other-secret", json=PAYLOAD, timeout=3).status_code == 204
    assert woken == ["bank-a", "bank-b"]


def test_a_client_that_never_sends_its_body_is_dropped_without_a_traceback(receiver, capfd):
    _running, woken, url = receiver
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            f"POST /{SECRET} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode()
        )
        conn.recv(1024)  # the server gives up on the body after its read timeout
    assert "Traceback" not in capfd.readouterr().err
    assert woken == []
