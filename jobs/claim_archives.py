"""The archive job: list, download, verify, store, then abandon each Flexperto archive.

An archive is abandoned (and so scheduled for deletion by Flexperto) only once its file is
complete on disk, fsynced, hash-verified, renamed into place, and checkpointed in SQLite.
Each step is checkpointed or idempotent, so a pass cut short anywhere is completed by the
next one without downloading, abandoning or queueing anything twice. Each archive is one
item: whatever goes wrong with it is recorded as its failure, and the others go on; but a
store that refuses writes (StoreUnwritable: permissions, a read-only or full file system, a
bucket's AccessDenied) or cannot be reached (StoreUnreachable: refused, DNS, a timeout)
stops the job at once with one ``storage.unavailable``, charging no archive a try; the
archives in hand keep their verified spool copies, which the next pass uploads. A bucket
that cannot hold the retention configured stops the job before any download
(``storage.misconfigured``).
"""

from __future__ import annotations

import contextvars
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import replace
from queue import Empty, SimpleQueue
from typing import Any

import structlog

from sync_worker.adapters.flexperto.client import PREFERRED_LISTING, ListingForm
from sync_worker.adapters.flexperto.records import (
    IN_PROGRESS,
    ArchiveRecord,
    RecordError,
    parse_record,
    people_from_archive,
)
from sync_worker.adapters.http import ApiError
from sync_worker.adapters.stores import (
    ArchiveFile,
    Download,
    ForeignOwner,
    Misconfigured,
    Saved,
    StoreError,
    StoreOwner,
    StoreUnavailable,
    TooLarge,
    VerificationError,
)
from sync_worker.jobs import sha256sums
from sync_worker.jobs.context import JobContext, Outcome
from sync_worker.jobs.item_failures import ItemBoundary, error_text, fail_item
from sync_worker.state import archives, capabilities, held_records, store_owner
from sync_worker.state.abandon_rule import conference_blockers
from sync_worker.state.archives import ArchiveRow
from sync_worker.state.configured import open_state, state_place
from sync_worker.state.db import ThreadConnections, make_durable
from sync_worker.state.lifecycles import ARCHIVE_ON_FAILURE, ArchiveState
from sync_worker.state.work_items import is_due

# Downloadable ones, and those still being made: they hold their conference back.
LISTED_STATUSES = ("AVAILABLE", "ABANDONED", *sorted(IN_PROGRESS))
# A form short of the preferred one is tried again after this long: services change.
RECHECK_SECONDS = 7 * 24 * 3600
# What holds every conference back when this pass's listing was not read whole.
NOT_WHOLE = "the listing, not read whole this pass"
# The record's status as Flexperto reports it, when the listing did not show the archive.
CLAIMED_REMOTELY = frozenset({"ABANDONED", "EXPIRED"})

log = structlog.get_logger(job="archives")


