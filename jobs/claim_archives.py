"""The archive job: list, download, verify, store, then abandon each Flexperto archive.

An archive is abandoned (and so scheduled for deletion by Flexperto) only once its file is
complete on disk, fsynced, hash-verified, renamed into place, and checkpointed in SQLite.
Each step is checkpointed or idempotent, so a pass cut short anywhere is completed by the
next one without downloading, abandoning or queueing anything twice.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import structlog

from jobs.context import JobContext
from state import archives
from state.db import StateBusyError, ThreadConnections
from state.work_items import is_due, record_failure
from sync_worker.archive_store import StoredFile, VerificationError
from sync_worker.flexperto import ArchiveRecord, RecordError, parse_record
from sync_worker.http import ApiError

LISTED_STATUSES = ("AVAILABLE", "ABANDONED")

log = structlog.get_logger(job="archives")


def run(ctx: JobContext) -> None:
    """One pass of the archive job."""
    refresh_listing(ctx)
    now = ctx.clock.now()
    rows = archives.open_work(ctx.db)
    due = [row for row in rows if is_due(row, now)]
    if len(due) < len(rows):
        ctx.stats.add("waiting", len(rows) - len(due))
    ctx.progress.start_pass(len(due))
    try:
        _claim_all(ctx, _by_conference(due))
    finally:
        ctx.progress.finish()


def _by_conference(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Archives grouped by conference, which is the unit that abandon works on."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["conference_id"], []).append(row)
    return list(groups.values())


def _claim_all(ctx: JobContext, groups: list[list[dict[str, Any]]]) -> None:
    """Claim every group, up to ``max_parallel_downloads`` at a time, each in one thread with
    its own database connection."""
    workers = min(ctx.config.flexperto.max_parallel_downloads, len(groups))
    if workers <= 1:
        for group in groups:
            _claim_group(ctx, group)
        return
    connections = ThreadConnections(
        ctx.config.state.database, ctx.config.state.busy_timeout_seconds
    )
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="claim") as pool:
            futures = [
                pool.submit(lambda g: _claim_group(replace(ctx, db=connections.get()), g), group)
                for group in groups
            ]
            for future in futures:
                future.result()  # re-raise what must stop the pass (a busy state file)
    finally:
        connections.close()


def _claim_group(ctx: JobContext, group: list[dict[str, Any]]) -> None:
    for row in group:
        if ctx.stop_requested():
            log.info("run.stopping")
            return
        claim(ctx, row)
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
    for record in seen.values():
        _note(ctx, record)


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


def _note(ctx: JobContext, record: ArchiveRecord) -> None:
    known = archives.get(ctx.db, record.archive_id)
    if known is not None and known["state"] == archives.CLAIMED:
        return
    archives.note_listed(
        ctx.db,
        record.archive_id,
        record.conference_id,
        record.status,
        record.sha256,
        record.raw,
        ctx.clock.now(),
    )
    if known is None:
        log.info(
            "archive.listed",
            archive_id=record.archive_id,
            conference_id=record.conference_id,
            status=record.status,
        )
        ctx.stats.add("listed")


def claim(ctx: JobContext, listed: dict[str, Any]) -> None:
    """Take one archive as far as it goes: store it if needed, then abandon it."""
    row = archives.get(ctx.db, listed["archive_id"])
    if row is None or row["state"] == archives.CLAIMED:
        return  # claimed meanwhile, with a sibling of its conference
    bound = log.bind(archive_id=row["archive_id"], conference_id=row["conference_id"])
    try:
        record = parse_record(json.loads(row["record"]))
        if row["state"] != archives.STORED:
            _store(ctx, record, bound)
        _abandon(ctx, record, bound)
    except StateBusyError:
        raise  # the state file is out of reach: stop the pass, not just this archive
    except Exception as exc:  # one bad archive never stops the others
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
    written = None
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


def _abandon(ctx: JobContext, record: ArchiveRecord, bound: Any) -> None:
    row = archives.get(ctx.db, record.archive_id)
    assert row is not None
    if row["remote_status"] == "ABANDONED":
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
