"""The audit job: read stored archives back, hash them, and compare with the ledger.

Run by the daemon every ``audit.interval_hours``, it reads the archives audited longest
ago, enough of them that every archive is read at least once every ``audit.period_days``,
no faster than ``audit.max_mib_per_second`` so that the sync is not slowed. ``sync-worker
audit`` runs it by hand: a sample, or everything (which also reports the store's files the
ledger does not know). Each result is recorded (state.audits), and SHA256SUMS is rewritten
from the ledger at the end. A store that cannot be reached or read at all stops the audit at
once (``storage.unavailable``), not one ``audit.failed`` per archive.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import structlog

from sync_worker.adapters.stores import Missing, StoreError, StoreUnavailable
from sync_worker.core.clock import Clock
from sync_worker.core.errors import JobStop
from sync_worker.jobs import claim_archives, sha256sums
from sync_worker.jobs.context import JobContext, Outcome
from sync_worker.state import archives, audits
from sync_worker.state.audits import Stored

MIB = 1024 * 1024

log = structlog.get_logger(job="audit")


def run(ctx: JobContext) -> None:
    if not claim_archives.claim_store(ctx, log):  # it rewrites SHA256SUMS in the store
        return
    plan = ctx.audit_plan
    rate = plan.max_bytes_per_second or ctx.config.audit.max_mib_per_second * MIB
    throttle = Throttle(rate, ctx.clock)
    try:
        for item in _chosen(ctx):
            if ctx.stop_requested():
                log.info("run.stopping")
                return
            audit_one(ctx, item, throttle)
    except StoreUnavailable as exc:  # no archive is to blame: the audit stops, tried next run
        log.error("storage.unavailable", **exc.fields, error=str(exc))
        ctx.stats.add(Outcome.FAILED)
        return
    if plan.everything:
        _report_unexpected(ctx)
    if not sha256sums.rewrite(ctx):
        ctx.stats.add(Outcome.FAILED)


def _chosen(ctx: JobContext) -> Iterator[Stored] | list[Stored]:
    plan = ctx.audit_plan
    if plan.everything:
        return audits.every_stored(ctx.db)
    return audits.least_recently_audited(ctx.db, plan.sample or share_due(ctx))


def share_due(ctx: JobContext) -> int:
    """How many archives a run reads so that each is read once in ``period_days``."""
    audit = ctx.config.audit
    runs_per_period = audit.period_days * 24 / audit.interval_hours
    return math.ceil(audits.count(ctx.db) / max(runs_per_period, 1))


def audit_one(ctx: JobContext, item: Stored, throttle: Throttle) -> None:
    bound = log.bind(archive_id=item.archive_id, conference_id=item.conference_id)
    digest = hashlib.sha256()
    try:
        for chunk in ctx.store.read(item.location):
            digest.update(chunk)
            throttle.spent(len(chunk))
    except Missing as exc:
        _found(ctx, item, audits.MISSING, str(exc))
        bound.error("audit.missing", location=item.location)
        ctx.stats.add(Outcome.AUDIT_MISSING)
        return
    except JobStop:
        raise
    except (StoreError, OSError) as exc:  # says nothing about the archive: tried next run
        bound.warning("audit.failed", location=item.location, error=str(exc))
        ctx.stats.add(Outcome.FAILED)
        return
    if digest.hexdigest() != item.sha256:
        _found(ctx, item, audits.MISMATCH, f"sha256 {digest.hexdigest()}")
        bound.error(
            "audit.mismatch", location=item.location, expected=item.sha256, found=digest.hexdigest()
        )
        ctx.stats.add(Outcome.AUDIT_MISMATCH)
        return
    _found(ctx, item, audits.OK, "")
    bound.info("audit.ok", location=item.location)
    ctx.stats.add(Outcome.AUDITED)


def _found(ctx: JobContext, item: Stored, result: str, detail: str) -> None:
    audits.note(ctx.db, item.archive_id, result, detail, ctx.clock.now())


def _report_unexpected(ctx: JobContext) -> None:
    """Files of the store that the ledger does not place there (looked up one by one, so
    that no list of the whole ledger is held)."""
    for location in ctx.store.archives():
        archive_id = location.rsplit("/", 1)[-1].removesuffix(".zip")
        row = archives.get(ctx.db, archive_id)
        if row is None or row.path != location:
            log.warning("audit.unexpected", location=location)
            ctx.stats.add(Outcome.AUDIT_UNEXPECTED)


class Throttle:
    """Keeps reading under ``rate`` bytes a second on average, by sleeping."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self._rate, self._clock = rate, clock
        self._started = clock.now()
        self._spent = 0

    def spent(self, count: int) -> None:
        self._spent += count
        ahead = self._spent / self._rate - (self._clock.now() - self._started)
        if ahead > 0:
            self._clock.sleep(ahead)
