"""The record of the passes: what a pass keeps of itself, ``sync-worker history``, and the
recent passes in ``status``."""

import io
import json
import re
import signal

import pytest

from sync_worker.app.cli import main
from sync_worker.core import logs
from sync_worker.ops import history
from sync_worker.sandbox import Fault
from sync_worker.sandbox.worker_process import log_events, start_worker
from sync_worker.state import pass_history
from sync_worker.state.db import open_database
from sync_worker.state.pass_history import PassRecord
from tests.conftest import InjectedError

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")


def kept(config) -> list[PassRecord]:
    db = open_database(config.state.database)
    try:
        return pass_history.passes(db)
    finally:
        db.close()


def test_every_pass_is_kept_with_what_each_job_did(sandbox, config, run, clock):
    bad = next(r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE")
    sandbox.flexperto.corrupt_blob(bad["id"])
    started = clock.now()
    assert run().exit_code == 1
    clock.advance(3600)
    sandbox.flexperto.set_checksum(bad["id"], sandbox.flexperto.blob_sha256(bad["id"]))
    assert run().exit_code == 0
    second, first = kept(config)
    assert (first.outcome, first.started_at, first.tenant) == ("failed", started, None)
    assert first.jobs == ["archives", "insights"]
    assert first.counts["archives"]["stored"] == 2
    assert first.counts["archives"]["failed"] == 1
    assert first.counts["insights"]["sent"] == 2
    assert first.bytes_stored > 0 and first.te_requests > 0 and first.te_tokens_requested == 1
    assert first.errors == {}
    assert second.outcome == "ok" and second.counts["archives"]["stored"] == 2  # +PACKING
    assert second.started_at == started + 3600 and second.duration == 0.0


def test_a_stopped_job_is_kept_with_its_error_masked(sandbox, config, run, crash):
    logs.add_secret(sandbox.api_key)

    class LeakyError(InjectedError):
        def __init__(self, message: str) -> None:
            super().__init__(f"{message} with key {sandbox.api_key}")

    crash.arm("archive.listed", 1, error=LeakyError)
    assert run().exit_code == 1
    [record] = kept(config)
    assert record.outcome == "stopped"
    assert list(record.errors) == ["archives"]
    assert record.errors["archives"].startswith("LeakyError: injected at archive.listed")
    assert sandbox.api_key not in record.errors["archives"]
    assert "insights" in record.counts  # the other job still ran
    [_, line, error] = history.render_table([record])
    assert line.split()[2] == "stopped"
    assert error.strip() == f"archives stopped: {record.errors['archives']}"


def test_an_interrupted_pass_is_kept_stopped(sandbox, config, run, crash):
    crash.arm("archive.listed", 1, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        run()
    [record] = kept(config)
    assert (record.outcome, record.errors) == ("stopped", {"pass": "interrupted (Ctrl-C)"})
    assert record.finished_at is not None


def test_passes_older_than_history_days_are_pruned(sandbox, config, run, clock):
    assert run().exit_code == 0
    clock.advance(config.state.history_days * 86_400 + 1)
    assert run().exit_code == 0
    [record] = kept(config)
    assert record.started_at == clock.now()


def test_a_pass_killed_mid_way_is_kept_unfinished(sandbox, tmp_path, config):
    # Downloads are held up, so that the pass is surely in the middle when it is killed.
    sandbox.add_fault("s3", Fault(action="delay", delay=5.0, times=None))
    worker = start_worker("run-once", config=tmp_path / "config.toml")
    assert worker.stderr is not None
    for line in worker.stderr:  # the pass's row is written before the archives are listed
        if any(e["event"] == "archive.listed" for e in log_events(line)):
            break
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=60)
    [record] = kept(config)
    assert (record.outcome, record.finished_at) == ("unfinished", None)
    out = io.StringIO()
    history.write_json([record], out)
    shown = json.loads(out.getvalue())
    assert shown["outcome"] == "unfinished" and shown["finished_at"] is None
    assert ISO.fullmatch(shown["started_at"])


def test_history_command_table_json_since_and_limit(sandbox, tmp_path, config, run, clock, capsys):
    run()
    clock.advance(86_400)
    run()
    config_file = str(tmp_path / "config.toml")
    assert main(["--config", config_file, "history"]) == 0
    header, newest, oldest = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "STARTED",
        "DURATION",
        "OUTCOME",
        "STORED",
        "ABANDONED",
        "A-FAILED",
        "SENT",
        "I-FAILED",
        "BYTES",
        "TE",
        "REQ",
        "JOBS",
    ]
    assert oldest.startswith("2026-11-18T") and ISO.match(oldest)
    assert oldest.split()[1:8] == ["0.0s", "ok", "3", "3", "0", "3", "0"]
    assert oldest.split()[-1] == "archives,insights"
    assert newest.split()[1:8] == ["0.0s", "ok", "1", "1", "0", "1", "0"]  # was PACKING
    assert main(["--config", config_file, "history", "--json", "--limit", "1"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    shown = json.loads(line)
    assert shown["outcome"] == "ok" and shown["started_at"] == newest.split()[0]
    assert shown["duration_seconds"] == 0.0 and shown["jobs"] == ["archives", "insights"]
    assert main(["--config", config_file, "history", "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == "No pass recorded.\n"
    with pytest.raises(SystemExit) as usage:
        main(["--config", config_file, "history", "--since", "tomorrow"])
    assert usage.value.code == 2
    assert "not a date or time" in capsys.readouterr().err


def test_history_without_a_state_file_fails_and_makes_none(tmp_path, sandbox, config, capsys):
    assert main(["--config", str(tmp_path / "config.toml"), "history"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"sync-worker: no state file at {config.state.database}")
    assert not config.state.database.exists()


def test_status_shows_the_recent_passes(sandbox, tmp_path, config, run, clock, capsys):
    for _ in range(7):
        run()
        clock.advance(60)
    assert main(["--config", str(tmp_path / "config.toml"), "status"]) == 0
    table = capsys.readouterr().out.split("Recent passes (sync-worker history for more)\n")[1]
    header, *rows = table.splitlines()
    assert header == history.HEADER
    assert len(rows) == 5 and all(ISO.match(row) for row in rows)


def test_times_for_people_are_iso_8601_with_zone():
    record = PassRecord(
        id=1,
        started_at=1_796_155_611.7,
        finished_at=1_796_155_611.7 + 125,
        outcome="ok",
        tenant=None,
        jobs=["archives"],
    )
    [_, line] = history.render_table([record])
    assert line.split()[:2] == ["2026-12-01T20:06:51+00:00", "2m05s"]
