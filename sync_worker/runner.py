"""One pass of the worker: the jobs, their locks, their clients, and the summary event."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import structlog

from jobs import claim_archives, push_insights
from jobs.context import JobContext, PassStats
from state.db import open_database
from sync_worker import healthcheck
from sync_worker.archive_store import ArchiveStore
from sync_worker.clock import Clock
from sync_worker.config import Config
from sync_worker.flexperto import FlexpertoClient
from sync_worker.locks import LockHeld, job_lock
from sync_worker.totalexpert import TotalExpertClient

JOBS: dict[str, Callable[[JobContext], None]] = {
    "archives": claim_archives.run,
    "insights": push_insights.run,
}
ALL_JOBS = tuple(JOBS)

log = structlog.get_logger()


@dataclass(frozen=True)
class PassResult:
    stats: PassStats
    locked_out: bool = False

    @property
    def exit_code(self) -> int:
        """0: nothing left failing; 1: some item failed and will be retried."""
        return 1 if self.stats.failures else 0


def run_pass(
    config: Config,
    clock: Clock,
    jobs: Sequence[str] = ALL_JOBS,
    stop_requested: Callable[[], bool] = lambda: False,
) -> PassResult:
    """Run ``jobs`` once, in order, each under its lock, and log one ``run.finished``."""
    stats = PassStats()
    started = time.monotonic()
    log.info("run.started", jobs=list(jobs))
    with ExitStack() as stack:
        try:
            for name in jobs:
                stack.enter_context(job_lock(config.state.database, name))
        except LockHeld as exc:
            log.warning("run.skipped", reason=str(exc))
            return PassResult(stats, locked_out=True)
        db = open_database(config.state.database)
        stack.callback(db.close)
        flexperto = FlexpertoClient(config.flexperto, config.http, clock.sleep)
        stack.callback(flexperto.close)
        totalexpert = TotalExpertClient(config.totalexpert, config.http, db, clock)
        stack.callback(totalexpert.close)
        context = JobContext(
            config=config,
            db=db,
            clock=clock,
            flexperto=flexperto,
            totalexpert=totalexpert,
            store=ArchiveStore(config.storage.archive_dir),
            stats=stats,
            stop_requested=stop_requested,
        )
        for name in jobs:
            JOBS[name](context)
        summary = {
            "jobs": list(jobs),
            "outcomes": dict(sorted(stats.counts.items())),
            "bytes_downloaded": stats.bytes_downloaded,
            "duration_seconds": round(time.monotonic() - started, 3),
            "te_requests": totalexpert.requests_sent,
            "te_tokens_requested": totalexpert.tokens_requested,
        }
        log.info("run.finished", **summary)
    result = PassResult(stats)
    healthcheck.ping(config.monitoring.healthcheck_url, result.exit_code == 0, json.dumps(summary))
    return result
