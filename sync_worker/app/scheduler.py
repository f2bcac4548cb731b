"""The daemon: for every tenant, both jobs every ``interval_seconds`` from start until
SIGTERM/SIGINT, and the audit every ``audit.interval_hours`` (first AUDIT_DELAY after
start); the metrics endpoint and the webhook receiver when configured.

APScheduler keeps the time; the archive and insight jobs of each tenant run in threads of
their own (:class:`JobLoop`) whenever they are woken: by their interval, the insight job
also by the archive job as soon as that has stored something (so that insights go out
without waiting for the next interval), the archive job also by a webhook. A wake-up that
comes while a run is under way makes it run once more; none is lost or doubled. Tenants'
jobs run side by side, so one tenant's backlog never waits for another's; those sharing a
TE host share its budget. A stop signal lets the item in hand finish: the jobs check
:meth:`Daemon.stopping` between items.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from sync_worker.adapters.webhook_receiver import WebhookReceiver
from sync_worker.app.runner import PassResult, run_pass
from sync_worker.config import Config
from sync_worker.core.clock import Clock
from sync_worker.core.logs import exception_fields
from sync_worker.jobs.context import Outcome
from sync_worker.jobs.webhook_subscription import accepted_secrets
from sync_worker.ops import metrics
from sync_worker.state.db import StateFileError, database_errors

AUDIT_DELAY = timedelta(minutes=10)  # after start: the first pass has the machine first
WEBHOOK_CHECK = timedelta(hours=1)  # how often the subscription and its rotation are seen to

log = structlog.get_logger()


class JobLoop:
    """A thread that runs ``action`` once per wake-up, until ``stop`` is set."""

    def __init__(self, name: str, action: Callable[[], None], stop: threading.Event) -> None:
        self._action = action
        self._stop = stop
        self._wanted = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wanted.set()

    def join(self) -> None:
        self._wanted.set()  # so that the thread sees the stop
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            if self._stop.is_set():
                return
            self._wanted.clear()  # before the run: a wake-up during it counts
            self._action()


class TenantJobs:
    """One tenant's archive and insight loops, its audit and its webhook subscription."""

    def __init__(self, daemon: Daemon, config: Config) -> None:
        self.config = config
        self._daemon = daemon
        self.job_prefix = f"{config.tenant}:" if config.tenant else ""  # APScheduler job ids
        stop = daemon.stop_event
        self.archives = JobLoop(f"{self.job_prefix}archives", self._run_archives, stop)
        self.insights = JobLoop(f"{self.job_prefix}insights", self._run_insights, stop)

    def run_audit(self) -> None:
        self._daemon.run_job(self.config, "audit")

    def run_webhook(self) -> None:
        """Keep the webhook subscription (and its rotation) up, then tell the receiver
        which secret paths are this tenant's now."""
        self._daemon.run_job(self.config, "webhook")
        self._daemon.accept_secrets(self.config)

    def _run_archives(self) -> None:
        result = self._daemon.run_job(self.config, "archives")
        if result is not None and result.stats.counts[Outcome.STORED]:
            self.insights.wake()  # push their insights now, not an interval later

    def _run_insights(self) -> None:
        self._daemon.run_job(self.config, "insights")


