"""The HTTP boundary under attack: API answers that redirect elsewhere (the api-key, the
client secret and the bearer token must not follow), download redirects to internal
addresses, and peers that trickle their answers to hold a pass forever.

The foreign and internal hosts are servers of this module on loopback that record every
byte sent to them; the trickles are the sandbox's ``trickle`` fault, whose pauses pass on
the sandbox's fake clock (the worker's own), so no test waits for them.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sync_worker.adapters.flexperto.client import FlexpertoClient
from sync_worker.adapters.http import ApiError, TransientError
from sync_worker.adapters.totalexpert import TotalExpertClient, TotalExpertSession
from sync_worker.app.runner import run_pass
from sync_worker.config import Config, ConfigError, load_config
from sync_worker.core.clock import FakeClock
from sync_worker.sandbox import Fault, Sandbox
from sync_worker.state.db import open_database
from sync_worker.state.te_access import SharedAccess
from tests.conftest import write_config

REDIRECTS = (301, 302, 303, 307, 308)


class RecordingHost:
    """A host the worker must never talk to: keeps the first bytes of every connection
    that sends any (an HTTP request's head, a TLS hello), and answers 200 with a body that
    would pass for a listing, a record or a token."""

    BODY = b'{"items": [], "id": "x", "access_token": "stolen", "status": "ABANDONED"}'

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.received: list[bytes] = []
        recording = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = _read_head(self.request)
                if not head:
                    return
                recording.received.append(head)
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(recording.BODY)}\r\n".encode()
                    + b"Connection: close\r\n\r\n"
                    + recording.BODY
                )

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str = "/x", scheme: str = "http", host: str | None = None) -> str:
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _read_head(connection: socket.socket) -> bytes:
    connection.settimeout(2)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            piece = connection.recv(65536)
            if not piece:
                break
            data += piece
            if not data[:1].isalpha():  # not HTTP (a TLS hello): keep what came
                break
    except OSError:
        pass
    return data


def _foreign_address() -> str:
    """127.0.0.3 where it can be bound (Linux): another host than every sandbox server."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.3", 0))
        return "127.0.0.3"
    except OSError:
        return "127.0.0.1"


@pytest.fixture
def foreign() -> Iterator[RecordingHost]:
    host = RecordingHost(_foreign_address())
    yield host
    host.close()


@pytest.fixture
def internal() -> Iterator[RecordingHost]:
    """A loopback service that is not the storage host (the worker's metrics port, say)."""
    host = RecordingHost("127.0.0.1")
    yield host
    host.close()


@pytest.fixture
def flexperto_client(config: Config, clock: FakeClock) -> Iterator[FlexpertoClient]:
    client = FlexpertoClient(config.flexperto, config.http, clock)
    yield client
    client.close()


@pytest.fixture
def te_client(config: Config, clock: FakeClock, tmp_path) -> Iterator[TotalExpertClient]:
    access = SharedAccess.for_config(open_database(tmp_path / "te.db"), config.totalexpert, 5.0)
    client = TotalExpertClient(TotalExpertSession(config.totalexpert, config.http, access, clock))
    yield client
    client.close()


