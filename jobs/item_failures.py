"""What happens when one work item (an archive, a participant, an insight) fails: the
failure is recorded (retry after a backoff, or parked after ``max_attempts``), logged as
``item.failed`` or ``item.given_up``, and counted, and the job goes on with the next item.

Expected failures (an API's error, a bad checksum, a file system error) are logged with
their message; anything else also with where in the code it was raised, since it is a bug.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sync_worker.flexperto.records import RecordError
from sync_worker.http import ApiError
from sync_worker.jobs.context import JobContext, Outcome
from sync_worker.logs import exception_fields
from sync_worker.state.db import StateBusyError
from sync_worker.state.work_items import Failure, note_failure
from sync_worker.stores import Missing, StoreError, VerificationError
from sync_worker.totalexpert import CredentialsRejected, TokenBudgetExhausted

# Raised through the item boundaries: they concern the whole job, not one item.
JOB_STOPPERS = (StateBusyError, TokenBudgetExhausted, CredentialsRejected)
EXPECTED = (ApiError, VerificationError, RecordError, StoreError, Missing)


def fail_item(
    ctx: JobContext,
    bound: Any,
    kind: str,
    table: str,
    key: dict[str, Any],
    exc: Exception,
    transitions: Mapping[str, str],
    **fields: Any,
) -> Failure | None:
    """Record, log and count a failed item; ``transitions`` maps its open states to the
    state it waits in for the next attempt (see state.work_items.note_failure)."""
    error, extra = error_text(exc)
    failure = note_failure(
        ctx.db, table, key, error, ctx.clock.now(), ctx.config.retry, transitions
    )
    if failure is not None and failure.given_up:
        bound.error("item.given_up", kind=kind, error=error, **extra, **fields)
        ctx.stats.add(Outcome.GIVEN_UP)
    else:
        bound.warning("item.failed", kind=kind, error=error, **extra, **fields)
        ctx.stats.add(Outcome.FAILED)
    return failure


def error_text(exc: Exception) -> tuple[str, dict[str, str]]:
    """The error text to record for ``exc``, and extra log fields for an unexpected one."""
    if isinstance(exc, EXPECTED):
        return str(exc), {}
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc} ({exc.filename or 'no file'})", {}
    details = exception_fields(exc)
    extra = {key: details[key] for key in ("error_class", "where") if key in details}
    return f"{details['error_class']}: {details['error']}", extra
