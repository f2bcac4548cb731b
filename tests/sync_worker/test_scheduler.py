"""The daemon as operators run it: a real process, stopped by SIGTERM."""

import json
import signal
import threading

from sync_worker.sandbox.worker_process import start_worker


def test_daemon_runs_both_jobs_at_start_and_stops_cleanly_on_sigterm(sandbox, tmp_path, config):
    config_file = tmp_path / "config.toml"
    config_file.write_text(config_file.read_text() + "[schedule]\ninterval_seconds = 3600\n")
    process = start_worker("run", config=config_file)
    finished_jobs, sent = set(), 0
    watchdog = threading.Timer(60, process.kill)  # never hang the suite
    watchdog.start()
    assert process.stdout is not None
    for line in process.stdout:
        event = json.loads(line)
        sent += event["event"] == "insight.sent"
        if event["event"] == "run.finished":
            finished_jobs.update(event["jobs"])
            # both jobs run at start, in either order; the archive job wakes the insight job
            # as soon as it has stored archives, so all insights go out without waiting
            if finished_jobs == {"archives", "insights"} and sent == 3:
                break
    watchdog.cancel()
    assert finished_jobs == {"archives", "insights"} and sent == 3
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    events = [json.loads(line)["event"] for line in rest.splitlines()]
    assert events[-1] == "daemon.stopped"
    assert len(sandbox.totalexpert.insights()) >= 3
