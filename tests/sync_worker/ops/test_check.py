"""``sync-worker check``: read-only for real, a TE token only with ``--token``, a short
deadline per request with the service and host named, and ``--offline``."""

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sync_worker.app.cli import main
from sync_worker.app.runner import run_pass
from sync_worker.config import HttpConfig
from sync_worker.ops.checks import probe_http
from sync_worker.sandbox.faults import Fault
from sync_worker.state.db import open_budget_database, open_database
from sync_worker.state.te_access import SharedAccess
from tests.sync_worker.app.test_cli import findings


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` but the sandbox's own: (size, mtime)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.relative_to(folder).parts[0] != "sandbox"
    }


def check(tmp_path: Path, *options: str) -> int:
    return main(["--config", str(tmp_path / "config.toml"), "check", *options])


def test_check_makes_nothing_and_spends_no_token(sandbox, tmp_path, config, capsys):
    before = listing(tmp_path)
    assert check(tmp_path) == 0
    found = findings(capsys.readouterr().out)
    assert listing(tmp_path) == before  # no state file, no archive folder, no lock
    assert found["state database"][0] == "missing"
    assert (
        f"no state file at {config.state.database}: the first pass makes it"
        in (found["state database"][1])
    )
    assert found["archive store"] == (
        "ok",
        f"{config.storage.archive_dir} does not exist yet: a pass makes it in {tmp_path}, "
        "which is writable",
    )
    assert found["totalexpert"] == ("ok", "heartbeat answered")
    status, detail = found["totalexpert token"]
    assert status == "skipped" and "credentials not tried" in detail and "--token" in detail
    assert "insight type" not in found  # it needs a token
    assert sandbox.totalexpert.token_requests == 0


def test_check_leaves_an_existing_state_file_as_it_is(sandbox, tmp_path, config, capsys):
    run_pass(config, sandbox.clock)
    before = listing(tmp_path)
    contents = config.state.database.read_bytes()
    tokens = sandbox.totalexpert.token_requests
    assert check(tmp_path) == 0
    found = findings(capsys.readouterr().out)
    assert found["state database"][0] == "ok"
    assert listing(tmp_path) == before and config.state.database.read_bytes() == contents
    assert sandbox.totalexpert.token_requests == tokens


def test_check_with_token_requests_one_and_keeps_it_for_the_passes(
    sandbox, tmp_path, config, capsys
):
    open_database(config.state.database).close()  # as a first pass leaves it
    assert check(tmp_path, "--token") == 0
    assert "new access token obtained" in findings(capsys.readouterr().out)["totalexpert token"][1]
    assert sandbox.totalexpert.token_requests == 1
    assert check(tmp_path) == 0  # without --token: the kept one
    found = findings(capsys.readouterr().out)
    assert "cached access token reused" in found["totalexpert token"][1]
    assert found["insight type"][0] == "ok"
    assert sandbox.totalexpert.token_requests == 1


def test_check_with_token_but_no_state_file_makes_none(sandbox, tmp_path, config, capsys):
    before = listing(tmp_path)
    assert check(tmp_path, "--token") == 0
    assert findings(capsys.readouterr().out)["totalexpert token"][0] == "ok"
    assert listing(tmp_path) == before
    assert sandbox.totalexpert.token_requests == 1


def test_a_failing_service_is_named_with_its_host_and_not_retried(
    sandbox, tmp_path, config, capsys
):
    sandbox.add_fault("totalexpert", Fault(path="/heartbeat", status=503))  # once only
    assert check(tmp_path) == 1
    status, detail = findings(capsys.readouterr().out)["totalexpert"]
    host = urlsplit(config.totalexpert.base_url).netloc
    assert status == "FAIL" and detail.startswith(f"Total Expert at {host}: ")
    assert "503" in detail


def test_a_slow_service_fails_at_the_probe_timeout(sandbox, tmp_path, config, capsys):
    # Answered after 3 s: within the config's 5 s timeout, past the probe's 1 s.
    sandbox.add_fault("flexperto", Fault(action="delay", delay=3, times=None))
    assert check(tmp_path, "--probe-timeout", "1") == 1
    status, detail = findings(capsys.readouterr().out)["flexperto listing"]
    assert status == "FAIL" and detail.startswith("Flexperto at 127.0.0.1:")


def test_probe_http_shortens_waits_and_drops_retries():
    probe = probe_http(HttpConfig(), 10)
    assert (probe.retries, probe.timeout_seconds, probe.deadline_seconds) == (0, 10, 10)
    assert probe_http(HttpConfig(timeout_seconds=3), 10).timeout_seconds == 3


# Which proxy and CA each service is reached with: told offline too, as it needs no network.
ROUTES = ("network flexperto", "network storage_host", "network totalexpert")


def test_check_offline_reaches_no_service(sandbox, tmp_path, config, capsys):
    before = listing(tmp_path)
    assert check(tmp_path, "--offline") == 0
    found = findings(capsys.readouterr().out)
    assert set(found) == {"state database", "archive store", *ROUTES}
    assert sandbox.flexperto.requests == [] and sandbox.totalexpert.requests == []
    assert listing(tmp_path) == before


def test_config_validate_is_check_offline(sandbox, tmp_path, config, capsys):
    assert main(["config", "validate", "--config", str(tmp_path / "config.toml")]) == 0
    found = findings(capsys.readouterr().out)
    assert set(found) == {"state database", "archive store", *ROUTES}
    assert sandbox.flexperto.requests == [] and sandbox.totalexpert.requests == []


def test_check_offline_fails_an_archive_folder_it_could_not_make(sandbox, tmp_path, config, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    path = tmp_path / "config.toml"
    path.write_text(path.read_text().replace('"archives"', '"a-file/archives"'))
    assert check(tmp_path, "--offline") == 1
    status, detail = findings(capsys.readouterr().out)["archive store"]
    assert status == "FAIL" and f"{tmp_path / 'a-file'} is not a folder" in detail


@pytest.mark.parametrize("options", [["--offline", "--token"], ["--probe-timeout", "0"]])
def test_check_options_are_checked(tmp_path, options):
    with pytest.raises(SystemExit) as exited:
        main(["check", *options])
    assert exited.value.code == 2


def test_check_reads_a_state_file_another_process_has_open(sandbox, tmp_path, config, capsys):
    run_pass(config, sandbox.clock)
    held = open_database(config.state.database)  # as the daemon holds it, with its WAL
    try:
        before = listing(tmp_path)
        assert check(tmp_path) == 0
        assert findings(capsys.readouterr().out)["state database"][0] == "ok"
        assert set(listing(tmp_path)) == set(before)
    finally:
        held.close()


def test_a_broken_budget_file_fails_check_and_is_left_alone(
    sandbox, tmp_path, config, capsys, monkeypatch
):
    budget = tmp_path / "budget.db"
    budget.write_bytes(b"not a database " * 100)
    monkeypatch.setenv("SYNC_WORKER_TOTALEXPERT_SHARED_BUDGET", str(budget))
    assert check(tmp_path) == 1
    status, detail = findings(capsys.readouterr().out)["totalexpert budget"]
    assert status == "FAIL" and detail.startswith(f"{budget}: DatabaseError")
    assert budget.read_bytes() == b"not a database " * 100


def test_check_uses_and_keeps_the_token_of_the_budget_file(
    sandbox, tmp_path, config, capsys, monkeypatch
):
    budget = tmp_path / "budget.db"
    open_budget_database(budget).close()  # as the first pass of a worker of the host leaves it
    monkeypatch.setenv("SYNC_WORKER_TOTALEXPERT_SHARED_BUDGET", str(budget))
    assert check(tmp_path, "--token") == 0
    assert check(tmp_path) == 0
    assert "cached access token reused" in findings(capsys.readouterr().out)["totalexpert token"][1]
    assert sandbox.totalexpert.token_requests == 1
    assert not config.state.database.exists()


def test_a_spent_token_budget_is_told_with_an_iso_time(sandbox, tmp_path, config, capsys):
    db = open_database(config.state.database)
    te = config.totalexpert
    access = SharedAccess(db, te.base_url, te.client_id, 1000, te.token_requests_per_hour)
    for _ in range(te.token_requests_per_hour):  # spent by passes a moment ago
        assert access.spend_token_request(time.time()) is None
    db.close()
    assert check(tmp_path, "--token") == 1
    status, detail = findings(capsys.readouterr().out)["totalexpert token"]
    assert status == "FAIL" and "token requests of the hour are spent: the next at 20" in detail
    assert detail.endswith("+00:00")
    assert sandbox.totalexpert.token_requests == 0
