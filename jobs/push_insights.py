"""The insight job: match stored archives' participants to Total Expert contacts and post
one "Conference archived" insight per matched contact, exactly once.

Exactly once: an insight is marked ``sending`` before its POST and ``sent`` with Total
Expert's id after. One found still ``sending`` (a crash or timeout hid the outcome) is first
looked for among the contact's insights by ``data.flexperto_archive_id``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import structlog

from jobs.contact_directory import ContactDirectory
from jobs.context import JobContext
from state import directory, insights
from state.work_items import is_due, record_failure
from sync_worker.flexperto import ArchiveRecord, parse_record
from sync_worker.http import ApiError, TransientError
from sync_worker.totalexpert import TokenBudgetExhausted

# Insights marked "sending" with one fsync before they are posted one by one.
SENDING_BATCH = 50
# Answers that no retry will change: the item is parked with Total Expert's reason.
FINAL_STATUSES = frozenset({400, 403, 404, 405, 409, 415, 422})

log = structlog.get_logger(job="insights")


class StopJob(Exception):
    """Total Expert is unreachable or out of budget: leave the rest for a later pass."""


def run(ctx: JobContext) -> None:
    """One pass of the insight job. Makes no Total Expert call when nothing is queued."""
    now = ctx.clock.now()
    participants = [row for row in insights.open_participants(ctx.db) if is_due(row, now)]
    if not participants and not _due_insights(ctx):
        return
    try:
        type_id = _insight_type_id(ctx)
        contacts = ContactDirectory(ctx)
        if participants:
            contacts.prepare(_emails(participants))
        for row in participants:
            _stop_if_requested(ctx)
            match_participant(ctx, contacts, row)
        due = _due_insights(ctx)
        # If the pass stops early, the rest of a batch is looked up before it is posted.
        for start in range(0, len(due), SENDING_BATCH):
            batch = due[start : start + SENDING_BATCH]
            insights.mark_sending(
                ctx.db,
                [
                    (r["archive_id"], r["contact_id"])
                    for r in batch
                    if r["state"] != insights.SENDING
                ],
            )
            for row in batch:
                _stop_if_requested(ctx)
                push_insight(ctx, contacts, type_id, row)
    except TokenBudgetExhausted as exc:
        log.warning(
            "te.token_budget_exhausted",
            next_allowed_at=datetime.fromtimestamp(exc.next_allowed_at, UTC).isoformat(),
        )
        ctx.stats.add("deferred")
    except StopJob as exc:
        log.warning("run.stopping", reason=str(exc))


def _emails(participants: list[dict[str, Any]]) -> set[str]:
    """The addresses matching will ask about: participants, and moderators to prefer."""
    moderators = {row["moderator_email"] for row in participants if row["moderator_email"]}
    return {row["email"] for row in participants} | moderators


def _stop_if_requested(ctx: JobContext) -> None:
    if ctx.stop_requested():
        raise StopJob("stop requested")


def _due_insights(ctx: JobContext) -> list[dict[str, Any]]:
    now = ctx.clock.now()
    return [row for row in insights.open_insights(ctx.db) if is_due(row, now)]


def _insight_type_id(ctx: JobContext) -> int:
    """The TE id of the configured insight type, asked once and then kept."""
    name = ctx.config.totalexpert.insight_type
    cached = directory.get_meta(ctx.db, _type_key(name))
    if cached is not None:
        return int(cached)
    try:
        type_id = ctx.totalexpert.insight_type_id(name)
    except ApiError as exc:
        ctx.stats.add("failed")
        log.error("item.failed", kind="insight_type", error=str(exc))
        raise StopJob("insight type lookup failed") from None
    if type_id is None:
        ctx.stats.add("failed")
        log.error("te.insight_type_missing", insight_type=name)
        raise StopJob(f"insight type {name!r} does not exist in Total Expert")
    directory.set_meta(ctx.db, {_type_key(name): str(type_id)})
    return type_id


def _type_key(name: str) -> str:
    return f"insight_type:{name}"


def match_participant(ctx: JobContext, contacts: ContactDirectory, row: dict[str, Any]) -> None:
    bound = log.bind(archive_id=row["archive_id"], conference_id=row["conference_id"])
    try:
        matched = contacts.contacts_for(row["email"], row["moderator_email"])
    except (TransientError, ApiError) as exc:
        _fail(
            ctx,
            "participants",
            {"archive_id": row["archive_id"], "email": row["email"]},
            exc,
            insights.FAILED,
            bound,
        )
        return
    insights.record_matches(
        ctx.db, row["archive_id"], row["email"], [(c.id, c.owner_id) for c in matched]
    )
    if matched:
        bound.info("insight.matched", contacts=[c.id for c in matched])
        ctx.stats.add("matched")
    else:
        bound.info("insight.no_match", participant=row["email"])
        ctx.stats.add("no_match")


def push_insight(
    ctx: JobContext, contacts: ContactDirectory, type_id: int, row: dict[str, Any]
) -> None:
    archive_id, contact_id = row["archive_id"], row["contact_id"]
    bound = log.bind(
        archive_id=archive_id, conference_id=row["conference_id"], contact_id=contact_id
    )
    key = {"archive_id": archive_id, "contact_id": contact_id}
    try:
        if row["state"] == insights.SENDING:
            found = ctx.totalexpert.find_insight(contact_id, type_id, archive_id)
            if found is not None:
                insights.mark_sent(ctx.db, archive_id, contact_id, found, ctx.clock.now())
                bound.info("insight.sent", te_insight_id=found, recovered=True)
                ctx.stats.add("sent")
                return
        record = parse_record(json.loads(row["record"]))
        bound.debug("insight.posting")
        te_id = ctx.totalexpert.create_insight(insight_body(ctx, record, row))
    except (TransientError, ApiError) as exc:
        if isinstance(exc, ApiError) and exc.status in FINAL_STATUSES:
            _forget_missing_targets(ctx, contacts, str(exc), contact_id)
            insights.give_up(ctx.db, archive_id, contact_id, str(exc))
            bound.error("item.given_up", kind="insight", error=str(exc))
            ctx.stats.add("given_up")
            return
        _fail(ctx, "insights", key, exc, insights.SENDING, bound)
        return
    insights.mark_sent(ctx.db, archive_id, contact_id, te_id, ctx.clock.now())
    bound.info("insight.sent", te_insight_id=te_id)
    ctx.stats.add("sent")


def _forget_missing_targets(
    ctx: JobContext, contacts: ContactDirectory, error: str, contact_id: int
) -> None:
    """A 422 "Unable to find target" means our copy of TE is stale: drop what it names."""
    if "'contact'" in error:
        contacts.forget(contact_id)
    if "'type'" in error:
        directory.forget_meta(ctx.db, _type_key(ctx.config.totalexpert.insight_type))


def insight_body(ctx: JobContext, record: ArchiveRecord, row: dict[str, Any]) -> dict[str, Any]:
    when = record.end or record.start or datetime.fromtimestamp(ctx.clock.now(), UTC)
    return {
        "type": {"type": ctx.config.totalexpert.insight_type},
        "contact": {"id": row["contact_id"]},
        "owner": {"id": row["owner_id"]},
        "insight_date": when.strftime("%Y-%m-%d %H:%M:%S"),
        "data": {
            "description": describe(record),
            "flexperto_archive_id": record.archive_id,
            "flexperto_conference_id": record.conference_id,
        },
    }


def describe(record: ArchiveRecord) -> str:
    """A line a loan officer can read, e.g. 'Video conference with Anna Expert on
    2026-11-20 09:00-09:45 UTC archived (archive 9b2f0c1e)'."""
    parts = ["Video conference"]
    if record.moderator and record.moderator.name:
        parts.append(f"with {record.moderator.name}")
    if record.start:
        span = record.start.strftime("%Y-%m-%d %H:%M")
        if record.end:
            span += record.end.strftime("-%H:%M")
        parts.append(f"on {span} UTC")
    parts.append(f"archived (archive {record.archive_id[:8]})")
    return " ".join(parts)


def _fail(
    ctx: JobContext,
    table: str,
    key: dict[str, Any],
    exc: Exception,
    retry_state: str,
    bound: Any,
) -> None:
    given_up = record_failure(
        ctx.db, table, key, str(exc), ctx.clock.now(), ctx.config.retry, retry_state
    )
    level = bound.error if given_up else bound.warning
    level("item.given_up" if given_up else "item.failed", kind=table[:-1], error=str(exc))
    ctx.stats.add("given_up" if given_up else "failed")
    if isinstance(exc, TransientError):
        raise StopJob(f"Total Expert unavailable: {exc}")