class Daemon:
    def __init__(self, configs: Sequence[Config], clock: Clock) -> None:
        self._configs = list(configs)
        self._process = self._configs[0]  # schedule, metrics, webhook: one per process
        self._clock = clock
        self.stop_event = threading.Event()
        self._metrics = metrics.registry_for(self._configs, clock)
        self._servers: list[Any] = []
        self.tenants = [TenantJobs(self, config) for config in self._configs]
        self._receiver: WebhookReceiver | None = None
        if self._process.webhook.listen:
            self._receiver = WebhookReceiver(self._process.webhook.listen, self.wake_archives)
        self._job_tenants: dict[str, Config] = {}  # APScheduler job id -> its tenant
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(2 * len(self.tenants) + 2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        for tenant in self.tenants:
            self._schedule(tenant)

    def _schedule(self, tenant: TenantJobs) -> None:
        now = datetime.now(UTC)
        every = timedelta(seconds=tenant.config.schedule.interval_seconds)
        jobs = [
            ("archives", tenant.archives.wake, every, now),
            ("insights", tenant.insights.wake, every, now),
            # Its own thread: it reads, slowly, beside the sync.
            (
                "audit",
                tenant.run_audit,
                timedelta(hours=tenant.config.audit.interval_hours),
                now + AUDIT_DELAY,
            ),
        ]
        if self._receiver is not None:
            jobs.append(("webhook", tenant.run_webhook, WEBHOOK_CHECK, now))
        for name, action, interval, first_run in jobs:
            job = self._scheduler.add_job(
                action,
                "interval",
                seconds=interval.total_seconds(),
                id=tenant.job_prefix + name,
                name=name,
                next_run_time=first_run,
            )
            self._job_tenants[job.id] = tenant.config

    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if not self.stop_event.is_set():
            log.info("daemon.stopping", signal=signal.Signals(signum).name if signum else None)
        self.stop_event.set()

    def serve(self) -> None:
        """Run until :meth:`stop` (or a signal); returns after the running jobs end."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info(
            "daemon.started",
            interval_seconds=self._process.schedule.interval_seconds,
            tenants=[config.tenant for config in self._configs if config.tenant],
        )
        self._start_servers()
        loops = [loop for tenant in self.tenants for loop in (tenant.archives, tenant.insights)]
        for loop in loops:
            loop.start()
        self._scheduler.start()
        self._log_schedule()
        while not self.stop_event.wait(1.0):
            pass
        self._scheduler.shutdown(wait=True)
        for loop in loops:
            loop.join()
        for server in self._servers:
            server.shutdown()
        log.info("daemon.stopped")

    def run_job(self, config: Config, name: str) -> PassResult | None:
        """One run of a tenant's job, then the metrics textfile; never raises."""
        if self.stop_event.is_set():
            return None
        try:
            result = run_pass(config, self._clock, jobs=[name], stop_requested=self.stopping)
        except Exception as exc:  # run_pass has its own boundaries; this one keeps the daemon up
            log.error("job.failed", job=name, **config.log_fields(), **exception_fields(exc))
            result = None
        if self._process.metrics.textfile_path is not None:
            metrics.write_textfile(self._process.metrics.textfile_path, self._metrics)
        return result

    def wake_archives(self, tenant: str) -> None:
        """A webhook said an archive is available: claim it now, not an interval later."""
        for jobs in self.tenants:
            if jobs.config.tenant == tenant:
                jobs.archives.wake()

    def accept_secrets(self, config: Config) -> None:
        """Give the receiver the tenant's current secret paths, from its state file."""
        if self._receiver is None:
            return
        try:
            self._receiver.accept(config.tenant, accepted_secrets(config, self._clock.now()))
        except (*database_errors(), StateFileError, OSError) as exc:
            log.warning(
                "webhook.secrets_unreadable", **config.log_fields(), **exception_fields(exc)
            )

    def _start_servers(self) -> None:
        served = self._process.metrics
        if served.listen:
            self._servers.append(metrics.serve(served.listen, self._metrics, served.allow_remote))
        if self._receiver is not None:
            for config in self._configs:
                self.accept_secrets(config)  # those of the last run, until the job has run
            self._servers.append(self._receiver.start())

    def _log_schedule(self) -> None:
        for job in self._scheduler.get_jobs():
            log.info(
                "daemon.scheduled",
                job=job.name,
                every_seconds=job.trigger.interval.total_seconds(),
                next_run=job.next_run_time.isoformat(timespec="seconds"),
                **self._job_tenants[job.id].log_fields(),
            )
