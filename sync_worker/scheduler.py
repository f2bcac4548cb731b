"""The daemon: both jobs every ``interval_seconds``, from start until SIGTERM/SIGINT, and
the audit every ``audit.interval_hours`` (first AUDIT_DELAY after start).

APScheduler keeps the time: the archive job runs on its interval (one run at a time, missed
runs coalesced, the first at once). The insight job runs in a thread of its own whenever it
is woken: by its interval, and by the archive job as soon as that has stored something, so
that insights go out without waiting for the next interval. A wake-up is an
:class:`threading.Event` the thread clears before each run: one that comes while a run is
under way makes it run once more, and none is ever lost or doubled. A stop signal lets the
item in hand finish: the jobs check :meth:`Daemon.stopping` between items.
"""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime, timedelta
from types import FrameType

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from sync_worker.clock import Clock
from sync_worker.config import Config
from sync_worker.jobs.context import Outcome
from sync_worker.logs import exception_fields
from sync_worker.runner import PassResult, run_pass

AUDIT_DELAY = timedelta(minutes=10)  # after start: the first pass has the machine first

log = structlog.get_logger()


class Daemon:
    def __init__(self, config: Config, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._stop = threading.Event()
        self._insights_wanted = threading.Event()
        self._insights = threading.Thread(target=self._insights_loop, name="insights")
        self._scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        for name, action in (("archives", self._run_archives), ("insights", self._wake_insights)):
            self._scheduler.add_job(
                action,
                "interval",
                seconds=config.schedule.interval_seconds,
                id=name,
                name=name,
                next_run_time=datetime.now(UTC),
            )
        # Its own lock and thread: it reads, slowly, beside the sync.
        self._scheduler.add_job(
            self._run_once,
            "interval",
            hours=config.audit.interval_hours,
            args=["audit"],
            id="audit",
            name="audit",
            next_run_time=datetime.now(UTC) + AUDIT_DELAY,
        )

    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if not self._stop.is_set():
            log.info("daemon.stopping", signal=signal.Signals(signum).name if signum else None)
        self._stop.set()
        self._insights_wanted.set()  # so that the insight thread sees the stop

    def serve(self) -> None:
        """Run until :meth:`stop` (or a signal); returns after the running jobs end."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("daemon.started", interval_seconds=self._config.schedule.interval_seconds)
        self._insights.start()
        self._scheduler.start()
        for job in self._scheduler.get_jobs():
            log.info(
                "daemon.scheduled",
                job=job.id,
                every_seconds=job.trigger.interval.total_seconds(),
                next_run=job.next_run_time.isoformat(timespec="seconds"),
            )
        while not self._stop.wait(1.0):
            pass
        self._scheduler.shutdown(wait=True)
        self._insights.join()
        log.info("daemon.stopped")

    def _run_archives(self) -> None:
        result = self._run_once("archives")
        if result is not None and result.stats.counts[Outcome.STORED]:
            self._wake_insights()  # push their insights now, not an interval later

    def _wake_insights(self) -> None:
        self._insights_wanted.set()

    def _insights_loop(self) -> None:
        while True:
            self._insights_wanted.wait()
            if self._stop.is_set():
                return
            self._insights_wanted.clear()  # before the run: a wake-up during it counts
            self._run_once("insights")

    def _run_once(self, name: str) -> PassResult | None:
        if self._stop.is_set():
            return None
        try:
            return run_pass(self._config, self._clock, jobs=[name], stop_requested=self.stopping)
        except Exception as exc:  # run_pass has its own boundaries; this one keeps the daemon up
            log.error("job.failed", job=name, **exception_fields(exc))
            return None
