"""The metrics: each one's value after known passes, the endpoint, the textfile."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from sync_worker.config import ConfigError
from sync_worker.ops import metrics
from sync_worker.sandbox import Fault, free_port
from sync_worker.sandbox.seed import seed_archive_id
from tests.conftest import write_config
from tests.state_rows import spend_token_requests

DOWNLOAD_FAILS = seed_archive_id(2)


def sample(registry, name, **labels):
    return registry.get_sample_value(name, {"tenant": "", **labels})


def stored_bytes(sandbox):
    """The bytes of the archives the worker abandoned (stored, as it must first)."""
    flexperto = sandbox.flexperto
    return sum(
        flexperto.blob(record["id"]).size
        for record in flexperto.records()
        if flexperto.abandoned_at(record["id"]) is not None
    )


@pytest.mark.both_states
def test_every_metric_after_a_pass_with_a_failure_and_a_429(sandbox, config, run, clock):
    sandbox.add_fault("flexperto", Fault(path=f"{DOWNLOAD_FAILS}/download", status=403, times=None))
    sandbox.add_fault("te", Fault(method="GET", path="/insight-types", status=429, times=1))
    started = clock.now()
    assert run().exit_code == 1
    finished = clock.now()
    registry = metrics.registry_for([config], clock)
    te = sandbox.totalexpert
    assert sample(registry, "sync_worker_archives", state="claimed") == 2
    assert sample(registry, "sync_worker_archives", state="failed") == 1
    assert sample(registry, "sync_worker_insights", state="sent") == len(te.insights())
    assert sample(registry, "sync_worker_stored_bytes") == stored_bytes(sandbox) > 0
    assert isinstance(sample(registry, "sync_worker_stored_bytes"), int)
    assert sample(registry, "sync_worker_downloaded_bytes_total") == stored_bytes(sandbox)
    for kind in ("archives", "participants", "insights"):
        assert sample(registry, "sync_worker_given_up_items", kind=kind) == 0
    assert sample(registry, "sync_worker_oldest_unstored_archive_age_seconds") == pytest.approx(
        finished - started, abs=0.01
    )
    for job in ("archives", "insights"):
        assert sample(registry, "sync_worker_runs_total", sync_job=job) == 1
        assert sample(registry, "sync_worker_failed_runs_total", sync_job=job) == 1
        assert sample(registry, "sync_worker_last_run_timestamp_seconds", sync_job=job) == finished
        assert sample(registry, "sync_worker_last_run_duration_seconds", sync_job=job) > 0
        assert sample(registry, "sync_worker_last_success_timestamp_seconds", sync_job=job) is None
    assert sample(registry, "sync_worker_te_requests_total") == len(te.requests)
    assert sample(registry, "sync_worker_te_rate_limited_total") == 1
    assert sample(registry, "sync_worker_te_token_requests_total") == 1
    assert sample(registry, "sync_worker_te_token_budget_exhausted_total") == 0
    assert sample(registry, "sync_worker_te_requests_left") == 1000 - len(te.requests)
    assert sample(registry, "sync_worker_te_token_requests_left") == 1
    expiry = sample(registry, "sync_worker_te_token_expiry_timestamp_seconds")
    assert started + 3600 <= expiry <= finished + 3600

    clock.advance(3700)  # the backoff is over, TE's minute and the token's hour too
    sandbox.service("flexperto").faults.clear()
    assert run().exit_code == 0
    assert sample(registry, "sync_worker_archives", state="claimed") == 4  # + the one packed
    assert sample(registry, "sync_worker_oldest_unstored_archive_age_seconds") == 0
    assert sample(registry, "sync_worker_runs_total", sync_job="archives") == 2
    assert sample(registry, "sync_worker_failed_runs_total", sync_job="archives") == 1
    last_success = sample(
        registry, "sync_worker_last_success_timestamp_seconds", sync_job="archives"
    )
    assert last_success == clock.now()
    assert sample(registry, "sync_worker_te_requests_total") == len(te.requests)
    # the first token request came back, and a new token was needed
    assert sample(registry, "sync_worker_te_token_requests_total") == 2
    assert sample(registry, "sync_worker_te_token_requests_left") == 1


def test_items_given_up_and_a_spent_token_budget_are_counted(sandbox, config, run, clock):
    sandbox.add_fault("flexperto", Fault(path=f"{DOWNLOAD_FAILS}/download", status=403, times=None))
    spend_token_requests(config, clock.now())  # as another process did
    for _ in range(config.retry.max_attempts):
        run()
        clock.advance(config.retry.max_backoff_seconds)
    registry = metrics.registry_for([config], clock)
    assert sample(registry, "sync_worker_given_up_items", kind="archives") == 1
    assert sample(registry, "sync_worker_te_token_budget_exhausted_total") >= 1
    assert sample(registry, "sync_worker_te_token_requests_left") == 0


def test_a_tenant_that_never_ran_shows_nothing_and_an_unreadable_one_is_logged(
    tmp_path, sandbox, config, log_lines, clock
):
    registry = metrics.registry_for([config], clock)
    assert sample(registry, "sync_worker_stored_bytes") is None
    config.state.database.write_bytes(b"not a database" * 100)
    assert sample(registry, "sync_worker_stored_bytes") is None
    assert [e["event"] for e in log_lines()] == ["metrics.unreadable"]


@pytest.mark.both_states
def test_the_endpoint_serves_the_metrics(sandbox, config, run, clock):
    run()
    listen = f"127.0.0.1:{free_port()}"
    server = metrics.serve(listen, metrics.registry_for([config], clock))
    try:
        answer = requests.get(f"http://{listen}/metrics", timeout=5)
    finally:
        server.shutdown()
    assert answer.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    assert families["sync_worker_archives"].samples[0].value == 3


def local_address() -> str:
    """An address of this machine other than loopback, if it has one, else 0.0.0.0 (every
    address, loopback among them). A UDP socket's connect sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))
            address = probe.getsockname()[0]
        except OSError:
            return "0.0.0.0"
    return "0.0.0.0" if ipaddress.ip_address(address).is_loopback else address


