"""Run locks: one holder per job and state file, across processes, released however the
holder ends."""

import stat
import subprocess
import sys

import pytest

from sync_worker.core.locks import LockHeld, job_lock, job_locks

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_job_has_one_holder_at_a_time(tmp_path):
    database = tmp_path / "state.db"
    with job_lock(database, "archives"):
        with (
            pytest.raises(LockHeld, match=r"state\.db\.archives\.lock"),
            job_lock(database, "archives"),
        ):
            pass
        with job_lock(database, "insights"):  # another job: its own lock
            pass
    with job_lock(database, "archives"):  # released on leaving
        pass


def test_the_lock_file_is_private(tmp_path):
    with job_lock(tmp_path / "sub" / "state.db", "archives"):
        path = tmp_path / "sub" / "state.db.archives.lock"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_lock_held_by_another_process_is_respected_until_it_dies(tmp_path):
    database = tmp_path / "state.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "state.db.archives.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(LockHeld), job_lock(database, "archives"):
            pass
    finally:
        holder.kill()  # as a SIGKILL: the kernel releases the lock
        holder.wait()
    with job_lock(database, "archives"):
        pass


def test_all_the_jobs_locks_or_none(tmp_path):
    database = tmp_path / "state.db"
    with job_lock(database, "insights"):
        with (
            pytest.raises(LockHeld, match="insights"),
            job_locks(database, ["archives", "insights"]),
        ):
            pass
        with job_lock(database, "archives"):  # not left held by the failed attempt
            pass
