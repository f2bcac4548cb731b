"""What both clients share: how answers become errors, and which failures are tried again.

Answers come from a scripted HTTP server on loopback; waits go to a list, not to sleep.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from sync_worker.adapters.http import (
    ERROR_BODY_LIMIT,
    USER_AGENT,
    Answer,
    ApiError,
    Deadline,
    NetworkTime,
    RateFloor,
    TransientError,
    json_body,
    new_session,
    raise_for_status,
    retry_policy,
    send,
)
from sync_worker.config import HttpConfig
from sync_worker.core.clock import FakeClock
from sync_worker.sandbox import free_port

POLICY = HttpConfig(
    timeout_seconds=1.0, retries=3, retry_wait_seconds=1.0, retry_max_wait_seconds=10.0
)
NETWORK = NetworkTime()


class Script:
    """A loopback server answering each request with the next scripted
    (status, headers, body, delay), the last one over and over."""

    def __init__(self) -> None:
        self.answers: deque[tuple[int, dict[str, str], bytes, float]] = deque()
        self.seen: list[dict[str, str]] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                script.seen.append(dict(self.headers))
                status, headers, body, delay = (
                    script.answers.popleft() if len(script.answers) > 1 else script.answers[0]
                )
                time.sleep(delay)
                self.send_response(status)
                without_length = headers.pop("no-length", None) is not None
                for key, value in headers.items():
                    self.send_header(key, value)
                if without_length:  # the body ends when the connection does
                    self.close_connection = True
                elif "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                else:  # a length the body does not reach: the answer is cut short
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/x"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()

    def answer(self, status: int, body: object = b"", delay: float = 0.0, **headers: str) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers.append(
            (status, {k.replace("_", "-"): v for k, v in headers.items()}, data, delay)
        )

    def get(self, limit: int = 1_000_000) -> Answer:
        """The answer as the clients read it (through send)."""
        return send(
            "svc",
            lambda: requests.get(self.url, stream=True, timeout=5, allow_redirects=False),
            NETWORK,
            limit,
        )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def server():
    script = Script()
    yield script
    script.close()


@pytest.mark.parametrize(
    ("status", "maybe_processed"),
    [(429, False), (503, False), (500, True), (502, True), (504, True)],
)
def test_passing_faults_are_transient(server, status, maybe_processed):
    server.answer(status, {"error": "busy"})
    with pytest.raises(TransientError) as caught:
        raise_for_status("svc", server.get())
    assert caught.value.status == status and caught.value.maybe_processed is maybe_processed
    assert "busy" in str(caught.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 415, 422])
def test_refusals_are_final(server, status):
    server.answer(status, {"error": "Unable to find target", "error_description": "contact"})
    with pytest.raises(ApiError) as caught:
        raise_for_status("svc", server.get())
    assert not isinstance(caught.value, TransientError)
    assert str(caught.value) == f"svc: HTTP {status}: Unable to find target - contact"


@pytest.mark.parametrize("status", [200, 201, 204])
def test_success_passes(server, status):
    server.answer(status)
    raise_for_status("svc", server.get())


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_naming_its_host_unless_expected(server, status):
    server.answer(status, Location="https://Elsewhere.example/x?k=v")
    with pytest.raises(ApiError) as caught:
        raise_for_status("svc", server.get())
    assert not isinstance(caught.value, TransientError) and caught.value.status == status
    assert str(caught.value) == (
        f"svc: HTTP {status}: redirect to elsewhere.example refused: API calls follow no redirect"
    )
    raise_for_status("svc", server.get(), redirect_expected=True)


def test_a_session_follows_no_redirect_even_when_asked(server):
    server.answer(302, Location=server.url + "/elsewhere")
    session = new_session()
    response = session.get(server.url, allow_redirects=True)
    assert response.status_code == 302 and len(server.seen) == 1
    session.close()


def test_an_answer_past_the_limit_is_refused_unread(server):
    server.answer(200, {"items": ["x" * 5000]})
    assert server.get(limit=10_000).status == 200
    with pytest.raises(ApiError, match=r"answer larger than 1000 bytes refused \(HTTP 200\)"):
        server.get(limit=1000)


def test_an_answer_without_a_length_is_refused_as_it_passes_the_limit(server):
    server.answer(200, b"[" + b"1," * 100_000 + b"1]", no_length="yes")
    with pytest.raises(ApiError, match="answer larger than 1000 bytes"):
        server.get(limit=1000)


def test_an_error_answer_is_cut_short_not_refused(server):
    server.answer(500, b"x" * (3 * ERROR_BODY_LIMIT))
    with pytest.raises(TransientError, match="HTTP 500"):
        raise_for_status("svc", server.get(limit=1000))


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"message": "no such endpoint", "code": 404}, "no such endpoint"),
        (b"<html>  Bad\n gateway </html>", "<html> Bad gateway </html>"),
        (b"", "(empty body)"),
        (b"x" * 1000, "x" * 300),
    ],
)
def test_error_text_is_the_services_own_and_short(server, body, text):
    server.answer(418, body)
    with pytest.raises(ApiError, match="HTTP 418") as caught:
        raise_for_status("svc", server.get())
    assert str(caught.value).endswith(text)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), ("0.5", 0.5), ("-3", 0.0), ("Wed, 21 Oct 2026 07:28:00 GMT", None)],
)
def test_retry_after_in_seconds_or_left_to_our_backoff(server, header, seconds):
    server.answer(429, Retry_After=header)
    with pytest.raises(TransientError) as caught:
        raise_for_status("svc", server.get())
    assert caught.value.retry_after == seconds


def test_malformed_json_is_a_clear_error(server):
    server.answer(200, b'{"items": [')
    with pytest.raises(ApiError, match=r"malformed JSON in answer \(HTTP 200\)"):
        json_body("svc", server.get())


def test_an_answer_cut_short_may_hide_a_processed_request(server):
    server.answer(200, b"x" * 100, Content_Length="1000")
    with pytest.raises(TransientError, match="cut short") as caught:
        server.get()
    assert caught.value.maybe_processed


def test_a_refused_connection_surely_did_nothing():
    port = free_port()  # nobody listens on it
    with new_session() as session, pytest.raises(TransientError) as caught:
        send("svc", lambda: session.get(f"http://127.0.0.1:{port}/", timeout=1), NETWORK, 100)
    assert not caught.value.maybe_processed


def test_a_timeout_may_hide_a_processed_request(server):
    server.answer(200, delay=1.0)
    network = NetworkTime()
    with new_session() as session, pytest.raises(TransientError) as caught:
        send("svc", lambda: session.get(server.url, timeout=0.2, stream=True), network, 100)
    assert caught.value.maybe_processed
    assert network.seconds >= 0.2


def test_sessions_ignore_the_environment_and_say_who_they_are(server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would swallow every request
    server.answer(200)
    with new_session() as session:
        assert session.get(server.url, timeout=5).status_code == 200
    assert server.seen[-1]["User-Agent"] == USER_AGENT


# --- the retry policy ---------------------------------------------------------------------


class Calls:
    """A call failing with the given errors in turn, then answering "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def transient(status: int = 503, retry_after: float | None = None, maybe: bool = False):
    return TransientError("svc", "down", status, retry_after, maybe_processed=maybe)


