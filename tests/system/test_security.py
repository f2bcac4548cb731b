"""Secrets stay secret, files stay private, and TLS and https stay on."""

from __future__ import annotations

import stat

import pytest

from sync_worker.adapters.flexperto.client import FlexpertoClient
from sync_worker.adapters.http import ApiError, new_session
from sync_worker.sandbox import Fault
from sync_worker.sandbox.worker_process import run_worker
from sync_worker.state.db import open_database


def run_cli(config_file, *args):
    return run_worker("--log-level", "debug", *args, config=config_file)


@pytest.mark.both_stores
def test_no_secret_in_any_log_line_of_good_and_failing_passes(sandbox, tmp_path, config):
    config_file = tmp_path / "config.toml"
    output = []
    output.append(run_cli(config_file, "run-once"))
    # a pass full of failures: rejected token, server errors, a lost insight answer
    sandbox.totalexpert.revoke_tokens()
    sandbox.flexperto.add_archive(
        status="AVAILABLE",
        moderator={"account_id": "e", "email": "anna.expert@bank.example", "name": "Anna"},
        participants=[{"account_id": "p", "email": "lena.lang@example.org", "name": "Lena"}],
    )
    sandbox.add_fault("te", Fault(path="/insights", status=503, times=None))
    sandbox.add_fault("s3", Fault(action="reset", times=1))
    output.append(run_cli(config_file, "run-once"))
    output.append(run_cli(config_file, "check", "--token"))
    output.append(run_cli(config_file, "audit", "--all"))
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(config_file.read_text().replace(sandbox.client_secret, "not-the-secret"))
    sandbox.totalexpert.revoke_tokens()
    open_database(config.state.database).execute("delete from tokens")
    output.append(run_cli(wrong, "run-once"))

    tokens = sandbox.totalexpert.issued_tokens
    assert len(tokens) >= 2, "the passes should have obtained access tokens"
    secrets = [sandbox.api_key, sandbox.client_id, sandbox.client_secret, "not-the-secret", *tokens]
    if sandbox.bucket is not None:
        secrets += [sandbox.bucket.server.access_key_id, sandbox.bucket.server.secret_access_key]
    text = "\n".join(result.stdout + result.stderr for result in output)
    assert "item.failed" in text and "te.token_rejected" in text
    for secret in secrets:
        assert secret not in text


def test_state_files_are_private(sandbox, config, run):
    run()
    database = config.state.database
    for path in [
        database,
        *database.parent.glob(f"{database.name}-*"),
        *database.parent.glob(f"{database.name}.*.lock"),
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_tls_verification_cannot_be_switched_off_from_the_environment(monkeypatch):
    monkeypatch.setenv("CURL_CA_BUNDLE", "")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    session = new_session()
    settings = session.merge_environment_settings(
        "https://public.totalexpert.net", {}, None, None, None
    )
    assert settings["verify"] is True
    assert settings["proxies"] == {}


def test_redirect_to_plain_http_on_a_remote_host_is_refused(sandbox, config, clock):
    sandbox.add_fault(
        "flexperto",
        Fault(path="/download", status=302, headers={"Location": "http://s3.example.com/a.zip"}),
    )
    client = FlexpertoClient(config.flexperto, config.http, clock)
    record = next(r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE")
    with pytest.raises(ApiError, match="refused URL scheme"):
        client.download_url(record["id"])
    client.close()
