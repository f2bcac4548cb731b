"""The daemon as operators run it: a real process, stopped by SIGTERM."""

import json
import signal
import threading
from datetime import UTC, datetime, timedelta

import requests
from prometheus_client.parser import text_string_to_metric_families

from sync_worker.sandbox import Sandbox, free_port, tenants_toml
from sync_worker.sandbox.seed import ANNA, MAX
from sync_worker.sandbox.worker_process import start_worker


def test_daemon_runs_both_jobs_at_start_schedules_the_audit_and_stops_on_sigterm(
    sandbox, tmp_path, config
):
    config_file = tmp_path / "config.toml"
    config_file.write_text(config_file.read_text() + "[schedule]\ninterval_seconds = 3600\n")
    process = start_worker("run", config=config_file)
    finished_jobs, sent, scheduled = set(), 0, {}
    watchdog = threading.Timer(60, process.kill)  # never hang the suite
    watchdog.start()
    assert process.stderr is not None
    for line in process.stderr:
        event = json.loads(line)
        sent += event["event"] == "insight.sent"
        if event["event"] == "daemon.scheduled":
            scheduled[event["job"]] = event
        if event["event"] == "run.finished":
            finished_jobs.update(event["jobs"])
            # both jobs run at start, in either order; the archive job wakes the insight job
            # as soon as it has stored archives, so all insights go out without waiting
            if finished_jobs == {"archives", "insights"} and sent == 3:
                break
    watchdog.cancel()
    assert finished_jobs == {"archives", "insights"} and sent == 3
    assert {job: e["every_seconds"] for job, e in scheduled.items()} == {
        "archives": 3600,
        "insights": 3600,
        "audit": config.audit.interval_hours * 3600,
    }
    # the audit waits a little after start, so that the first pass has the machine
    first_audit = datetime.fromisoformat(scheduled["audit"]["next_run"])
    assert timedelta(minutes=9) < first_audit - datetime.now(UTC) <= timedelta(minutes=10)
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=30)
    assert process.returncode == 0
    events = [json.loads(line)["event"] for line in rest.splitlines()]
    assert events[-1] == "daemon.stopped"
    assert len(sandbox.totalexpert.insights()) >= 3


def test_daemon_runs_every_tenants_jobs_and_serves_their_metrics(tmp_path):
    a = Sandbox(tmp_path / "sandbox-a").start()
    b = Sandbox(tmp_path / "sandbox-b", seed=False).start()
    b.flexperto.add_archive(moderator=ANNA, participants=[MAX])
    listen = f"127.0.0.1:{free_port()}"
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        tenants_toml(a, {"a": a, "b": b})
        + f'[schedule]\ninterval_seconds = 3600\n[metrics]\nlisten = "{listen}"\n'
    )
    process = start_worker("run", config=config_file)
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    scheduled, sent = [], {"a": 0, "b": 0}
    try:
        assert process.stderr is not None
        for line in process.stderr:
            event = json.loads(line)
            if event["event"] == "daemon.scheduled":
                scheduled.append((event["tenant"], event["job"]))
            if event["event"] == "insight.sent":
                sent[event["tenant"]] += 1
            if sent["a"] == 3 and sent["b"] == 1:
                break
        text = requests.get(f"http://{listen}/metrics", timeout=5).text
    finally:
        watchdog.cancel()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
        a.stop()
        b.stop()
    assert process.returncode == 0
    assert sorted(scheduled) == [
        (tenant, job) for tenant in "ab" for job in ("archives", "audit", "insights")
    ]
    claimed = {
        s.labels["tenant"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "sync_worker_archives" and s.labels["state"] == "claimed"
    }
    assert claimed == {"a": 3, "b": 1}
