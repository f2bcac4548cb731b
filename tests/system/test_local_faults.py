"""Faults of the machine the worker runs on: a full disk, an unwritable folder, a locked state
database, two runs started at once."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync_worker.app.runner import run_pass
from sync_worker.config import load_config
from sync_worker.sandbox import Fault
from sync_worker.sandbox.worker_process import log_events, start_worker
from sync_worker.state.db import open_database
from tests.conftest import write_config

FILE_SIZE_LIMIT = 1024 * 1024


def run_cli(config_file, *args, limit_file_size=False, **popen):
    def limit() -> None:
        # Writes past the limit fail with EFBIG, as a full disk fails them with ENOSPC.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))

    return start_worker(
        *args, config=config_file, preexec_fn=limit if limit_file_size else None, **popen
    )


def test_full_disk_is_reported_nothing_abandoned_and_no_temp_file_left(sandbox, tmp_path, config):
    big = sandbox.flexperto.add_archive(status="AVAILABLE", size=3 * FILE_SIZE_LIMIT)
    config_file = tmp_path / "config.toml"
    process = run_cli(config_file, "run-once", limit_file_size=True)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 1, err[-2000:]
    failures = [e for e in log_events(err) if e["event"] == "item.failed"]
    assert [f["archive_id"] for f in failures] == [big["id"]]
    assert "File too large" in failures[0]["error"]
    assert sandbox.flexperto.record(big["id"])["status"] == "AVAILABLE"
    folder = config.storage.archive_dir / big["subject"]["conference_id"]
    assert not list(folder.glob(".*"))  # the partial file was removed
    claimed = [r for r in sandbox.flexperto.records() if r["status"] == "ABANDONED"]
    assert len(claimed) == 3  # the small ones went through

    process = run_cli(config_file, "retry", big["id"])
    process.communicate(timeout=60)
    process = run_cli(config_file, "run-once")
    process.communicate(timeout=120)
    assert process.returncode == 0
    assert sandbox.flexperto.record(big["id"])["status"] == "ABANDONED"


def test_unwritable_archive_folder_is_a_clear_error(sandbox, tmp_path, clock, log_lines):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the archive folder should be")
    path = write_config(tmp_path, sandbox)
    path.write_text(
        path.read_text().replace('archive_dir = "archives"', f'archive_dir = "{blocker}/archives"')
    )
    config = load_config(path, env={})
    result = run_pass(config, clock)
    assert result.exit_code == 1
    # The folder is claimed for the state file before any download: one error stops the job.
    errors = [e for e in log_lines() if e["event"] in ("item.failed", "storage.unavailable")]
    assert [e["event"] for e in errors] == ["storage.unavailable"]
    assert "NotADirectoryError" in errors[0]["error"]
    assert not sandbox.s3.requests
    assert not [r for r in sandbox.flexperto.records() if r["status"] == "ABANDONED"]


@contextlib.contextmanager
def refusing_writes(folder: Path) -> Iterator[set[str]]:
    """Make ``folder`` refuse new entries; yields the errnos the worker may be answered. Not
    root: chmod 0500 (EACCES). Root ignores permissions: the folder is made immutable with
    ``chattr +i`` instead (EPERM, even for root), where the file system supports it."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield {"EACCES"}
        finally:
            folder.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)]).returncode != 0:
        pytest.skip("running as root, and chattr +i is not available here")
    try:
        yield {"EPERM"}
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_an_archive_folder_refusing_writes_stops_the_job_once_and_charges_no_archive(
    sandbox, config, run, log_lines
):
    assert run().exit_code == 0  # the folder is claimed, the seeded archives stored
    added = [sandbox.flexperto.add_archive(status="AVAILABLE")["id"] for _ in range(3)]
    with refusing_writes(config.storage.archive_dir) as errnos:
        first = log_lines()
        result = run(jobs=["archives"])
        events = log_lines()[len(first) :]
    assert result.exit_code == 1
    stops = [e for e in events if e["event"] in ("storage.unavailable", "item.failed")]
    assert [e["event"] for e in stops] == ["storage.unavailable"]
    assert stops[0]["path"] == str(config.storage.archive_dir)
    assert stops[0]["errno"] in errnos and stops[0]["errno"] in stops[0]["error"]
    db = open_database(config.state.database)
    rows = db.execute(
        f"select state, attempts, last_error from archives where archive_id in "
        f"({', '.join('?' for _ in added)})",
        added,
    ).fetchall()
    assert rows == [("pending", 0, None)] * 3  # untouched: no try counted against them
    assert {sandbox.flexperto.record(a)["status"] for a in added} == {"AVAILABLE"}

    assert run(jobs=["archives"]).exit_code == 0  # writable again: the next pass stores all
    assert {sandbox.flexperto.record(a)["status"] for a in added} == {"ABANDONED"}


