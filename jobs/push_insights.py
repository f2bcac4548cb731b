"""The insight job: match stored archives' participants to Total Expert contacts and post
one "Conference archived" insight per matched contact, exactly once.

Exactly once: an insight is marked ``sending`` before its POST and ``sent`` only once TE's
answer proves it created (a 2xx of another shape, a proxy's page say, proves nothing). One
found still ``sending`` (a crash, a timeout or such an answer hid the outcome; or its archive
was listed ABANDONED before this worker abandoned it, so another worker, or this one before
its state file was lost, may have posted it) is first looked for among the contact's
insights by ``data.flexperto_archive_id``; if TE's list cannot tell (it does not show
``data``), the insight is parked ``unverified`` instead of risking a second one. A
participant whose address more contacts share than ``totalexpert.max_contacts_per_address``
is parked ``ambiguous``, with no insight queued.

Each participant and each insight is one item: a failure is recorded for it and the job
goes on, except that once TE cannot be reached the rest waits for a later pass.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog

from sync_worker.adapters.flexperto.records import ArchiveRecord
from sync_worker.adapters.http import ApiError, TransientError
from sync_worker.adapters.totalexpert import CredentialsRejected, TokenBudgetExhausted
from sync_worker.core.clock import iso_time
from sync_worker.jobs.contact_directory import AmbiguousAddress, ContactDirectory
from sync_worker.jobs.context import JobContext, Outcome
from sync_worker.jobs.item_failures import ItemBoundary, fail_item
from sync_worker.state import directory, insight_blocks, insights
from sync_worker.state.insights import InsightRow, ParticipantRow
from sync_worker.state.lifecycles import (
    INSIGHT_ON_FAILURE,
    PARTICIPANT_ON_FAILURE,
    InsightState,
    ParticipantState,
)
from sync_worker.state.work_items import is_due

# Insights marked "sending" with one fsync before they are posted one by one.
SENDING_BATCH = 50
# Rejected credentials are not tried again (a token request each) for this long, unless
# they are changed.
CREDENTIALS_BACKOFF_SECONDS = 3600.0
# Answers that no retry will change: the item is parked with Total Expert's reason.
FINAL_STATUSES = frozenset({400, 403, 404, 405, 409, 415, 422})
# A failed insight may have been posted: it is looked for before it is posted again.
UNVERIFIABLE = (
    "cannot tell whether Total Expert already has this insight: its insight list does not "
    "show data.flexperto_archive_id. Check in TE; if it is not there, `sync-worker retry` "
    "posts it"
)

log = structlog.get_logger(job="insights")


class TotalExpertUnavailable(Exception):
    """TE could not be reached: the rest of the job waits for a later pass."""


def run(ctx: JobContext) -> None:
    """One pass of the insight job. Makes no Total Expert call when nothing is queued, nor
    while credentials TE rejected wait out their backoff (state.insight_blocks)."""
    now = ctx.clock.now()
    participants = [
        row for row in insights.open_participants(ctx.db) if is_due(row.next_attempt_at, now)
    ]
    if not participants and not _due_insights(ctx):
        return
    if _backing_off(ctx, now):
        return
    try:
        _match_and_push(ctx, participants)
    except CredentialsRejected as exc:
        retry_at = now + CREDENTIALS_BACKOFF_SECONDS
        _blocked(ctx, insight_blocks.CREDENTIALS, exc.reason, retry_at, _client(ctx))
        ctx.stats.add(Outcome.FAILED)
    except TokenBudgetExhausted as exc:
        until = iso_time(exc.next_allowed_at)
        log.warning("te.token_budget_exhausted", next_allowed_at=until)
        _blocked(ctx, insight_blocks.TOKEN_BUDGET, f"token budget spent until {until}")
        ctx.stats.add(Outcome.DEFERRED)
        ctx.stats.te_token_budget_exhausted += 1
    except TotalExpertUnavailable as exc:
        log.warning("run.stopping", reason=str(exc))
    else:
        if (cleared := insight_blocks.clear(ctx.db)) is not None:
            log.info("te.insights_unblocked", since=iso_time(cleared.since), reason=cleared.reason)


def _backing_off(ctx: JobContext, now: float) -> bool:
    """Whether the credentials in use were rejected less than the backoff ago (then no
    token is requested with them: each request would spend one of TE's few an hour)."""
    block = insight_blocks.current(ctx.db)
    if block is None or block.kind != insight_blocks.CREDENTIALS or block.client != _client(ctx):
        return False
    if block.retry_at is None or block.retry_at <= now:
        return False
    log.error(
        "te.insights_blocked",
        reason=block.reason,
        since=iso_time(block.since),
        next_try_at=iso_time(block.retry_at),
    )
    ctx.stats.add(Outcome.FAILED)
    return True


def _blocked(
    ctx: JobContext,
    kind: str,
    reason: str,
    retry_at: float | None = None,
    client: str | None = None,
) -> None:
    """Record and log what keeps insights from TE (shown by status and the metrics)."""
    block = insight_blocks.note(ctx.db, kind, reason, ctx.clock.now(), retry_at, client)
    level = log.warning if kind == insight_blocks.TOKEN_BUDGET else log.error
    retry = {"next_try_at": iso_time(retry_at)} if retry_at is not None else {}
    level("te.insights_blocked", reason=reason, since=iso_time(block.since), **retry)


def _client(ctx: JobContext) -> str:
    te = ctx.config.totalexpert
    return insight_blocks.client_fingerprint(te.base_url, te.client_id, te.client_secret)


def _match_and_push(ctx: JobContext, participants: list[ParticipantRow]) -> None:
    type_id = _insight_type_id(ctx)
    contacts = ContactDirectory(ctx)
    if participants:
        contacts.prepare(_emails(participants))
    for row in participants:
        if _stop_requested(ctx) or not match_participant(ctx, contacts, row):
            return
    due = _due_insights(ctx)
    # If the pass stops early, the rest of a batch is looked up before it is posted.
    for start in range(0, len(due), SENDING_BATCH):
        batch = due[start : start + SENDING_BATCH]
        insights.mark_sending(
            ctx.db,
            [(r.archive_id, r.contact_id) for r in batch if r.state != InsightState.SENDING],
        )
        for row in batch:
            if _stop_requested(ctx) or not push_insight(ctx, contacts, type_id, row):
                return


def _emails(participants: list[ParticipantRow]) -> set[str]:
    """The addresses matching will ask about: participants, and moderators to prefer."""
    moderators = {row.moderator_email for row in participants if row.moderator_email}
    return {row.email for row in participants} | moderators


def _stop_requested(ctx: JobContext) -> bool:
    if ctx.stop_requested():
        log.info("run.stopping", reason="stop requested")
        return True
    return False


def _due_insights(ctx: JobContext) -> list[InsightRow]:
    now = ctx.clock.now()
    return [row for row in insights.open_insights(ctx.db) if is_due(row.next_attempt_at, now)]


def _insight_type_id(ctx: JobContext) -> int:
    """The TE id of the configured insight type, asked once and then kept."""
    name = ctx.config.totalexpert.insight_type
    cached = directory.get_meta(ctx.db, _type_key(name))
    if cached is not None:
        return int(cached)
    try:
        type_id = ctx.totalexpert.insight_type_id(name)
    except CredentialsRejected:
        raise  # the cause is the credentials, not the look-up
    except ApiError as exc:
        ctx.stats.add(Outcome.FAILED)
        log.error("item.failed", kind="insight_type", error=str(exc))
        raise TotalExpertUnavailable("insight type lookup failed") from None
    if type_id is None:
        ctx.stats.add(Outcome.FAILED)
        log.error("te.insight_type_missing", insight_type=name)
        _blocked(ctx, insight_blocks.INSIGHT_TYPE, f'insight type "{name}" not found')
        raise TotalExpertUnavailable(f"insight type {name!r} does not exist in Total Expert")
    directory.set_meta(ctx.db, {_type_key(name): str(type_id)})
    return type_id


def _type_key(name: str) -> str:
    return f"insight_type:{name}"


def match_participant(ctx: JobContext, contacts: ContactDirectory, row: ParticipantRow) -> bool:
    """Queue the participant's insights, or record why not. False when TE could not be
    reached: the caller stops."""
    bound = log.bind(archive_id=row.archive_id, conference_id=row.conference_id)
    key = {"archive_id": row.archive_id, "email": row.email}

    def failed(exc: Exception) -> None:
        fail_item(ctx, bound, "participant", "participants", key, exc, PARTICIPANT_ON_FAILURE)

    with ItemBoundary(failed) as item:
        _match(ctx, contacts, row, bound)
    return not isinstance(item.failed, TransientError)


def _match(ctx: JobContext, contacts: ContactDirectory, row: ParticipantRow, bound: Any) -> None:
    try:
        matched = contacts.contacts_for(row.email, row.moderator_email)
    except AmbiguousAddress as exc:
        insights.park_participant(ctx.db, row.archive_id, row.email, str(exc))
        bound.error(
            "item.given_up", kind="participant", state=ParticipantState.AMBIGUOUS, error=str(exc)
        )
        ctx.stats.add(Outcome.GIVEN_UP)
        return
    insights.queue_insights(
        ctx.db, row.archive_id, row.email, [(c.id, c.owner_id) for c in matched]
    )
    if matched:
        bound.info("insight.matched", contacts=[c.id for c in matched])
        ctx.stats.add(Outcome.MATCHED)
    else:
        bound.info("insight.no_match", participant=row.email)
        ctx.stats.add(Outcome.NO_MATCH)


def push_insight(
    ctx: JobContext, contacts: ContactDirectory, type_id: int, row: InsightRow
) -> bool:
    """Post one insight unless TE has it already. False when TE could not be reached: the
    caller stops."""
    bound = log.bind(
        archive_id=row.archive_id, conference_id=row.conference_id, contact_id=row.contact_id
    )
    with ItemBoundary(lambda exc: _insight_failed(ctx, contacts, row, exc, bound)) as item:
        _push(ctx, type_id, row, bound)
    return not isinstance(item.failed, TransientError)


def _insight_failed(
    ctx: JobContext, contacts: ContactDirectory, row: InsightRow, exc: Exception, bound: Any
) -> None:
    """Park an insight TE refused for good (a final status); count any other failure."""
    if isinstance(exc, ApiError) and exc.status in FINAL_STATUSES:  # never a transient one
        _forget_missing_targets(ctx, contacts, str(exc), row.contact_id)
        insights.give_up(ctx.db, row.archive_id, row.contact_id, str(exc))
        bound.error("item.given_up", kind="insight", error=str(exc))
        ctx.stats.add(Outcome.GIVEN_UP)
        return
    key = {"archive_id": row.archive_id, "contact_id": row.contact_id}
    fail_item(ctx, bound, "insight", "insights", key, exc, INSIGHT_ON_FAILURE)


def _push(ctx: JobContext, type_id: int, row: InsightRow, bound: Any) -> None:
    archive_id, contact_id = row.archive_id, row.contact_id
    if row.state == InsightState.SENDING:
        search = ctx.totalexpert.find_insight(contact_id, type_id, archive_id)
        if search.found:
            _sent(ctx, row, search.insight_id, bound, recovered=True)
            return
        if not search.verifiable:
            insights.give_up(ctx.db, archive_id, contact_id, UNVERIFIABLE, InsightState.UNVERIFIED)
            bound.error("item.given_up", kind="insight", error=UNVERIFIABLE)
            ctx.stats.add(Outcome.GIVEN_UP)
            return
    bound.debug("insight.posting")
    te_id = ctx.totalexpert.create_insight(insight_body(ctx, row))
    _sent(ctx, row, te_id, bound)
    if te_id is None:
        _learn_id(ctx, type_id, row, bound)


def _sent(
    ctx: JobContext, row: InsightRow, te_id: int | None, bound: Any, recovered: bool = False
) -> None:
    insights.mark_sent(ctx.db, row.archive_id, row.contact_id, te_id, ctx.clock.now())
    bound.info("insight.sent", te_insight_id=te_id, **({"recovered": True} if recovered else {}))
    ctx.stats.add(Outcome.SENT)


def _learn_id(ctx: JobContext, type_id: int, row: InsightRow, bound: Any) -> None:
    """TE accepted the insight without saying its id: look it up, for the ledger. Failing
    that is no failure of the insight, which is sent."""
    try:
        search = ctx.totalexpert.find_insight(row.contact_id, type_id, row.archive_id)
    except ApiError as exc:
        bound.info("insight.id_unknown", error=str(exc))
        return
    if search.insight_id is not None:
        insights.set_te_insight_id(ctx.db, row.archive_id, row.contact_id, search.insight_id)


def _forget_missing_targets(
    ctx: JobContext, contacts: ContactDirectory, error: str, contact_id: int
) -> None:
    """A 422 "Unable to find target" means our copy of TE is stale: drop what it names."""
    if "'contact'" in error:
        contacts.forget(contact_id)
    if "'type'" in error:
        directory.forget_meta(ctx.db, _type_key(ctx.config.totalexpert.insight_type))


def insight_body(ctx: JobContext, row: InsightRow) -> dict[str, Any]:
    record = row.record
    when = record.end or record.start or datetime.fromtimestamp(ctx.clock.now(), UTC)
    return {
        "type": {"type": ctx.config.totalexpert.insight_type},
        "contact": {"id": row.contact_id},
        "owner": {"id": row.owner_id},
        "insight_date": when.strftime("%Y-%m-%d %H:%M:%S"),
        "data": {
            "description": insight_description(record),
            "flexperto_archive_id": record.archive_id,
            "flexperto_conference_id": record.conference_id,
        },
    }


def insight_description(record: ArchiveRecord) -> str:
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