def test_transient_failures_are_retried_with_growing_waits():
    waits: list[float] = []
    call = Calls(transient(), transient(), transient())
    assert retry_policy(POLICY, waits.append)(call) == "ok"
    assert call.count == 4
    assert [0.5 <= waits[0] <= 1, 1 <= waits[1] <= 2, 2 <= waits[2] <= 4] == [True] * 3


def test_retries_end_after_the_configured_number():
    call = Calls(*(transient() for _ in range(10)))
    with pytest.raises(TransientError):
        retry_policy(POLICY, lambda _s: None)(call)
    assert call.count == 1 + POLICY.retries


def test_retry_after_is_waited_exactly_unless_it_is_too_long():
    waits: list[float] = []
    assert retry_policy(POLICY, waits.append)(Calls(transient(429, 7.0))) == "ok"
    assert waits == [7.0]
    call = Calls(transient(429, 600.0))
    with pytest.raises(TransientError):
        retry_policy(POLICY, waits.append)(call)
    assert call.count == 1  # a later pass tries again, rather than this one waiting 10 min


def test_final_errors_are_not_retried():
    call = Calls(ApiError("svc", "HTTP 422", 422))
    with pytest.raises(ApiError):
        retry_policy(POLICY, lambda _s: None)(call)
    assert call.count == 1


def test_a_request_that_must_not_be_repeated_is_retried_only_if_surely_not_done():
    once_only = retry_policy(POLICY, lambda _s: None, idempotent=False)
    assert once_only(Calls(transient(503, maybe=False))) == "ok"
    call = Calls(transient(502, maybe=True))
    with pytest.raises(TransientError):
        once_only(call)
    assert call.count == 1


def test_a_transfer_above_the_floor_goes_on_and_one_below_it_is_cut():
    clock = FakeClock()
    steady = RateFloor("svc", 1024, 10, clock.now)
    for _ in range(100):  # 2 KiB/s for 100 s, in 0.5 s pieces
        clock.advance(0.5)
        steady.passed(1024)
    slowing = RateFloor("svc", 1024, 10, clock.now)
    for _ in range(20):  # 20 s at full speed, then a trickle
        clock.advance(1)
        slowing.passed(4096)
    with pytest.raises(TransientError, match="slower than 1 KiB/s over 10 s"):
        for _ in range(20):
            clock.advance(1)
            slowing.passed(10)


def test_an_answer_past_its_deadline_is_a_timeout():
    clock = FakeClock()
    deadline = Deadline(30, clock.now)
    clock.advance(30)
    deadline.check("svc")
    clock.advance(0.5)
    with pytest.raises(TransientError, match="deadline of 30 s") as caught:
        deadline.check("svc")
    assert caught.value.maybe_processed
