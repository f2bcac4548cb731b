"""Run locks: one holder per job and state file, across processes.

A cron ``run-once`` that overlaps the daemon or a manual run finds the lock taken and steps
aside. The lock is an ``flock`` on a file beside the database, released by the kernel when
the holder exits, however it exits.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sync_worker.core.private_files import make_private_dirs


class LockHeld(Exception):
    """Another process is running the same job on the same state file."""


@contextmanager
def job_lock(database: Path, job: str) -> Iterator[None]:
    path = database.with_name(f"{database.name}.{job}.lock")
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"another process holds {path}") from None
        yield
    finally:
        os.close(fd)


@contextmanager
def job_locks(database: Path, jobs: Iterable[str]) -> Iterator[None]:
    """All the jobs' locks, or LockHeld naming the first that is taken."""
    with ExitStack() as stack:
        for job in jobs:
            stack.enter_context(job_lock(database, job))
        yield
