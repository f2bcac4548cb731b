"""What the passes did, kept across processes for the metrics: each job's last run and
last success, and running totals (TE requests, 429 answers...), so that a timer run, which
lives for one pass, reports the same counters as the daemon."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sync_worker.state.db import Database, transaction


def record_run(
    db: Database,
    jobs: Iterable[str],
    finished_at: float,
    duration: float,
    ok: bool,
    totals: Mapping[str, int],
) -> None:
    """Record one pass of ``jobs`` and add ``totals`` to the running totals."""
    with transaction(db):
        for job in jobs:
            db.execute(
                "insert into job_runs (job, last_finished_at, last_duration, last_ok_at, runs, "
                "failed_runs) values (?, ?, ?, ?, 1, ?) on conflict (job) do update set "
                "last_finished_at = excluded.last_finished_at, "
                "last_duration = excluded.last_duration, "
                "last_ok_at = coalesce(excluded.last_ok_at, job_runs.last_ok_at), "
                "runs = job_runs.runs + 1, "
                "failed_runs = job_runs.failed_runs + excluded.failed_runs",
                [job, finished_at, duration, finished_at if ok else None, 0 if ok else 1],
            )
        for name, value in totals.items():
            db.execute(
                "insert into totals (name, value) values (?, ?) "
                "on conflict (name) do update set value = totals.value + excluded.value",
                [name, value],
            )


def job_runs(db: Database) -> list[dict[str, Any]]:
    """Each job's last run: when it finished, how long it took, its last success, and how
    many runs (and failed runs) it has had."""
    return list(db.query("select * from job_runs order by job"))


def totals(db: Database) -> dict[str, int]:
    return dict(db.execute("select name, value from totals").fetchall())
