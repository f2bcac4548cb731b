"""The daemon: APScheduler runs each job every ``interval_seconds`` until SIGTERM/SIGINT.

Each job has at most one run at a time (the archive job through ``max_instances=1``, the
insight job through its own guard, so that a wake-up is never dropped), missed runs are
coalesced into one, and the first run starts at once. A stop signal lets the item in hand finish:
jobs check :attr:`Daemon.stopping` between items.
"""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from types import FrameType

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from sync_worker.clock import Clock
from sync_worker.config import Config
from sync_worker.jobs.context import Outcome
from sync_worker.logs import exception_fields
from sync_worker.runner import ALL_JOBS, PassResult, run_pass

log = structlog.get_logger()


class Daemon:
    def __init__(self, config: Config, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._stop = threading.Event()
        # Wake-ups of the insight job: guarded so that none is lost while it finishes.
        self._insights_lock = threading.Lock()
        self._insights_running = False
        self._insights_due = False
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(len(ALL_JOBS) + 1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        for name in ALL_JOBS:
            self._scheduler.add_job(
                self._run_job,
                "interval",
                seconds=config.schedule.interval_seconds,
                args=[name],
                id=name,
                name=name,
                next_run_time=datetime.now(UTC),
                # A wake-up may arrive while the insight job is returning: let it start, it
                # then finds the job running (_run_insights) and leaves a note instead.
                max_instances=2 if name == "insights" else 1,
            )

    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if not self._stop.is_set():
            log.info("daemon.stopping", signal=signal.Signals(signum).name if signum else None)
        self._stop.set()

    def serve(self) -> None:
        """Run until :meth:`stop` (or a signal); returns after the running jobs end."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("daemon.started", interval_seconds=self._config.schedule.interval_seconds)
        self._scheduler.start()
        while not self._stop.wait(1.0):
            pass
        self._scheduler.shutdown(wait=True)
        log.info("daemon.stopped")

    def _run_job(self, name: str) -> None:
        if name == "insights":
            self._run_insights()
            return
        result = self._run_once(name)
        if result is not None and result.stats.counts[Outcome.STORED]:
            self._wake_insights()

    def _run_insights(self) -> None:
        """Run the insight job until no wake-up came in while it ran."""
        with self._insights_lock:
            if self._insights_running:
                self._insights_due = True
                return
            self._insights_running, self._insights_due = True, True
        while True:
            with self._insights_lock:
                if self._stop.is_set() or not self._insights_due:
                    self._insights_running = False
                    return
                self._insights_due = False
            self._run_once("insights")

    def _wake_insights(self) -> None:
        """New archives were stored: push their insights now, not an interval later."""
        with self._insights_lock:
            self._insights_due = True
            if self._insights_running:
                return  # the running job sees the flag before it stops
        self._scheduler.modify_job("insights", next_run_time=datetime.now(UTC))

    def _run_once(self, name: str) -> PassResult | None:
        if self._stop.is_set():
            return None
        try:
            return run_pass(self._config, self._clock, jobs=[name], stop_requested=self.stopping)
        except Exception as exc:  # run_pass has its own boundaries; this one keeps the daemon up
            log.error("job.failed", job=name, **exception_fields(exc))
            return None