def run(ctx: JobContext) -> None:
    """One pass of the archive job: store what is new, make that durable, then abandon."""
    if not claim_store(ctx, log):
        return
    try:
        for key in ctx.store.tidy():  # what passes cut short left (uploads in parts)
            log.warning("storage.upload_aborted", key=key)
    except StoreError as exc:  # nothing can be stored: leave it all for a later pass
        log.error("storage.unavailable", error=str(exc))
        ctx.stats.add(Outcome.FAILED)
        return
    stored_before = ctx.stats.counts[Outcome.STORED]
    listed, listed_whole = refresh_listing(ctx)
    open_work = archives.open_work(ctx.db)
    due = _due(ctx, open_work)
    if len(due) < len(open_work):
        ctx.stats.add(Outcome.WAITING, len(open_work) - len(due))
    to_store = [row for row in due if row.state != ArchiveState.STORED]
    ctx.progress.start_pass(len(to_store))
    abandoning = threading.Lock()  # one abandon at a time: siblings finish together
    unavailable = threading.Event()  # the store refused a write or went: no thread goes on
    downloads = replace(ctx, stop_requested=lambda: ctx.stop_requested() or unavailable.is_set())

    def store_then_abandon(thread_ctx: JobContext, row: ArchiveRow) -> None:
        """Abandon as soon as the archive is stored, not after the other downloads (one of
        which may take hours): its checkpoint made durable first."""
        try:
            stored = store(thread_ctx, row)
        except StoreUnavailable:
            unavailable.set()
            raise
        if stored:
            with abandoning:
                make_durable(thread_ctx.db)
                abandon(thread_ctx, row, row.archive_id in listed, listed_whole)

    try:
        _in_parallel(downloads, to_store, store_then_abandon)
    except StoreUnavailable as exc:  # no archive is to blame: the job stops, none is charged
        log.error("storage.unavailable", **exc.fields, error=str(exc))
        ctx.stats.add(Outcome.FAILED)
        return
    finally:
        ctx.progress.finish()
    # What was stored before this pass, or had to wait for a sibling: one fsync makes every
    # checkpoint survive a power cut before anything else is abandoned.
    make_durable(ctx.db)
    for row in _due(ctx, archives.open_work(ctx.db)):
        if ctx.stop_requested():
            log.info("run.stopping")
            return
        if row.state == ArchiveState.STORED:
            abandon(ctx, row, row.archive_id in listed, listed_whole)
    if ctx.stats.counts[Outcome.STORED] > stored_before and not ctx.store.appends_sums:
        sha256sums.rewrite(ctx)  # a bucket's SHA256SUMS: a failure waits for the next pass


def claim_store(ctx: JobContext, logger: Any) -> bool:
    """Make sure the archive store belongs to this state file (recording it the first
    time), before anything is downloaded or written there; False, with one error event,
    when it is another's (``storage.foreign_owner``), cannot keep archives as configured
    (``storage.misconfigured``) or cannot be reached."""
    try:
        place = state_place(ctx.config.state, ctx.db)
        ctx.store.claim(StoreOwner.of(store_owner.state_id(ctx.db), place))
    except ForeignOwner as exc:
        logger.error("storage.foreign_owner", error=str(exc), owner=exc.owner.describe())
    except Misconfigured as exc:
        logger.error("storage.misconfigured", bucket=exc.bucket, error=str(exc))
    except (StoreError, OSError) as exc:
        logger.error("storage.unavailable", error=error_text(exc)[0])
    else:
        return True
    ctx.stats.add(Outcome.FAILED)
    return False


def _due(ctx: JobContext, rows: list[ArchiveRow]) -> list[ArchiveRow]:
    now = ctx.clock.now()
    return [row for row in rows if is_due(row.next_attempt_at, now)]


def _in_parallel(
    ctx: JobContext, rows: list[ArchiveRow], step: Callable[[JobContext, ArchiveRow], None]
) -> None:
    """Run ``step`` on every row, ``max_parallel_downloads`` at a time, each thread with its
    own database connection, taking the next row as it gets free: a download that takes
    hours holds up no row but its own."""
    workers = min(ctx.config.flexperto.max_parallel_downloads, len(rows))
    if workers <= 1:
        _each(ctx, rows, step)
        return
    connections = ThreadConnections(lambda: open_state(ctx.config.state))
    waiting: SimpleQueue[ArchiveRow] = SimpleQueue()
    for row in rows:
        waiting.put(row)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="archives") as pool:
            # Each thread runs in a copy of this one's context: its events name the tenant.
            futures = [
                pool.submit(
                    contextvars.copy_context().run,
                    lambda: _each(replace(ctx, db=connections.get()), _taken(waiting), step),
                )
                for _ in range(workers)
            ]
            try:
                for future in futures:
                    future.result()  # re-raise what must stop the pass (a busy state file)
            except KeyboardInterrupt:
                _finish_in_hand(ctx, waiting, futures)
                raise
    finally:
        connections.close()


def _finish_in_hand(
    ctx: JobContext, waiting: SimpleQueue[ArchiveRow], futures: list[Future[None]]
) -> None:
    """Ctrl-C: no download starts any more, those in hand finish (stored, abandoned); a
    second Ctrl-C stops them at their next chunk, their partial files kept for a later pass."""
    for _ in _taken(waiting):
        pass
    in_hand = sum(not future.done() for future in futures)  # a thread ends after its row
    try:
        log.warning("run.interrupted", archives_in_hand=in_hand)
        ctx.progress.stopping(in_hand)
        wait(futures)
    except KeyboardInterrupt:
        log.warning("run.stopping_now", downloads_in_hand=ctx.progress.in_hand)
        ctx.progress.stop_now()
        wait(futures)


