"""One pass of the worker: the jobs, their locks, their clients, and the summary event.

Error boundaries: an item that fails is recorded by its job and the job goes on; anything
else a job raises ends that job with one ``job.failed`` event, and the next job still runs;
a pass that cannot even be set up (state file, clients) logs ``run.failed``. Each counts as
a failure (exit 1), and ``run.finished`` is logged whatever happened: no exception leaves a
pass.

A pass that reaches its state file is kept in its history (state.pass_history): a row
written as it starts, completed as it ends (ok, failed, or stopped with the error, Ctrl-C
included); a pass killed leaves its row unfinished.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import structlog

from sync_worker.adapters import healthcheck
from sync_worker.adapters.flexperto.client import FlexpertoClient
from sync_worker.adapters.stores import open_store
from sync_worker.adapters.totalexpert import TotalExpertClient, TotalExpertSession
from sync_worker.config import Config
from sync_worker.core.clock import Clock
from sync_worker.core.locks import LockHeld
from sync_worker.core.logs import exception_fields, mask
from sync_worker.jobs import audit_archives, claim_archives, push_insights, webhook_subscription
from sync_worker.jobs.context import AuditPlan, JobContext, Outcome, PassStats
from sync_worker.state import pass_history, run_history
from sync_worker.state.configured import job_locks, open_state
from sync_worker.state.db import Database, StateBusyError
from sync_worker.state.te_access import SharedAccess

JOBS: dict[str, Callable[[JobContext], None]] = {
    "archives": claim_archives.run,
    "insights": push_insights.run,
    "audit": audit_archives.run,
    "webhook": webhook_subscription.run,
}
# A pass: what run-once runs. The audit runs on its own (the daemon, sync-worker audit), and
# so does the webhook subscription (the daemon).
ALL_JOBS = ("archives", "insights")

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
    audit_plan: AuditPlan | None = None,
) -> PassResult:
    """Run ``jobs`` once, in order, under their locks, and log one ``run.finished``
    (``audit_plan``: what the audit job reads, when it is one of them). Every event of
    the pass, in any thread it starts, names the tenant."""
    with structlog.contextvars.bound_contextvars(**config.log_fields()):
        return _run_pass(config, clock, jobs, stop_requested, audit_plan)


def run_passes(configs: Sequence[Config], clock: Clock, **options: Any) -> list[PassResult]:
    """:func:`run_pass` for every tenant, side by side, so that one tenant's backlog does
    not hold another's up. Ctrl-C lets each finish the item in hand, as with one tenant."""
    if len(configs) == 1:
        return [run_pass(configs[0], clock, **options)]
    interrupted = threading.Event()
    with ThreadPoolExecutor(len(configs), thread_name_prefix="tenant") as pool:
        futures = [
            pool.submit(run_pass, config, clock, stop_requested=interrupted.is_set, **options)
            for config in configs
        ]
        try:
            return [future.result() for future in futures]
        except KeyboardInterrupt:
            interrupted.set()
            raise


def _run_pass(
    config: Config,
    clock: Clock,
    jobs: Sequence[str],
    stop_requested: Callable[[], bool],
    audit_plan: AuditPlan | None,
) -> PassResult:
    stats = PassStats()
    started = time.monotonic()
    log.info("run.started", jobs=list(jobs))
    monitor = config.network.common_route()
    healthcheck.ping_start(config.monitoring.healthcheck_url, monitor)
    try:
        with job_locks(config.state, jobs):
            _run_jobs(
                config, clock, jobs, stats, stop_requested, audit_plan or AuditPlan(), started
            )
    except LockHeld as exc:
        log.warning("run.skipped", reason=str(exc))
        return PassResult(stats, locked_out=True)
    except StateBusyError as exc:
        # Nothing is half-done: every checkpoint is one transaction, and this one never began.
        log.error("state.busy", error=str(exc))
        stats.add(Outcome.FAILED)
    except Exception as exc:  # the pass could not be set up (state file, locks, clients)
        log.error("run.failed", **exception_fields(exc))
        stats.add(Outcome.FAILED)
    summary = {
        "jobs": list(jobs),
        "outcomes": dict(sorted(stats.counts.items())),
        "bytes_downloaded": stats.bytes_downloaded,
        "duration_seconds": round(time.monotonic() - started, 3),
        "network_seconds": round(stats.network_seconds, 3),
        "te_requests": stats.te_requests,
        "te_tokens_requested": stats.te_tokens_requested,
        "te_rate_limited": stats.te_rate_limited,
    }
    result = PassResult(stats)
    log.info("run.finished", **summary)
    healthcheck.ping(
        config.monitoring.healthcheck_url, result.exit_code == 0, json.dumps(summary), monitor
    )
    return result


