"""Failure bookkeeping shared by every kind of work item (archives, participants, insights).

A failed item counts its attempts and waits before the next one, twice as long each time
up to a ceiling; after ``max_attempts`` it is parked as ``given_up`` until an operator puts
it back. A failure never moves an item backwards: one that was finished before the failure
showed (claimed, sent, matched) stays as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sync_worker.state.db import Database, transaction
from sync_worker.state.lifecycles import GIVEN_UP

ERROR_LIMIT = 500


class RetryPolicy(Protocol):
    max_attempts: int
    backoff_seconds: float
    max_backoff_seconds: float


@dataclass(frozen=True)
class Failure:
    """A failed attempt as recorded: the item's state before it, and whether it is parked."""

    previous_state: str
    given_up: bool


def backoff_delay(attempts: int, policy: RetryPolicy) -> float:
    """Seconds to wait after the ``attempts``-th failure."""
    return min(policy.backoff_seconds * 2 ** max(attempts - 1, 0), policy.max_backoff_seconds)


def note_failure(
    db: Database,
    table: str,
    key: dict[str, Any],
    error: str,
    now: float,
    policy: RetryPolicy,
    transitions: Mapping[str, str],
) -> Failure | None:
    """Count a failed attempt of an open item and move it to ``transitions[its state]``, or
    park it. Returns None, recording nothing, when the item is missing or its state is not
    a key of ``transitions`` (it was finished before the failure)."""
    where = " and ".join(f"{column} = ?" for column in key)
    with transaction(db):
        row = next(
            db.query(f"select state, attempts from {table} where {where}", list(key.values())),
            None,
        )
        if row is None or row["state"] not in transitions:
            return None
        attempts = row["attempts"] + 1
        given_up = attempts >= policy.max_attempts
        db.execute(
            f"update {table} set state = ?, attempts = ?, last_error = ?, next_attempt_at = ? "
            f"where {where}",
            [
                GIVEN_UP if given_up else transitions[row["state"]],
                attempts,
                error[:ERROR_LIMIT],
                None if given_up else now + backoff_delay(attempts, policy),
                *key.values(),
            ],
        )
    return Failure(row["state"], given_up)


def is_due(next_attempt_at: float | None, now: float) -> bool:
    """Whether an item waiting until ``next_attempt_at`` (None: not waiting) may go now."""
    return next_attempt_at is None or next_attempt_at <= now