def _taken(waiting: SimpleQueue[ArchiveRow]) -> Iterator[ArchiveRow]:
    """The rows left in ``waiting``, one at a time, until there are none."""
    while True:
        try:
            yield waiting.get_nowait()
        except Empty:
            return


def _each(
    ctx: JobContext, rows: Iterable[ArchiveRow], step: Callable[[JobContext, ArchiveRow], None]
) -> None:
    for row in rows:
        if ctx.stop_requested():
            log.info("run.stopping")
            return
        step(ctx, row)
        ctx.progress.item_done()


def refresh_listing(ctx: JobContext) -> tuple[set[str], bool]:
    """Record every downloadable archive Flexperto lists; hold the records that cannot be
    taken (rejected, or still being made), which holds their conference back. Returns the
    ids of the archives listed (those not listed are looked up one by one before they are
    abandoned), and whether the listing was read whole: without failing, and to its end
    (not cut at the ceiling, nor by a service repeating itself)."""
    seen: dict[str, ArchiveRecord] = {}
    listing = held_records.new_listing()
    try:
        for raw in _listed_records(ctx):
            record = _parse_listed(ctx, raw, listing)
            if record is not None:
                seen[record.archive_id] = record
    except ApiError as exc:  # keep what was listed before the failure, and every hold
        log.error("archive.list_failed", error=str(exc))
        ctx.stats.add(Outcome.FAILED)
        whole = False
    else:
        whole = ctx.flexperto.listed_whole
        if whole:  # a listing cut short releases no held record
            held_records.forget_unseen(ctx.db, listing)
    for archive_id in archives.note_listed(ctx.db, seen.values(), ctx.clock.now()):
        record = seen[archive_id]
        log.info(
            "archive.listed",
            archive_id=archive_id,
            conference_id=record.conference_id,
            status=record.status,
        )
        ctx.stats.add(Outcome.LISTED)
    return set(seen), whole


def _listed_records(ctx: JobContext) -> Iterator[object]:
    """The raw records of the listing, asked for in the form the service accepts: the
    remembered one, else the preferred one; when the service refuses it (400/404), the
    forms are tried in turn and the one that works is remembered."""
    decision = capabilities.get(ctx.db, capabilities.LISTING_FORM)
    form = ListingForm.from_text(decision.value) if decision else None
    stale = decision is not None and decision.older_than(RECHECK_SECONDS, ctx.clock.now())
    if form not in (None, PREFERRED_LISTING) and stale:
        form = _negotiate_listing(ctx)  # the service may have gained what it lacked
    ctx.flexperto.use(form or PREFERRED_LISTING)
    try:
        yield from ctx.flexperto.list_records(LISTED_STATUSES)
    except ApiError as exc:
        if exc.status not in (400, 404):
            raise
        # Records already listed before the refusal and listed again are harmless.
        ctx.flexperto.use(_negotiate_listing(ctx))
        yield from ctx.flexperto.list_records(LISTED_STATUSES)
        return
    if form is None:
        capabilities.put(
            ctx.db, capabilities.LISTING_FORM, PREFERRED_LISTING.text(), ctx.clock.now()
        )


def _negotiate_listing(ctx: JobContext) -> ListingForm:
    form = ctx.flexperto.negotiate_listing()
    previous = capabilities.put(ctx.db, capabilities.LISTING_FORM, form.text(), ctx.clock.now())
    if form != PREFERRED_LISTING and (previous is None or previous.value != form.text()):
        log.warning(
            "flexperto.capability_missing",
            capability="archive list with /api/v2, status filter and limit/offset paging",
            using=form.summary(),
        )
    return form


