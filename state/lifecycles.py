"""The lifecycle of each kind of work item, declared once: its states, the moves allowed
between them, and the named sets the queries, reports, metrics and jobs use. No state is
written as a literal anywhere else (``tests/state/test_lifecycles.py`` looks for strays,
and checks every move the worker makes against :data:`MOVES`).

Archives (``state.archives``)::

    pending ──download+verify+store──▶ stored ──abandon──▶ claimed
       │  ▲                              │
       ▼  │ retry after backoff          ▼ (abandon failed: stays stored, retried)
     failed ──max_attempts──▶ given_up ◀─┘

A pending or failed archive found abandoned already is claimed at once; an operator's
``retry`` puts a given-up one back (pending, or stored if it was).

Participants (the insight outbox, filled as an archive is stored): pending, failed after a
failed match (retried), then matched (its insights queued), no_match, or parked as ambiguous
(too many contacts share the address) or given_up; ``retry`` puts the parked back.

Insights (``state.insights``, the ledger): pending, sending (about to be posted, or its
outcome unknown: looked for in TE before any new POST), sent; parked as given_up (refused
for good) or unverified (its outcome cannot be found out); ``retry`` puts a parked one back
to sending (to be looked for), an unverified one to pending (an operator checked TE).
"""

from __future__ import annotations

from enum import StrEnum

# Every lifecycle parks an item that failed too often in the same state (state.work_items).
GIVEN_UP = "given_up"


class ArchiveState(StrEnum):
    PENDING = "pending"
    FAILED = "failed"
    STORED = "stored"
    CLAIMED = "claimed"
    GIVEN_UP = GIVEN_UP


class ParticipantState(StrEnum):
    PENDING = "pending"
    FAILED = "failed"
    MATCHED = "matched"
    NO_MATCH = "no_match"
    AMBIGUOUS = "ambiguous"
    GIVEN_UP = GIVEN_UP


class InsightState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    GIVEN_UP = GIVEN_UP
    UNVERIFIED = "unverified"


# The moves each state may make (staying put is always allowed). A failure never moves an
# item backwards: a finished one stays finished (state.work_items).
MOVES: dict[type[StrEnum], dict[StrEnum, frozenset[StrEnum]]] = {
    ArchiveState: {
        ArchiveState.PENDING: frozenset(
            {ArchiveState.STORED, ArchiveState.FAILED, ArchiveState.GIVEN_UP, ArchiveState.CLAIMED}
        ),
        ArchiveState.FAILED: frozenset(
            {ArchiveState.STORED, ArchiveState.GIVEN_UP, ArchiveState.CLAIMED}
        ),
        ArchiveState.STORED: frozenset({ArchiveState.CLAIMED, ArchiveState.GIVEN_UP}),
        ArchiveState.GIVEN_UP: frozenset({ArchiveState.PENDING, ArchiveState.STORED}),
        ArchiveState.CLAIMED: frozenset(),
    },
    ParticipantState: {
        ParticipantState.PENDING: frozenset(
            {
                ParticipantState.FAILED,
                ParticipantState.GIVEN_UP,
                ParticipantState.MATCHED,
                ParticipantState.NO_MATCH,
                ParticipantState.AMBIGUOUS,
            }
        ),
        ParticipantState.FAILED: frozenset(
            {
                ParticipantState.PENDING,  # retry
                ParticipantState.GIVEN_UP,
                ParticipantState.MATCHED,
                ParticipantState.NO_MATCH,
                ParticipantState.AMBIGUOUS,
            }
        ),
        ParticipantState.GIVEN_UP: frozenset({ParticipantState.PENDING}),
        ParticipantState.AMBIGUOUS: frozenset({ParticipantState.PENDING}),
        ParticipantState.MATCHED: frozenset(),
        ParticipantState.NO_MATCH: frozenset(),
    },
    InsightState: {
        InsightState.PENDING: frozenset(
            {InsightState.SENDING, InsightState.SENT, InsightState.GIVEN_UP}
        ),
        InsightState.SENDING: frozenset(
            {InsightState.SENT, InsightState.GIVEN_UP, InsightState.UNVERIFIED}
        ),
        InsightState.GIVEN_UP: frozenset({InsightState.SENDING}),
        InsightState.UNVERIFIED: frozenset({InsightState.PENDING}),
        InsightState.SENT: frozenset(),
    },
}
# The states an item is created in.
STARTS: dict[type[StrEnum], frozenset[StrEnum]] = {
    ArchiveState: frozenset({ArchiveState.PENDING}),
    ParticipantState: frozenset({ParticipantState.PENDING}),
    # sending: an archive abandoned elsewhere may have had its insights posted already
    InsightState: frozenset({InsightState.PENDING, InsightState.SENDING}),
}
# Which table holds the items of each lifecycle.
TABLES: dict[type[StrEnum], str] = {
    ArchiveState: "archives",
    ParticipantState: "participants",
    InsightState: "insights",
}

