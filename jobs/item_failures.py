"""What happens when one work item (an archive, a participant, an insight) fails: the
failure is recorded (retry after a backoff, or parked after ``max_attempts``), logged as
``item.failed`` or ``item.given_up``, and counted, and the job goes on with the next item.

Every job runs each item inside an :class:`ItemBoundary`: a JobStop goes through it (the job
stops, no item is charged), any other exception is the item's. Expected failures (a
SyncError: an API's error, a bad checksum; a file system error) are logged with their
message; anything else also with where in the code it was raised, since it is a bug.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from sync_worker.core.errors import JobStop, SyncError
from sync_worker.core.logs import exception_fields
from sync_worker.jobs.context import JobContext, Outcome
from sync_worker.state.work_items import Failure, note_failure


class ItemBoundary:
    """Where one item's work ends: an exception inside is handed to ``on_failure`` and
    kept as :attr:`failed` (the job goes on with the next item), unless it is a JobStop or
    no Exception at all (an interrupt), which go through."""

    def __init__(self, on_failure: Callable[[Exception], None]) -> None:
        self._on_failure = on_failure
        self.failed: Exception | None = None

    def __enter__(self) -> ItemBoundary:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if not isinstance(exc, Exception) or isinstance(exc, JobStop):
            return False
        self.failed = exc
        self._on_failure(exc)
        return True


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
    if isinstance(exc, SyncError):
        return str(exc), {}
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc} ({exc.filename or 'no file'})", {}
    details = exception_fields(exc)
    extra = {key: details[key] for key in ("error_class", "where") if key in details}
    return f"{details['error_class']}: {details['error']}", extra