def _parse_listed(ctx: JobContext, raw: object, listing: str) -> ArchiveRecord | None:
    """The listed record if it can be taken now; else None, and it is held (rejected or
    still being made) or, in a status with nothing to take (FAILED, EXPIRED), skipped."""
    try:
        record = parse_record(raw)
    except RecordError as exc:
        held_records.hold(ctx.db, raw, held_records.REJECTED, str(exc), listing, ctx.clock.now())
        log.error(
            "archive.rejected",
            reason=str(exc),
            key=held_records.record_key(raw),
            conference_id=held_records.record_conference(raw),
        )
        ctx.stats.add(Outcome.REJECTED)
        return None
    if record.status in IN_PROGRESS:
        reason = f"still {record.status}"
        held_records.hold(ctx.db, raw, held_records.IN_PROGRESS, reason, listing, ctx.clock.now())
        log.debug(
            "archive.in_progress",
            archive_id=record.archive_id,
            conference_id=record.conference_id,
            status=record.status,
        )
        return None
    if not record.downloadable:
        # Asked for by status, the list should not show it; unfiltered, it shows everything.
        level = log.warning if ctx.flexperto.filters_by_status else log.debug
        level(
            "archive.skipped_status",
            archive_id=record.archive_id,
            conference_id=record.conference_id,
            status=record.status,
        )
        return None
    return record


def store(ctx: JobContext, row: ArchiveRow) -> bool:
    """Download, verify and store one archive, and checkpoint it (not yet durably);
    whether it is stored now."""
    bound = log.bind(archive_id=row.archive_id, conference_id=row.conference_id)
    # one bad archive never stops the others; a JobStop (the state file or the store out
    # of reach) stops the job, not just this archive
    with ItemBoundary(lambda exc: _fail(ctx, row, exc, bound)) as item:
        _store(ctx, row.record, bound)
    return item.failed is None


def abandon(ctx: JobContext, row: ArchiveRow, listed: bool, listed_whole: bool) -> None:
    """Abandon a stored archive's conference at Flexperto, and checkpoint the claim.
    ``listed``: the archive was in this pass's listing, so its status there is current;
    ``listed_whole``: the listing was read whole (else no conference is abandoned: what it
    did not read may hold a sibling that neither the ledger nor a held record knows of)."""
    bound = log.bind(archive_id=row.archive_id, conference_id=row.conference_id)
    with ItemBoundary(lambda exc: _fail(ctx, row, exc, bound)):
        current = archives.get(ctx.db, row.archive_id)
        if current is None or current.state != ArchiveState.STORED:
            return  # claimed meanwhile, with a sibling of its conference
        _abandon(ctx, current, listed, listed_whole, bound)


def _store(ctx: JobContext, record: ArchiveRecord, bound: Any) -> None:
    assert record.sha256 is not None  # parse_record guarantees it for downloadable records
    target = _target(ctx, record)
    saved = _keep(ctx, record, target, bound)
    moderator, people = record.moderator, record.participants
    if not record.people_listed and saved.local_copy is not None:
        # the record names nobody: the archive's own metadata may
        moderator, people = people_from_archive(saved.local_copy)
        bound.info("archive.people_from_metadata", participants=len(people))
    ctx.store.attach(target, json.dumps(record.raw, sort_keys=True).encode())
    participants = [
        (person.email, person.name)
        for person in people
        if moderator is None or person.email != moderator.email
    ]
    archives.mark_stored(
        ctx.db,
        record.archive_id,
        saved.location,
        saved.size,
        ctx.clock.now(),
        participants,
        moderator.email if moderator else None,
    )
    bound.info("archive.stored", path=saved.location, size=saved.size, sha256=saved.sha256)
    ctx.stats.add_stored(saved.size)


def _target(ctx: JobContext, record: ArchiveRecord) -> ArchiveFile:
    """The archive file ``record`` describes, as the store is to keep it."""
    return ArchiveFile(
        record.conference_id,
        record.archive_id,
        record.sha256 or "",
        record.size,
        ctx.config.flexperto.max_archive_bytes,
    )