# --- archives
# Still to be worked on by the archive job: not claimed, not parked.
ARCHIVE_OPEN = (ArchiveState.PENDING, ArchiveState.FAILED, ArchiveState.STORED)
# The verified bytes are in the store: the only states in which an archive may be abandoned.
ARCHIVE_SAFE = (ArchiveState.STORED, ArchiveState.CLAIMED)
# Not (yet) in the store.
ARCHIVE_UNSTORED = (ArchiveState.PENDING, ArchiveState.FAILED, ArchiveState.GIVEN_UP)
# The states in which an archive can carry an error (status, retry).
ARCHIVE_FAILING = (
    ArchiveState.PENDING,
    ArchiveState.FAILED,
    ArchiveState.STORED,
    ArchiveState.GIVEN_UP,
)
# Where a failed attempt leaves an open archive until its next try (an abandon that failed
# leaves it stored).
ARCHIVE_ON_FAILURE = {
    ArchiveState.PENDING: ArchiveState.FAILED,
    ArchiveState.FAILED: ArchiveState.FAILED,
    ArchiveState.STORED: ArchiveState.STORED,
}

# --- participants
PARTICIPANT_OPEN = (ParticipantState.PENDING, ParticipantState.FAILED)
PARTICIPANT_FAILING = (
    ParticipantState.PENDING,
    ParticipantState.FAILED,
    ParticipantState.GIVEN_UP,
    ParticipantState.AMBIGUOUS,
)
# Parked for an operator (retry puts them back to pending).
PARTICIPANT_PARKED = (
    ParticipantState.FAILED,
    ParticipantState.GIVEN_UP,
    ParticipantState.AMBIGUOUS,
)
# That got no insight (yet): counted with the insights by status.
PARTICIPANT_WITHOUT_INSIGHT = (
    ParticipantState.PENDING,
    ParticipantState.FAILED,
    ParticipantState.NO_MATCH,
    ParticipantState.GIVEN_UP,
    ParticipantState.AMBIGUOUS,
)
PARTICIPANT_ON_FAILURE = {
    ParticipantState.PENDING: ParticipantState.FAILED,
    ParticipantState.FAILED: ParticipantState.FAILED,
}

# --- insights
INSIGHT_OPEN = (InsightState.PENDING, InsightState.SENDING)
INSIGHT_FAILING = (
    InsightState.PENDING,
    InsightState.SENDING,
    InsightState.GIVEN_UP,
    InsightState.UNVERIFIED,
)
# What retry puts back: the parked, and those whose POST failed (each with an error).
INSIGHT_RETRIED = (InsightState.GIVEN_UP, InsightState.SENDING, InsightState.UNVERIFIED)
# A failed POST may have been processed: the insight is looked for before it is posted again.
INSIGHT_ON_FAILURE = {
    InsightState.PENDING: InsightState.SENDING,
    InsightState.SENDING: InsightState.SENDING,
}


def sql_list(states: tuple[StrEnum, ...] | list[StrEnum]) -> str:
    """``('a', 'b')``: states as an SQL list, for a statement that names them itself (the
    values are this module's constants, never input)."""
    return "(" + ", ".join(f"'{state.value}'" for state in states) + ")"