def test_the_endpoint_leaves_loopback_only_when_allowed(sandbox, config, run, clock):
    run()
    host = local_address()
    listen = f"{host}:{free_port()}"
    registry = metrics.registry_for([config], clock)
    with pytest.raises(ConfigError, match=r"metrics\.allow_remote = true"):
        metrics.serve(listen, registry)
    server = metrics.serve(listen, registry, allow_remote=True)
    try:
        reach = "127.0.0.1" if host == "0.0.0.0" else host
        answer = requests.get(f"http://{reach}:{listen.rpartition(':')[2]}/metrics", timeout=5)
    finally:
        server.shutdown()
    assert answer.status_code == 200
    assert "sync_worker_archives" in answer.text


def test_the_textfile_is_replaced_whole_and_readable_by_node_exporter(
    sandbox, config, run, clock, tmp_path
):
    run()
    path = tmp_path / "sync_worker.prom"
    path.write_text("old\n")
    before = path.stat().st_ino
    metrics.write_textfile(path, metrics.registry_for([config], clock))
    assert path.stat().st_ino != before  # renamed into place, never written in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path).count("sync_worker.prom") == 1
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".sync_worker.prom")]
    names = {f.name for f in text_string_to_metric_families(path.read_text())}
    assert "sync_worker_archives" in names


def test_a_textfile_that_cannot_be_written_is_logged_not_raised(config, clock, tmp_path, log_lines):
    metrics.write_textfile(tmp_path / "missing" / "x.prom", metrics.registry_for([config], clock))
    assert [e["event"] for e in log_lines()] == ["metrics.textfile_failed"]


def test_run_once_writes_the_textfile(sandbox, tmp_path):
    from sync_worker.sandbox.worker_process import run_worker

    path = tmp_path / "metrics" / "sync_worker.prom"
    path.parent.mkdir()
    config_file = write_config(tmp_path, sandbox, f'[metrics]\ntextfile = "{path}"\n')
    assert run_worker("run-once", config=config_file).returncode == 0
    values = {
        (s.name, s.labels.get("state")): s.value
        for f in text_string_to_metric_families(path.read_text())
        for s in f.samples
    }
    assert values[("sync_worker_archives", "claimed")] == 3
