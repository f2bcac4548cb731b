"""The webhook end to end: the daemon subscribes, the sandbox Flexperto calls it when an
archive becomes available, and the archive is stored long before the next poll."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable

import requests

from sync_worker.sandbox import Fault, free_port
from sync_worker.sandbox.seed import ANNA, MAX
from sync_worker.sandbox.worker_process import start_worker


def read_until(process, found: Callable[[dict], bool]) -> list[dict]:
    """The daemon's events up to the first that ``found`` accepts."""
    events = []
    for line in process.stderr:  # the log
        events.append(json.loads(line))
        if found(events[-1]):
            return events
    raise AssertionError(f"the daemon ended first: {events[-5:]}")


def stored(archive_id: str) -> Callable[[dict], bool]:
    return lambda e: e["event"] == "archive.stored" and e.get("archive_id") == archive_id


def test_webhooks_wake_the_archive_job_and_polling_stays_the_truth(sandbox, config, tmp_path):
    port = free_port()
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        config_file.read_text()
        + "[schedule]\ninterval_seconds = 3600\n"
        + f'[webhook]\nlisten = "127.0.0.1:{port}"\n'
        + f'public_url = "http://127.0.0.1:{port}/callbacks/flexperto"\n'
    )
    process = start_worker("run", config=config_file)
    watchdog = threading.Timer(90, process.kill)  # never hang the suite
    watchdog.start()
    try:
        seen = read_until(process, lambda e: e["event"] == "webhook.registered")
        if not any(e["event"] == "run.finished" and e["jobs"] == ["archives"] for e in seen):
            read_until(
                process, lambda e: e["event"] == "run.finished" and e["jobs"] == ["archives"]
            )
        [subscription] = sandbox.flexperto.webhooks.subscriptions().values()
        hook = subscription["url"]

        fresh = sandbox.flexperto.add_archive(moderator=ANNA, participants=[MAX])
        read_until(process, stored(fresh["id"]))  # an interval is an hour: the webhook did it

        # a slow pass: the job is busy downloading, and deliveries are still answered at once
        slow = sandbox.flexperto.add_archive(moderator=ANNA, participants=[MAX])
        sandbox.add_fault(
            "flexperto", Fault(path=f"{slow['id']}/download", action="delay", delay=4.0)
        )
        read_until(
            process, lambda e: e["event"] == "archive.listed" and e["archive_id"] == slow["id"]
        )
        during = sandbox.flexperto.add_archive(moderator=ANNA, participants=[MAX])
        payload = {"data": {"archive_id": during["id"], "archive_subject": {"conference_id": "x"}}}
        unknown = {"data": {"archive_id": "no-such-archive", "archive_subject": {}}}
        for body in (payload, payload, unknown):  # duplicates and strangers, out of order
            assert requests.post(hook, json=body, timeout=3).status_code == 204
        assert requests.post(hook + "x", json=payload, timeout=3).status_code == 404
        # the slow pass ends first; the wake-up that came during it runs the job once more
        events = read_until(process, stored(during["id"]))
        assert any(stored(slow["id"])(e) for e in events)
        sandbox.flexperto.webhooks.wait()
        first_tries = {}
        for attempt in sandbox.flexperto.webhooks.attempts:
            first_tries.setdefault(attempt.payload["data"]["archive_id"], attempt.status)
        assert {fresh["id"], slow["id"], during["id"]} <= first_tries.keys()
        assert set(first_tries.values()) == {204}  # each answered in time, at the first try
        read_until(
            process, lambda e: e["event"] == "archive.abandoned" and e["archive_id"] == during["id"]
        )
    finally:
        watchdog.cancel()
        process.send_signal(signal.SIGTERM)
        _rest, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert "Traceback" not in errors
    for record in (fresh, slow, during):
        assert sandbox.flexperto.record(record["id"])["status"] == "ABANDONED"
