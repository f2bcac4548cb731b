"""The start and end-of-pass pings, against a real server on loopback."""

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from sync_worker.adapters import healthcheck


@pytest.fixture
def pings():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            received.append((self.path, self.rfile.read(length).decode()))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ping/abc", received
    server.shutdown()
    server.server_close()


def test_success_and_failure_pings(pings):
    url, received = pings
    healthcheck.ping(url, ok=True, summary='{"outcomes": {}}')
    healthcheck.ping(url, ok=False, summary="failed")
    assert received == [("/ping/abc", '{"outcomes": {}}'), ("/ping/abc/fail", "failed")]


def test_a_start_ping_comes_first_with_no_body(pings):
    url, received = pings
    healthcheck.ping_start(url)
    healthcheck.ping_start("")
    assert received == [("/ping/abc/start", "")]


def test_unreachable_ping_is_logged_not_raised(log_lines):
    healthcheck.ping("http://127.0.0.1:9/nothing-listens", ok=True, summary="")
    assert [e["event"] for e in log_lines()] == ["healthcheck.failed"]


def test_no_url_no_ping(pings):
    healthcheck.ping("", ok=True, summary="")
    assert pings[1] == []


def test_a_pass_pings_when_configured(pings, sandbox, tmp_path, clock):
    from sync_worker.app.runner import run_pass
    from sync_worker.config import load_config
    from tests.conftest import write_config

    url, received = pings
    config = load_config(
        write_config(tmp_path, sandbox, f'[monitoring]\nhealthcheck_url = "{url}"\n'), env={}
    )
    run_pass(config, clock)
    assert [path for path, _ in received] == ["/ping/abc/start", "/ping/abc"]
