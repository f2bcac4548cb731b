"""Hostile clients of the webhook receiver, and what operators are told (issue 17, findings 8
and 12): trickling and flooding clients hold no more threads than the receiver's cap and
are cut at a whole-request deadline; IPv6 loopback is served; secrets are masked in the
forms they take on the wire; a config file others can read is named; and the commands that
read the state file say so, and fail, when it is missing or is not one."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import requests
import structlog

from sync_worker.adapters.webhook_receiver import MAX_CONNECTIONS, WebhookReceiver
from sync_worker.app.cli import main
from sync_worker.config import load_config
from sync_worker.core import logs
from sync_worker.sandbox import Fault, free_port
from sync_worker.sandbox.seed import ANNA, MAX
from sync_worker.sandbox.worker_process import start_worker

SECRET_PATH = "F40mfum7pZC8DtdgGOYSijx26blP0HLs"
PAYLOAD = {"data": {"archive_id": "a-1", "archive_subject": {"conference_id": "c-1"}}}
CAP = 4
TRICKLERS = 3 * CAP
GIVE_UP_SECONDS = 30  # only so that a broken receiver cannot hang the suite


# --- finding 8: the webhook receiver ------------------------------------------------------


def open_tricklers(port: int, count: int) -> list[socket.socket]:
    """Connections that each begin a request and will go on sending one byte at a time."""
    tricklers = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn.sendall(b"P")
        tricklers.append(conn)
    return tricklers


def trickle_until_dropped(tricklers: list[socket.socket], sample: Callable[[], None]) -> None:
    """Send each connection a byte in turn, faster than any per-read timeout, until the
    server has closed every one (or answered it: then it is done with it)."""
    alive = list(tricklers)
    give_up = time.monotonic() + GIVE_UP_SECONDS
    while alive and time.monotonic() < give_up:
        sample()
        readable, _, _ = select.select(alive, [], [], 0.05)
        for conn in readable:
            alive.remove(conn)  # an answer or the end of the connection: either way, done
        for conn in alive:
            try:
                conn.sendall(b"O")
            except OSError:
                alive.remove(conn)
    assert not alive, f"{len(alive)} trickling connections are still held"


def test_trickling_clients_hold_at_most_the_cap_of_threads_and_are_cut(log_lines):
    woken: list[str] = []
    before = threading.active_count()
    port = free_port()
    receiver = WebhookReceiver(
        f"127.0.0.1:{port}", woken.append, max_connections=CAP, deadline_seconds=2.0
    ).start()
    receiver.accept("bank-a", [SECRET_PATH])
    url = f"http://127.0.0.1:{port}/{SECRET_PATH}"
    tricklers = open_tricklers(port, TRICKLERS)
    peak = [0]
    try:
        # every slot is taken: a delivery now is refused at once, not queued behind them
        try:
            answer = requests.post(url, json=PAYLOAD, timeout=3)
            assert answer.status_code == 503
        except requests.ConnectionError:
            pass  # closed at once: refused as well
        trickle_until_dropped(
            tricklers, lambda: peak.__setitem__(0, max(peak[0], threading.active_count()))
        )
        # the slots are free again: a well-behaved delivery is taken
        assert requests.post(url, json=PAYLOAD, timeout=3).status_code == 204
    finally:
        for conn in tricklers:
            conn.close()
        receiver.shutdown()
    assert peak[0] - before <= CAP + 1  # the handlers, and the server's own thread
    assert woken == ["bank-a"]
    events = [e["event"] for e in log_lines()]
    cut, refused = events.count("webhook.too_slow"), events.count("webhook.busy")
    assert cut >= CAP and refused >= 1
    assert cut + refused == TRICKLERS + 1  # every trickler, and the delivery while full


def test_ipv6_loopback_is_served():
    woken: list[str] = []
    port = free_port()
    receiver = WebhookReceiver(f"[::1]:{port}", woken.append).start()
    receiver.accept("bank-a", [SECRET_PATH])
    try:
        answer = requests.post(f"http://[::1]:{port}/{SECRET_PATH}", json=PAYLOAD, timeout=3)
    finally:
        receiver.shutdown()
    assert answer.status_code == 204 and woken == ["bank-a"]


def test_a_length_in_other_digits_is_answered_411(log_lines):
    port = free_port()
    receiver = WebhookReceiver(f"127.0.0.1:{port}", lambda _tenant: None).start()
    receiver.accept("bank-a", [SECRET_PATH])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            head = f"POST /{SECRET_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: \u00b2\r\n\r\n"
            conn.sendall(head.encode("latin-1") + b"{}")
            answer = conn.recv(1024)
    finally:
        receiver.shutdown()
    assert answer.startswith(b"HTTP/1.0 411 ")
    assert "webhook.bad_request" not in [e["event"] for e in log_lines()]


def read_until(process, found: Callable[[dict], bool]) -> list[dict]:
    events = []
    for line in process.stderr:  # the log
        events.append(json.loads(line))
        if found(events[-1]):
            return events
    raise AssertionError(f"the daemon ended first: {events[-5:]}")


def test_the_daemon_listens_on_ipv6_loopback_and_is_woken(sandbox, config, tmp_path):
    port = free_port()
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        config_file.read_text()
        + "[schedule]\ninterval_seconds = 3600\n"
        + f'[webhook]\nlisten = "[::1]:{port}"\n'
        + f'public_url = "http://[::1]:{port}/callbacks/flexperto"\n'
    )
    process = start_worker("run", config=config_file)
    watchdog = threading.Timer(90, process.kill)  # never hang the suite
    watchdog.start()
    try:
        seen = read_until(process, lambda e: e["event"] in ("webhook.registered", "run.failed"))
        assert seen[-1]["event"] == "webhook.registered", seen[-3:]
        if not any(e["event"] == "run.finished" and e["jobs"] == ["archives"] for e in seen):
            read_until(
                process, lambda e: e["event"] == "run.finished" and e["jobs"] == ["archives"]
            )
        fresh = sandbox.flexperto.add_archive(moderator=ANNA, participants=[MAX])
        read_until(  # an interval is an hour: the delivery to [::1] did it
            process,
            lambda e: e["event"] == "archive.stored" and e.get("archive_id") == fresh["id"],
        )
    finally:
        watchdog.cancel()
        process.send_signal(signal.SIGTERM)
        _rest, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert "Traceback" not in errors


class Flood:
    """A client that keeps ``size`` trickling connections open to a port, reopening each
    one the server drops, and counts the threads of the process it attacks."""

    def __init__(self, port: int, size: int, pid: int) -> None:
        self._port, self._size, self._pid = port, size, pid
        self._stop = threading.Event()
        self.peak_threads = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        held: list[socket.socket] = []
        while not self._stop.is_set():
            while len(held) < self._size:
                held += open_tricklers(self._port, 1)
            readable, _, _ = select.select(held, [], [], 0.1)
            for conn in [*readable, *(c for c in held if not _sent(c))]:
                if conn in held:
                    held.remove(conn)
                    conn.close()
            self.peak_threads = max(self.peak_threads, len(os.listdir(f"/proc/{self._pid}/task")))
        for conn in held:
            conn.close()


def _sent(conn: socket.socket) -> bool:
    try:
        conn.sendall(b"O")
        return True
    except OSError:
        return False


def test_a_flood_of_trickling_clients_leaves_the_daemon_claiming(sandbox, config, tmp_path):
    port = free_port()
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        config_file.read_text()
        + "[schedule]\ninterval_seconds = 2\n"
        + f'[webhook]\nlisten = "127.0.0.1:{port}"\n'
        + f'public_url = "http://127.0.0.1:{port}/callbacks/flexperto"\n'
    )
    process = start_worker("run", config=config_file)
    watchdog = threading.Timer(90, process.kill)  # never hang the suite
    watchdog.start()
    try:
        read_until(process, lambda e: e["event"] == "webhook.registered")
        read_until(process, lambda e: e["event"] == "run.finished" and e["jobs"] == ["archives"])
        idle_threads = len(os.listdir(f"/proc/{process.pid}/task"))
        with Flood(port, 3 * MAX_CONNECTIONS, process.pid) as flood:
            events = read_until(process, lambda e: e["event"] == "webhook.busy")
            fresh = sandbox.flexperto.add_archive(moderator=ANNA, participants=[MAX])
            events += read_until(
                process,
                lambda e: e["event"] == "archive.abandoned" and e.get("archive_id") == fresh["id"],
            )
            if not any(e["event"] == "webhook.too_slow" for e in events):
                events += read_until(process, lambda e: e["event"] == "webhook.too_slow")
    finally:
        watchdog.cancel()
        process.send_signal(signal.SIGTERM)
        _rest, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert "Traceback" not in errors
    assert any(e["event"] == "archive.stored" and e["archive_id"] == fresh["id"] for e in events)
    assert {"webhook.busy", "webhook.too_slow"} <= {e["event"] for e in events}
    downloads = config.flexperto.max_parallel_downloads
    assert flood.peak_threads <= idle_threads + MAX_CONNECTIONS + downloads + 2


# --- finding 12: secrets in other forms ---------------------------------------------------


def wire_forms(client_id: str, secret: str) -> dict[str, str]:
    """The forms a secret takes in headers, URLs and encodings, as an echo may show them."""
    return {
        "lower-cased": secret.lower(),
        "upper-cased": secret.upper(),
        "url-encoded": quote(secret, safe=""),
        "form-encoded": quote_plus(secret),
        "base64": base64.b64encode(secret.encode()).decode(),
        "base64, no padding": base64.b64encode(secret.encode()).decode().rstrip("="),
        "urlsafe base64": base64.urlsafe_b64encode(secret.encode()).decode(),
        "basic auth": base64.b64encode(f"{client_id}:{secret}".encode()).decode(),
    }


def test_secrets_are_masked_in_their_wire_forms(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        '[flexperto]\nbase_url = "https://demo.test.flexperto.com"\n'
        'api_key = "eyJhbGciOi.Jx/+Qz=y?k&1"\n'
        '[totalexpert]\nclient_id = "Client-ID-77"\nclient_secret = "Te/Secret+Value=99"\n'
    )
    path.chmod(0o600)
    config = load_config(path, env={})
    stream = io.StringIO()
    logs.configure("json", "debug", stream=stream, secrets=config.secrets())
    te = config.totalexpert
    api_key, secret = config.flexperto.api_key, te.client_secret
    shown = {
        **{f"api-key {k}": v for k, v in wire_forms(te.client_id, api_key).items()},
        **{f"secret {k}": v for k, v in wire_forms(te.client_id, secret).items()},
    }
    for form, text in shown.items():
        structlog.get_logger().warning("echo", form=form, error=f"the server said: <{text}>")
    logged = {e["form"]: e["error"] for e in map(json.loads, stream.getvalue().splitlines())}
    leaked = {form: logged[form] for form, text in shown.items() if text in logged[form]}
    assert leaked == {}
    assert all(logs.REDACTED in error for error in logged.values())


def test_servers_echoing_the_secrets_in_other_forms_leak_nothing_to_the_log(
    sandbox, config, tmp_path, capsys
):
    te = config.totalexpert
    echoes = {
        "flexperto": wire_forms(te.client_id, config.flexperto.api_key),
        "totalexpert": wire_forms(te.client_id, te.client_secret),
    }
    for service, path in (("flexperto", "/archive/abandon$"), ("totalexpert", "/token$")):
        body = json.dumps({"error": "you sent " + " ".join(echoes[service].values())})
        sandbox.add_fault(service, Fault(path=path, status=401, body=body, times=None))
    assert main(["--config", str(tmp_path / "config.toml"), "--log-format", "json", "run-once"])
    out, err = capsys.readouterr()
    assert err.count(logs.REDACTED) >= 2 * len(echoes["flexperto"])  # both echoes, masked
    leaked = [
        f"{service} {form}"
        for service, forms in echoes.items()
        for form, shown in forms.items()
        if shown in out + err
    ]
    assert leaked == []


# --- finding 12: a config file others can read --------------------------------------------

MINIMAL = """
[flexperto]
base_url = "https://demo.test.flexperto.com"
api_key = "fx-key-in-the-file"
[totalexpert]
client_id = "te-id"
client_secret = "te-secret"
"""


@pytest.mark.parametrize(
    ("mode", "text", "warned"),
    [
        (0o644, MINIMAL, True),
        (0o640, MINIMAL, True),
        (0o600, MINIMAL, False),
        (0o644, '[flexperto]\nbase_url = "https://demo.test.flexperto.com"\n', False),
    ],
)
def test_a_config_file_others_can_read_is_named_if_it_holds_secrets(
    tmp_path, log_lines, mode, text, warned
):
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(mode)
    env = {
        "FLEXPERTO_API_KEY": "fx-key-from-env",
        "TOTALEXPERT_CLIENT_ID": "te-id-from-env",
        "TOTALEXPERT_CLIENT_SECRET": "te-secret-from-env",
    }
    load_config(path, env=env)
    events = [e for e in log_lines() if e["event"] == "config.readable_by_others"]
    if not warned:
        assert events == []
        return
    [event] = events
    assert event["level"] == "warning" and event["path"] == str(path)
    assert event["mode"] == oct(mode)
    assert event["keys"] == [
        "flexperto.api_key",
        "totalexpert.client_id",
        "totalexpert.client_secret",
    ]
    assert "fx-key-in-the-file" not in json.dumps(event)


# --- finding 12: commands that read the state file ----------------------------------------

STATE_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["export"],
    ["export", "--format", "jsonl"],
    ["retry", "--all-failed"],
    ["retry", "some-archive"],
]


def offline_config(tmp_path: Path, database: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        MINIMAL.replace("https://demo.test.flexperto.com", "http://127.0.0.1:9")
        + f'[storage]\narchive_dir = "archives"\n[state]\ndatabase = "{database}"\n'
    )
    path.chmod(0o600)
    return path


def not_a_state_file(kind: str, path: Path) -> None:
    """Put something at ``path`` that is not a state file of this worker."""
    if kind == "directory":
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(b"this is not a SQLite database, " * 100)
    elif kind == "foreign database":
        conn = sqlite3.connect(path)
        conn.execute("create table notes (text)")
        conn.commit()
        conn.close()


@pytest.mark.parametrize("kind", ["missing", "directory", "garbage", "foreign database"])
@pytest.mark.parametrize("command", STATE_COMMANDS, ids=" ".join)
def test_a_missing_or_broken_state_file_fails_the_commands_that_read_it(
    tmp_path, capsys, kind, command
):
    database = tmp_path / "stat.db"  # state.db, mistyped
    config_file = offline_config(tmp_path, database.name)
    not_a_state_file(kind, database)
    before = sorted(p.name for p in tmp_path.iterdir())
    before_bytes = database.read_bytes() if database.is_file() else None
    code = main(["--config", str(config_file), *command])
    out, err = capsys.readouterr()
    assert code == 1
    assert [line for line in out.splitlines() if not line.startswith("{")] == []
    [line] = err.strip().splitlines()
    assert line.startswith("sync-worker: ") and str(database) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no file made, none beside
    assert (database.read_bytes() if database.is_file() else None) == before_bytes


@pytest.mark.parametrize("kind", ["directory", "garbage", "foreign database"])
def test_check_fails_a_state_file_that_is_not_one_and_leaves_it_alone(
    sandbox, tmp_path, config, capsys, monkeypatch, kind
):
    database = tmp_path / "other.db"
    not_a_state_file(kind, database)
    before = database.read_bytes() if database.is_file() else None
    monkeypatch.setenv("SYNC_WORKER_STATE_DATABASE", str(database))
    assert main(["--config", str(tmp_path / "config.toml"), "check"]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("{")]
    [state] = [line for line in lines if "state database" in line]
    assert state.startswith("FAIL") and str(database) in state
    assert (database.read_bytes() if database.is_file() else None) == before
    assert not Path(f"{database}-wal").exists()
    assert os.path.isdir(database) == (kind == "directory")