def _keep(ctx: JobContext, record: ArchiveRecord, target: ArchiveFile, bound: Any) -> Saved:
    """The archive verified in the store: found there, or downloaded (from where an earlier
    try stopped) and confirmed. Not yet durable: :meth:`Store.attach` makes it so."""
    found = ctx.store.find(target)
    if found is not None:
        bound.info("archive.recovered", path=found.location)
        return found
    offset = ctx.store.resume_from(target)
    size = target.size  # that of a complete copy an earlier try left (offset None)
    if offset is not None:
        try:
            with _download(ctx, record, offset) as download:
                size = ctx.store.put(target, download)
        except TooLarge as exc:
            bound.error("archive.too_large", error=str(exc))
            raise
        ctx.stats.add_bytes(size - offset if download.resumed else size)
    bound.info("archive.downloaded", size=size)
    try:
        saved = ctx.store.confirm(target)
    except VerificationError as exc:
        bound.error("archive.hash_mismatch", error=str(exc))
        ctx.stats.add(Outcome.HASH_MISMATCH)
        raise
    bound.info("archive.verified", sha256=saved.sha256)
    return saved


@contextmanager
def _download(ctx: JobContext, record: ArchiveRecord, offset: int) -> Iterator[Download]:
    """The archive's bytes from ``offset`` on, from the storage host (without the
    api-key); from the start when it does not honour the range."""
    url = ctx.flexperto.download_url(record.archive_id)
    try:
        response = ctx.flexperto.open_download(url, offset)
    except ApiError as exc:
        if not offset or exc.status != 416:
            raise
        offset = 0  # the partial file is longer than the archive: start over
        response = ctx.flexperto.open_download(url, offset)
    with response:
        chunks = ctx.flexperto.iter_chunks(response)
        yield Download(
            ctx.progress.track(chunks, record.archive_id[:8], record.size),
            resumed=offset > 0 and response.status_code == 206,
        )


def _abandon(
    ctx: JobContext, row: ArchiveRow, listed: bool, listed_whole: bool, bound: Any
) -> None:
    archive_id, conference_id = row.archive_id, row.conference_id
    remote_status = row.remote_status if listed else _remote_status(ctx, archive_id)
    if remote_status in CLAIMED_REMOTELY:  # abandoned already (by a pass cut short, say)
        archives.mark_claimed(ctx.db, archive_id, ctx.clock.now())
        bound.info("archive.claimed", already_abandoned=True)
        ctx.stats.add(Outcome.FOUND_ABANDONED)
        return
    waiting_for = conference_blockers(ctx.db, conference_id) if listed_whole else [NOT_WHOLE]
    if waiting_for:
        bound.info("archive.abandon_deferred", waiting_for=waiting_for)
        ctx.stats.add(Outcome.DEFERRED)
        return
    try:
        ctx.flexperto.abandon(conference_id)
    except ApiError:
        # Not retried blindly: an abandon whose answer was lost may well have taken effect.
        if _remote_status(ctx, archive_id, quiet=True) not in CLAIMED_REMOTELY:
            raise
    bound.info("archive.abandoned")
    claimed = archives.mark_conference_claimed(ctx.db, conference_id, ctx.clock.now())
    bound.info("archive.claimed", archives_claimed=claimed)
    ctx.stats.add(Outcome.ABANDONED, claimed)


def _remote_status(ctx: JobContext, archive_id: str, quiet: bool = False) -> str | None:
    """The record's status as Flexperto reports it now. With ``quiet``, None when it cannot
    be read (the caller then keeps to what it knew); otherwise that is an error."""
    try:
        return parse_record(ctx.flexperto.get_record(archive_id)).status
    except (ApiError, RecordError):
        if quiet:
            return None
        raise


def _fail(ctx: JobContext, row: ArchiveRow, exc: Exception, bound: Any) -> None:
    key = {"archive_id": row.archive_id}
    failure = fail_item(ctx, bound, "archive", "archives", key, exc, ARCHIVE_ON_FAILURE)
    stored = failure is not None and failure.previous_state == ArchiveState.STORED
    if isinstance(exc, OSError) and failure is not None and not stored:
        # A file system error may have left the partial file in any shape: start afresh.
        with suppress(OSError):
            ctx.store.forget(_target(ctx, row.record))
