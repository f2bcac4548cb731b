"""One error tree: what the worker raises at an item is an ItemError or a JobStop, and the
one item boundary of every job keeps an item's failure to that item and lets a stop through."""

from __future__ import annotations

import pytest

from sync_worker.adapters.flexperto.records import RecordError
from sync_worker.adapters.http import ApiError, TransientError, UnreadableAnswer
from sync_worker.adapters.stores import (
    ForeignOwner,
    LinkRefused,
    Misconfigured,
    Missing,
    StoreError,
    StoreUnavailable,
    StoreUnreachable,
    StoreUnwritable,
    TooLarge,
    VerificationError,
)
from sync_worker.adapters.totalexpert import CredentialsRejected, TokenBudgetExhausted
from sync_worker.core.errors import ItemError, JobStop, SyncError
from sync_worker.jobs.item_failures import ItemBoundary, error_text
from sync_worker.state.db import StateBusyError

pytestmark = pytest.mark.fast

ITEM_ERRORS = (
    ApiError,
    TransientError,
    UnreadableAnswer,
    RecordError,
    VerificationError,
    TooLarge,
    Missing,
    StoreError,
    LinkRefused,
    ForeignOwner,
)
JOB_STOPS = (
    StateBusyError,
    TokenBudgetExhausted,
    CredentialsRejected,
    StoreUnavailable,
    StoreUnwritable,
    StoreUnreachable,
    Misconfigured,
)


@pytest.mark.parametrize("kind", ITEM_ERRORS, ids=lambda kind: kind.__name__)
def test_an_items_failures_are_item_errors(kind):
    assert issubclass(kind, ItemError) and not issubclass(kind, JobStop)


@pytest.mark.parametrize("kind", JOB_STOPS, ids=lambda kind: kind.__name__)
def test_what_stops_a_job_is_a_job_stop(kind):
    assert issubclass(kind, JobStop) and issubclass(kind, SyncError)


def test_an_items_failure_is_kept_to_the_item():
    seen: list[Exception] = []
    with ItemBoundary(seen.append) as item:
        raise ApiError("flexperto", "HTTP 404: gone", 404)
    assert item.failed is seen[0] and str(seen[0]) == "flexperto: HTTP 404: gone"


def test_a_bug_is_kept_to_the_item_and_named_as_one():
    seen: list[Exception] = []
    with ItemBoundary(seen.append) as item:
        {}["missing"]
    assert isinstance(item.failed, KeyError)
    text, extra = error_text(item.failed)
    assert text.startswith("KeyError") and extra["error_class"] == "KeyError"


@pytest.mark.parametrize(
    "stop",
    [
        StateBusyError("locked"),
        TokenBudgetExhausted(1_800_000_000.0),
        CredentialsRejected(401, "invalid_client"),  # an ApiError too: the stop wins
        StoreUnreachable("s3://b/", "s3 b: connection refused"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_a_job_stop_goes_through_and_is_no_items_failure(stop):
    seen: list[Exception] = []
    with pytest.raises(type(stop)), ItemBoundary(seen.append):
        raise stop
    assert seen == []


def test_an_interrupt_goes_through():
    seen: list[Exception] = []
    with pytest.raises(KeyboardInterrupt), ItemBoundary(seen.append):
        raise KeyboardInterrupt
    assert seen == []


def test_work_that_does_not_fail_has_no_failure():
    with ItemBoundary(lambda exc: pytest.fail(str(exc))) as item:
        pass
    assert item.failed is None