def first_available(sandbox: Sandbox) -> dict:
    return next(r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE")


def archive_row(config: Config, archive_id: str) -> dict:
    return open_database(config.state.database)["archives"].get(archive_id)


# --- finding 4: API calls never follow a redirect -----------------------------------------

FLEXPERTO_CALLS: dict[str, tuple[str, Callable[[FlexpertoClient, dict], object]]] = {
    "list": ("/conferences/archives$", lambda c, _r: list(c.list_records(["AVAILABLE"]))),
    "record": ("/archives/archives/[^/]+$", lambda c, r: c.get_record(r["id"])),
    "abandon": (
        "/archive/abandon$",
        lambda c, r: c.abandon(r["subject"]["conference_id"]),
    ),
    "subscribe": (
        "/subscriptions/webhook$",
        lambda c, _r: c.subscribe_webhook("https://hooks.example.org/x", "archive.available"),
    ),
    "unsubscribe": ("/subscriptions/sub-1$", lambda c, _r: c.unsubscribe_webhook("sub-1")),
}


@pytest.mark.parametrize("call", sorted(FLEXPERTO_CALLS))
def test_a_flexperto_api_redirect_is_an_error_and_the_api_key_stays_home(
    sandbox, flexperto_client, foreign, call
):
    path, request = FLEXPERTO_CALLS[call]
    record = first_available(sandbox)
    for status in REDIRECTS:
        sandbox.add_fault(
            "flexperto", Fault(path=path, status=status, headers={"Location": foreign.url()})
        )
        with pytest.raises(ApiError, match=f"HTTP {status}.*redirect to {foreign.host}"):
            request(flexperto_client, record)
        sandbox.service("flexperto").faults.clear()
    assert foreign.received == []
    assert all(sandbox.api_key.encode() not in head for head in foreign.received)


TE_CALLS: dict[str, tuple[str, Callable[[TotalExpertClient], object]]] = {
    "token": ("/token$", lambda c: c.session.fetch_token()),
    "bearer": ("/contacts$", lambda c: c.find_contacts("someone@example.org", 20)),
}


@pytest.mark.parametrize("call", sorted(TE_CALLS))
def test_a_total_expert_redirect_is_an_error_and_no_credential_follows(
    sandbox, te_client, foreign, clock, call
):
    path, request = TE_CALLS[call]
    for status in REDIRECTS:
        clock.advance(3600)  # a token request of the hourly budget for each
        sandbox.add_fault(
            "te", Fault(path=path, status=status, headers={"Location": foreign.url(path)})
        )
        with pytest.raises(ApiError, match=f"HTTP {status}.*redirect to {foreign.host}"):
            request(te_client)
        sandbox.service("te").faults.clear()
    assert foreign.received == []
    secrets = (sandbox.client_secret.encode(), b"Bearer")
    assert not [head for head in foreign.received for secret in secrets if secret in head]


def test_an_abandon_redirected_elsewhere_claims_nothing(sandbox, config, run, foreign):
    record = first_available(sandbox)
    conference = record["subject"]["conference_id"]
    sandbox.add_fault(
        "flexperto",
        Fault(
            path=f"/conferences/{conference}/archive/abandon$",
            status=307,
            headers={"Location": foreign.url("/abandon")},
            times=None,
        ),
    )
    result = run()
    assert result.exit_code == 1
    assert foreign.received == []
    row = archive_row(config, record["id"])
    assert row["state"] == "stored"
    assert foreign.host in row["last_error"] and "redirect" in row["last_error"]
    assert sandbox.flexperto.record(record["id"])["status"] == "AVAILABLE"


# --- finding 11: the download redirect leads only where the policy allows ------------------

INTERNAL_TARGETS = {
    "link-local": "https://169.254.169.254/latest/meta-data/iam/",
    "link-local v6": "https://[fe80::1]/x.zip",
    "link-local mapped": "https://[::ffff:169.254.169.254]/x.zip",
    "metadata name": "https://metadata.google.internal/computeMetadata/v1/",
    "private 10/8": "https://10.1.2.3/x.zip",
    "private 172.16/12": "https://172.20.0.1/x.zip",
    "private 192.168/16": "https://192.168.1.1/x.zip",
    "unique local v6": "https://[fd00:ec2::254]/x.zip",
    "shared 100.64/10": "https://100.100.100.200/latest/meta-data/",
    "link-local through NAT64": "https://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
    "link-local through 6to4": "https://[2002:a9fe:a9fe::1]/latest/meta-data/",
}


@pytest.mark.parametrize("target", sorted(INTERNAL_TARGETS))
def test_a_download_redirect_to_an_internal_address_is_refused(sandbox, flexperto_client, target):
    record = first_available(sandbox)
    location = INTERNAL_TARGETS[target]
    sandbox.add_fault(
        "flexperto", Fault(path="/download$", status=302, headers={"Location": location})
    )
    with pytest.raises(ApiError, match=r"download redirect to .* refused"):
        flexperto_client.download_url(record["id"])


@pytest.mark.parametrize(
    ("scheme", "host"),
    [
        ("http", None),  # plain http to a loopback port that is not the storage host
        ("https", None),
        ("https", "127.1"),  # a name that resolves to loopback: caught once connected
        ("https", "2130706433"),
    ],
)
def test_a_download_redirect_to_another_loopback_service_reaches_nothing(
    sandbox, flexperto_client, internal, scheme, host
):
    record = first_available(sandbox)
    location = internal.url("/metrics", scheme, host)
    sandbox.add_fault(
        "flexperto", Fault(path="/download$", status=302, headers={"Location": location})
    )
    with pytest.raises(ApiError, match="refused") as refused:
        flexperto_client.open_download(flexperto_client.download_url(record["id"]))
    assert not isinstance(refused.value, TransientError)
    assert "loopback" in str(refused.value) or "http" in str(refused.value)
    assert internal.received == []


def test_a_refused_download_target_fails_its_archive_not_the_pass(sandbox, config, run, internal):
    record = first_available(sandbox)
    conference = record["subject"]["conference_id"]
    sandbox.add_fault(
        "flexperto",
        Fault(
            path=f"/archives/{record['id']}/download$",
            status=302,
            headers={"Location": internal.url("/metrics")},
            times=None,
        ),
    )
    result = run()
    assert result.exit_code == 1
    assert internal.received == []
    row = archive_row(config, record["id"])
    assert row["state"] == "failed"
    assert f"127.0.0.1:{internal.port}" in row["last_error"] and "http" in row["last_error"]
    assert sandbox.flexperto.record(record["id"])["status"] == "AVAILABLE"
    assert not [r for r in sandbox.flexperto.requests if conference in r.path]
    others = [r for r in sandbox.flexperto.records() if r["id"] != record["id"]]
    assert any(r["status"] == "ABANDONED" for r in others)


def test_an_allowlisted_internal_host_passes_the_redirect_check(sandbox, tmp_path, clock, foreign):
    config = load_config(
        write_config(tmp_path, sandbox),
        env={"SYNC_WORKER_FLEXPERTO_DOWNLOAD_HOSTS_ALLOWED": f"10.0.0.0/8,{sandbox.storage_host}"},
    )
    client = FlexpertoClient(config.flexperto, config.http, clock)
    record = first_available(sandbox)
    sandbox.add_fault(
        "flexperto",
        Fault(path="/download$", status=302, headers={"Location": "https://10.1.2.3/x.zip"}),
    )
    assert client.download_url(record["id"]) == "https://10.1.2.3/x.zip"
    client.close()


@pytest.mark.parametrize("entry", ["", "10.0.0.0/33", "host", "host:0", "host:99999", "a b:80"])
def test_a_bad_allowlist_entry_is_refused_naming_the_key(sandbox, tmp_path, entry):
    with pytest.raises(ConfigError, match=r"flexperto\.download_hosts_allowed"):
        load_config(
            write_config(tmp_path, sandbox),
            env={"SYNC_WORKER_FLEXPERTO_DOWNLOAD_HOSTS_ALLOWED": f"127.0.0.1:80,{entry}"},
        )


# --- finding 6: every answer within a deadline, every download above a rate ---------------


def test_a_trickled_listing_is_cut_at_the_deadline(sandbox, config, run, log_lines):
    sandbox.add_fault(
        "flexperto",
        Fault(path="/conferences/archives$", action="trickle", delay=1000, times=None),
    )
    result = run()
    assert result.exit_code == 1
    failures = [e for e in log_lines() if e["event"] == "archive.list_failed"]
    assert failures and "deadline" in failures[0]["error"]
    assert not [r for r in sandbox.flexperto.requests if r.path.endswith("/abandon")]


def test_a_trickled_total_expert_answer_is_cut_at_the_deadline(sandbox, te_client):
    sandbox.add_fault("te", Fault(path="/contacts$", action="trickle", delay=1000, times=None))
    with pytest.raises(TransientError, match="deadline"):
        te_client.find_contacts("someone@example.org", 20)


@pytest.mark.both_stores
def test_a_trickled_download_is_cut_recorded_and_resumed(sandbox, tmp_path, clock):
    # The trickle moves the shared clock as fast as the socket takes its pieces, so it can
    # run ahead of a reader the machine is slow to schedule: the headers' deadline is put
    # out of its reach (4 MiB in 64-byte pieces is 65,536 s), leaving the rate floor to cut.
    env = {
        "SYNC_WORKER_HTTP_DEADLINE_SECONDS": "1000000",
        "SYNC_WORKER_HTTP_MIN_DOWNLOAD_KIB_PER_SECOND": "4",
        "SYNC_WORKER_HTTP_DOWNLOAD_RATE_WINDOW_SECONDS": "10",
        "SYNC_WORKER_FLEXPERTO_MAX_PARALLEL_DOWNLOADS": "1",
    }
    config = load_config(write_config(tmp_path, sandbox), env=env)
    record = sandbox.flexperto.add_archive(size=4 * 1024 * 1024)
    sandbox.add_fault("s3", Fault(path=record["id"], action="trickle", delay=1))
    result = run_pass(config, clock)
    assert result.exit_code == 1
    row = archive_row(config, record["id"])
    assert row["state"] == "failed" and "slower than" in row["last_error"]
    assert sandbox.flexperto.record(record["id"])["status"] == "AVAILABLE"
    spooled = list(config.storage.archive_dir.rglob(f"*{record['id']}*.part"))
    assert spooled and spooled[0].stat().st_size > 0

    clock.advance(config.retry.max_backoff_seconds)
    assert run_pass(config, clock).exit_code == 0
    ranged = [r for r in sandbox.s3.requests if record["id"] in r.path and "range" in r.headers]
    assert ranged and ranged[-1].status == 206
    assert archive_row(config, record["id"])["state"] == "claimed"


class HeaderTrickler:
    """A host that answers the status line and headers a byte at a time, each well within
    the read timeout, for far longer than any deadline; ``cut`` is set when the client
    hangs up on it."""

    def __init__(self, pause: float = 0.05, pieces: int = 400) -> None:
        self.cut = threading.Event()
        trickler = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                if not _read_head(self.request):
                    return
                head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * pieces + b"\r\n"
                try:
                    for byte in head:
                        self.request.sendall(bytes([byte]))
                        time.sleep(pause)
                    self.request.sendall(b"Content-Length: 2\r\n\r\n{}")
                except OSError:
                    trickler.cut.set()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_an_answer_whose_headers_trickle_is_cut_at_the_deadline(tmp_path, clock):
    """The deadline covers the status line and headers too, not only the body."""
    trickler = HeaderTrickler()
    config = load_config(
        _config_file(tmp_path, f"http://127.0.0.1:{trickler.port}", "deadline_seconds = 1"),
        env={},
    )
    client = FlexpertoClient(config.flexperto, config.http, clock)
    try:
        with pytest.raises(ApiError, match="deadline"):
            client.get_record("a1")
        assert trickler.cut.wait(10)  # the worker hung up, long before the headers ended
    finally:
        client.close()
        trickler.close()


def _config_file(tmp_path: Path, base_url: str, http: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[flexperto]\nbase_url = "{base_url}"\napi_key = "k"\n'
        '[totalexpert]\nclient_id = "i"\nclient_secret = "s"\n'
        f'[state]\ndatabase = "state.db"\n[storage]\narchive_dir = "archives"\n'
        f"[http]\ntimeout_seconds = 5\nretries = 0\n{http}\n"
    )
    path.chmod(0o600)
    return path