def _run_jobs(
    config: Config,
    clock: Clock,
    jobs: Sequence[str],
    stats: PassStats,
    stop_requested: Callable[[], bool],
    audit_plan: AuditPlan,
    started: float,
) -> None:
    db = open_state(config.state)
    try:
        pass_id = _begin_record(db, clock, jobs, config.tenant or None)
        try:
            _run_with_clients(config, db, clock, jobs, stats, stop_requested, audit_plan)
        except KeyboardInterrupt:
            stats.job_errors["pass"] = "interrupted (Ctrl-C)"
            _end_record(db, clock, pass_id, stats, config.state.history_days)
            raise
        except Exception as exc:
            stats.job_errors["pass"] = _error_text(exc)
            _end_record(db, clock, pass_id, stats, config.state.history_days)
            raise
        _remember(db, clock, jobs, time.monotonic() - started, stats)
        _end_record(db, clock, pass_id, stats, config.state.history_days)
    finally:
        db.close()


def _run_with_clients(
    config: Config,
    db: Database,
    clock: Clock,
    jobs: Sequence[str],
    stats: PassStats,
    stop_requested: Callable[[], bool],
    audit_plan: AuditPlan,
) -> None:
    with ExitStack() as stack:
        flexperto = FlexpertoClient(config.flexperto, config.http, clock, config.network)
        stack.callback(flexperto.close)
        access = SharedAccess.for_config(db, config.totalexpert, config.state.busy_timeout_seconds)
        stack.callback(access.close)
        session = TotalExpertSession(config.totalexpert, config.http, access, clock, config.network)
        totalexpert = TotalExpertClient(session)
        stack.callback(totalexpert.close)
        context = JobContext(
            config=config,
            db=db,
            clock=clock,
            flexperto=flexperto,
            totalexpert=totalexpert,
            store=open_store(
                config.storage,
                config.http,
                config.network,
                saves_at_once=config.flexperto.max_parallel_downloads,
            ),
            stats=stats,
            stop_requested=stop_requested,
            audit_plan=audit_plan,
        )
        try:
            for name in jobs:
                _run_job(name, context)
        finally:
            spent = totalexpert.session
            stats.te_requests = spent.requests_sent
            stats.te_tokens_requested = spent.tokens_requested
            stats.te_rate_limited = spent.rate_limited
            stats.network_seconds = flexperto.network.seconds + spent.network.seconds


def _begin_record(
    db: Database, clock: Clock, jobs: Sequence[str], tenant: str | None
) -> int | None:
    """The pass's row in the history (state.pass_history), or None if it could not be
    written (logged; the pass goes on)."""
    try:
        return pass_history.start_pass(db, clock.now(), jobs, tenant)
    except Exception as exc:
        log.warning("run.history_failed", **exception_fields(exc))
        return None


def _end_record(
    db: Database,
    clock: Clock,
    pass_id: int | None,
    stats: PassStats,
    history_days: int,
) -> None:
    """Complete the pass's row: stopped if a job (or the pass) stopped on an error, failed
    if some item failed, else ok; and prune the passes older than ``history_days``."""
    if pass_id is None:
        return
    if stats.job_errors:
        outcome = pass_history.STOPPED
    else:
        outcome = pass_history.FAILED if stats.failures else pass_history.OK
    now = clock.now()
    end = pass_history.PassEnd(
        finished_at=now,
        outcome=outcome,
        counts=stats.job_counts,
        errors=stats.job_errors,
        bytes_stored=stats.bytes_stored,
        te_requests=stats.te_requests,
        te_tokens_requested=stats.te_tokens_requested,
    )
    try:
        pass_history.finish_pass(db, pass_id, end, keep_after=now - history_days * 86_400)
    except Exception as exc:
        log.warning("run.history_failed", **exception_fields(exc))


def _error_text(exc: BaseException) -> str:
    """What stopped a job, as kept in the history: its class and message, secrets masked."""
    fields = exception_fields(exc)
    return mask(f"{fields['error_class']}: {fields['error']}")


def _remember(
    db: Database,
    clock: Clock,
    jobs: Sequence[str],
    duration: float,
    stats: PassStats,
) -> None:
    """Keep the pass in the state file for the metrics (state.run_history), through the
    pass's own connection; a pass that could not reach the state file leaves no record. A
    failure to record is logged and changes nothing else."""
    totals = {
        "te_requests": stats.te_requests,
        "te_rate_limited": stats.te_rate_limited,
        "te_tokens_requested": stats.te_tokens_requested,
        "te_token_budget_exhausted": stats.te_token_budget_exhausted,
        "bytes_downloaded": stats.bytes_downloaded,
    }
    ok = stats.failures == 0
    try:
        run_history.record_run(db, jobs, clock.now(), round(duration, 3), ok, totals)
    except Exception as exc:
        log.warning("run.history_failed", **exception_fields(exc))


def _run_job(name: str, context: JobContext) -> None:
    """Run one job; whatever it raises ends it (not the pass) with one ``job.failed``."""
    before = context.stats.snapshot()
    try:
        JOBS[name](context)
    except StateBusyError:
        raise  # the other job could not reach the state file either: end the pass
    except Exception as exc:
        log.error("job.failed", job=name, **exception_fields(exc))
        context.stats.add(Outcome.FAILED)
        context.stats.job_errors[name] = _error_text(exc)
    finally:
        context.stats.job_counts[name] = context.stats.counts_since(before)
