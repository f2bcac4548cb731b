"""The archive job: list, download, verify, store, then abandon each Flexperto archive.

An archive is abandoned (and so scheduled for deletion by Flexperto) only once its file is
complete on disk, fsynced, hash-verified, renamed into place, and checkpointed in SQLite.
Each step is checkpointed or idempotent, so a pass cut short anywhere is completed by the
next one without downloading, abandoning or queueing anything twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import structlog

from jobs.context import JobContext
from state import archives
from state.db import StateBusyError, ThreadConnections, make_durable
from state.work_items import is_due, record_failure
from sync_worker.archive_store import StoredFile, VerificationError
from sync_worker.flexperto import ArchiveRecord, RecordError, parse_record
from sync_worker.http import ApiError

LISTED_STATUSES = ("AVAILABLE", "ABANDONED")

log = structlog.get_logger(job="archives")


def run(ctx: JobContext) -> None:
    """One pass of the archive job: store what is new, make that durable, then abandon."""
    refresh_listing(ctx)
    open_work = archives.open_work(ctx.db)
    due = _due(ctx, open_work)
    if len(due) < len(open_work):
        ctx.stats.add("waiting", len(open_work) - len(due))
    to_store = [row for row in due if row["state"] != archives.STORED]
    ctx.progress.start_pass(len(to_store))
    try:
        _in_parallel(ctx, to_store, store)
    finally:
        ctx.progress.finish()
    # One fsync makes every "stored" checkpoint of this pass survive a power cut before
    # anything is abandoned: cheaper than one per archive, and just as safe.
    make_durable(ctx.db)
    for row in _due(ctx, archives.open_work(ctx.db)):
        if ctx.stop_requested():
            log.info("run.stopping")
            return
        if row["state"] == archives.STORED:
            abandon(ctx, row)


def _due(ctx: JobContext, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    now = ctx.clock.now()
    return [row for row in rows if is_due(row, now)]


def _in_parallel(
    ctx: JobContext, rows: list[dict[str, Any]], step: Callable[[JobContext, dict], None]
) -> None:
    """Run ``step`` on every row, ``max_parallel_downloads`` at a time, each thread with its
    own database connection."""
    workers = min(ctx.config.flexperto.max_parallel_downloads, len(rows))
    if workers <= 1:
        _each(ctx, rows, step)
        return
    connections = ThreadConnections(
        ctx.config.state.database, ctx.config.state.busy_timeout_seconds
    )
    chunks = [rows[n::workers] for n in range(workers)]
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="archives") as pool:
            futures = [
                pool.submit(lambda c: _each(replace(ctx, db=connections.get()), c, step), chunk)
                for chunk in chunks
            ]
            for future in futures:
                future.result()  # re-raise what must stop the pass (a busy state file)
    finally:
        connections.close()


def _each(
    ctx: JobContext, rows: list[dict[str, Any]], step: Callable[[JobContext, dict], None]
) -> None:
    for row in rows:
        if ctx.stop_requested():
            log.info("run.stopping")
            return
        step(ctx, row)
        ctx.progress.item_done()


def refresh_listing(ctx: JobContext) -> None:
    """Record every downloadable archive Flexperto lists; bad records are logged, skipped."""
    seen: dict[str, ArchiveRecord] = {}
    for status in LISTED_STATUSES:
        try:
            for raw in ctx.flexperto.list_records(status):
                record = _parse_listed(ctx, raw, status)
                if record is not None:
                    seen[record.archive_id] = record
        except ApiError as exc:
            log.error("archive.list_failed", status=status, error=str(exc))
            ctx.stats.add("failed")
    listings = [
        archives.Listing(r.archive_id, r.conference_id, r.status, r.sha256, r.raw)
        for r in seen.values()
    ]
    for archive_id in archives.note_listed(ctx.db, listings, ctx.clock.now()):
        record = seen[archive_id]
        log.info(
            "archive.listed",
            archive_id=archive_id,
            conference_id=record.conference_id,
            status=record.status,
        )
        ctx.stats.add("listed")


def _parse_listed(ctx: JobContext, raw: object, status: str) -> ArchiveRecord | None:
    try:
        record = parse_record(raw)
    except RecordError as exc:
        log.error("archive.rejected", reason=str(exc))
        ctx.stats.add("rejected")
        return None
    if not record.downloadable:
        log.warning(
            "archive.skipped_status",
            archive_id=record.archive_id,
            status=record.status,
            listed_as=status,
        )
        return None
    return record


def store(ctx: JobContext, row: dict[str, Any]) -> None:
    """Download, verify and store one archive, and checkpoint it (not yet durably)."""
    bound = log.bind(archive_id=row["archive_id"], conference_id=row["conference_id"])
    try:
        _store(ctx, parse_record(json.loads(row["record"])), bound)
    except StateBusyError:
        raise  # the state file is out of reach: stop the pass, not just this archive
    except Exception as exc:  # one bad archive never stops the others
        _fail(ctx, row, exc, bound)


def abandon(ctx: JobContext, listed: dict[str, Any]) -> None:
    """Abandon a stored archive's conference at Flexperto, and checkpoint the claim."""
    row = archives.get(ctx.db, listed["archive_id"])
    if row is None or row["state"] != archives.STORED:
        return  # claimed meanwhile, with a sibling of its conference
    bound = log.bind(archive_id=row["archive_id"], conference_id=row["conference_id"])
    try:
        _abandon(ctx, row["remote_status"], parse_record(json.loads(row["record"])), bound)
    except StateBusyError:
        raise
    except Exception as exc:
        _fail(ctx, row, exc, bound)