@contextlib.contextmanager
def small_file_system(folder: Path, size: int) -> Iterator[None]:
    """A tmpfs of ``size`` bytes mounted on ``folder`` (root only, where mount works)."""
    folder.mkdir(mode=0o700, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)]
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(mount).returncode:
        pytest.skip("a small file system needs root and a working mount")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_file_system_stops_the_job_once_like_an_unwritable_one(
    sandbox, config, run, log_lines
):
    big = sandbox.flexperto.add_archive(status="AVAILABLE", size=4 * FILE_SIZE_LIMIT)
    with small_file_system(config.storage.archive_dir, FILE_SIZE_LIMIT):
        result = run(jobs=["archives"])
        events = log_lines()
    assert result.exit_code == 1
    stops = [e for e in events if e["event"] in ("storage.unavailable", "item.failed")]
    assert [(e["event"], e.get("errno")) for e in stops] == [("storage.unavailable", "ENOSPC")]
    db = open_database(config.state.database)
    row = db.execute(
        "select state, attempts from archives where archive_id = ?", [big["id"]]
    ).fetchone()
    assert row == ("pending", 0)  # a full disk is the store's fault: the archive is not charged
    assert sandbox.flexperto.record(big["id"])["status"] == "AVAILABLE"


def test_locked_state_database_is_waited_for_within_a_bound_then_reported(
    sandbox, tmp_path, clock, log_lines
):
    path = write_config(tmp_path, sandbox, "")
    path.write_text(
        path.read_text().replace(
            'database = "state.db"', 'database = "state.db"\nbusy_timeout_seconds = 0.5'
        )
    )
    config = load_config(path, env={})
    open_database(config.state.database).close()
    other = sqlite3.connect(config.state.database, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        result = run_pass(config, clock)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert result.exit_code == 1
    assert any(e["event"] == "state.busy" for e in log_lines())
    db = open_database(config.state.database)
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert not [r for r in sandbox.flexperto.records() if r["status"] == "ABANDONED"]
    assert run_pass(config, clock).exit_code == 0
    assert len([r for r in sandbox.flexperto.records() if r["status"] == "ABANDONED"]) == 3


def test_two_runs_at_once_one_proceeds_the_other_steps_aside(sandbox, tmp_path, config):
    # Slow the first listing so that both processes are surely alive at the same time.
    sandbox.add_fault("flexperto", Fault(path="/conferences/archives", action="delay", delay=2.0))
    config_file = tmp_path / "config.toml"
    first, second = run_cli(config_file, "run-once"), run_cli(config_file, "run-once")
    outputs = [process.communicate(timeout=120) for process in (first, second)]
    assert first.returncode == second.returncode == 0
    events = [log_events(err) for _, err in outputs]
    skipped = [any(e["event"] == "run.skipped" for e in ev) for ev in events]
    assert sorted(skipped) == [False, True]
    downloads = Counter(r.path for r in sandbox.s3.requests)
    assert set(downloads.values()) == {1}
    abandons = Counter(r.path for r in sandbox.flexperto.requests if r.method == "POST")
    assert set(abandons.values()) == {1}
    assert len(sandbox.totalexpert.insights()) == 3
