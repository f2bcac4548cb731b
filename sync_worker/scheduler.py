"""The daemon: APScheduler runs each job every ``interval_seconds`` until SIGTERM/SIGINT.

Each job has at most one run at a time (``max_instances=1``), missed runs are coalesced
into one, and the first run starts at once. A stop signal lets the item in hand finish:
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
from sync_worker.runner import ALL_JOBS, PassResult, run_pass

log = structlog.get_logger()


class Daemon:
    def __init__(self, config: Config, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._stop = threading.Event()
        self._insights_due = threading.Event()
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(len(ALL_JOBS))},
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
            # Runs again at once when archives were stored while it was running.
            self._insights_due.set()
            while not self._stop.is_set() and self._insights_due.is_set():
                self._insights_due.clear()
                self._run_once(name)
            return
        result = self._run_once(name)
        if result is not None and result.stats.counts["stored"]:
            self._wake_insights()

    def _wake_insights(self) -> None:
        """New archives were stored: push their insights now, not an interval later."""
        self._insights_due.set()
        self._scheduler.modify_job("insights", next_run_time=datetime.now(UTC))

    def _run_once(self, name: str) -> PassResult | None:
        if self._stop.is_set():
            return None
        try:
            return run_pass(self._config, self._clock, jobs=[name], stop_requested=self.stopping)
        except Exception:  # the daemon outlives any single failed run
            log.exception("run.crashed", job=name)
            return None