def _store(ctx: JobContext, record: ArchiveRecord, bound: Any) -> None:
    assert record.sha256 is not None  # parse_record guarantees it for downloadable records
    stored = ctx.store.find_verified(record.conference_id, record.archive_id, record.sha256)
    if stored is not None:
        ctx.store.ensure_record(stored, record.raw)
        bound.info("archive.recovered", path=str(stored.path))
    else:
        stored = _download(ctx, record, bound)
    participants = [
        (person.email, person.name)
        for person in record.participants
        if record.moderator is None or person.email != record.moderator.email
    ]
    archives.record_stored(
        ctx.db,
        record.archive_id,
        str(stored.path),
        stored.size,
        ctx.clock.now(),
        participants,
        record.moderator.email if record.moderator else None,
    )
    bound.info("archive.stored", path=str(stored.path), size=stored.size, sha256=stored.sha256)
    ctx.stats.add("stored")


def _download(ctx: JobContext, record: ArchiveRecord, bound: Any) -> StoredFile:
    """Fetch the archive into its ``.part`` file, resuming what an earlier pass left."""
    assert record.sha256 is not None
    conference_id, archive_id = record.conference_id, record.archive_id
    if ctx.store.partial_size(conference_id, archive_id):
        written = ctx.store.write_partial(conference_id, archive_id, (), resume=True)
        if written[0] != record.sha256:
            written = _fetch(ctx, record, offset=written[1])
    else:
        written = _fetch(ctx, record, offset=0)
    bound.info("archive.downloaded", size=written[1])
    try:
        stored = ctx.store.commit_partial(
            conference_id, archive_id, written, record.sha256, record.size, record.raw
        )
    except VerificationError as exc:
        bound.error("archive.hash_mismatch", error=str(exc))
        ctx.stats.add("hash_mismatch")
        raise
    bound.info("archive.verified", sha256=stored.sha256)
    return stored


def _fetch(ctx: JobContext, record: ArchiveRecord, offset: int) -> tuple[str, int]:
    """Stream the bytes from ``offset`` on (when the server honours Range) to the .part file."""
    url = ctx.flexperto.download_url(record.archive_id)
    try:
        response = ctx.flexperto.open_download(url, offset)
    except ApiError as exc:
        if offset and exc.status == 416:  # the partial file is longer than the archive
            ctx.store.discard_partial(record.conference_id, record.archive_id)
            return _fetch(ctx, record, offset=0)
        raise
    with response:
        resumed = offset > 0 and response.status_code == 206
        before = offset if resumed else 0
        chunks = ctx.progress.track(
            ctx.flexperto.iter_chunks(response), record.archive_id[:8], record.size
        )
        written = ctx.store.write_partial(
            record.conference_id, record.archive_id, chunks, resume=resumed
        )
    ctx.stats.add_bytes(written[1] - before)
    return written


def _abandon(ctx: JobContext, remote_status: str, record: ArchiveRecord, bound: Any) -> None:
    if remote_status == "ABANDONED":  # as the last listing said
        archives.mark_claimed(ctx.db, record.archive_id, ctx.clock.now())
        bound.info("archive.claimed", already_abandoned=True)
        ctx.stats.add("claimed")
        return
    waiting_for = archives.unsafe_siblings(ctx.db, record.conference_id, record.archive_id)
    if waiting_for:
        bound.info("archive.abandon_deferred", waiting_for=waiting_for)
        ctx.stats.add("deferred")
        return
    try:
        ctx.flexperto.abandon(record.conference_id)
    except ApiError:
        # Not retried blindly: an abandon whose answer was lost may well have taken effect.
        if not _already_abandoned(ctx, record.archive_id):
            raise
    bound.info("archive.abandoned")
    claimed = archives.mark_conference_claimed(ctx.db, record.conference_id, ctx.clock.now())
    bound.info("archive.claimed", archives_claimed=claimed)
    ctx.stats.add("abandoned", claimed)


def _already_abandoned(ctx: JobContext, archive_id: str) -> bool:
    try:
        return parse_record(ctx.flexperto.get_record(archive_id)).status == "ABANDONED"
    except (ApiError, RecordError):
        return False


def _fail(ctx: JobContext, row: dict[str, Any], exc: Exception, bound: Any) -> None:
    error = _describe(exc)
    stored = row["state"] == archives.STORED
    if isinstance(exc, OSError) and not stored:
        ctx.store.discard_partial(row["conference_id"], row["archive_id"])
    given_up = record_failure(
        ctx.db,
        "archives",
        {"archive_id": row["archive_id"]},
        error,
        ctx.clock.now(),
        ctx.config.retry,
        archives.STORED if stored else archives.FAILED,
    )
    if given_up:
        bound.error("item.given_up", kind="archive", error=error)
        ctx.stats.add("given_up")
    else:
        bound.warning(
            "item.failed", kind="archive", step="abandon" if stored else "store", error=error
        )
        ctx.stats.add("failed")


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiError | VerificationError | RecordError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc} ({exc.filename or 'no file'})"
    return f"{type(exc).__name__}: {exc}"
