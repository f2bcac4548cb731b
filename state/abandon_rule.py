"""When a conference may be abandoned: the one rule, and the facts it is decided on.

Abandon works per *conference* (``POST .../conferences/{conferenceId}/archive/abandon``),
and Flexperto then deletes the conference's archives three days later. The documents do
not say which archives of the conference that touches, so the worker assumes all of them,
in every status. A conference is therefore abandoned only when no archive of it would be
lost, that is when every sibling Flexperto has shown for it

- is stored here (``stored`` or ``claimed``: the verified bytes are in the store), or
- is in a status in which there is nothing to lose: ``FAILED`` (the archive was never made,
  there is no file) or ``EXPIRED`` (Flexperto deleted it already),

and none of them is *held* (state.held_records): a record the gate rejected may well be a
real archive, and one still PROCESSING/PACKING becomes one. Whatever else a sibling is
(pending, failed, given up, AVAILABLE or ABANDONED and not stored, a status never seen
before) holds the conference back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sync_worker.state import archives, held_records
from sync_worker.state.db import Database
from sync_worker.state.lifecycles import ARCHIVE_SAFE

# Remote statuses in which an archive has no file an abandon could delete.
HARMLESS_STATUSES = frozenset({"FAILED", "EXPIRED"})


@dataclass(frozen=True)
class Sibling:
    """One archive of a conference as the worker knows it: its ``state`` in the ledger
    (None: not in it), its status at Flexperto, and why it is held, if it is."""

    key: str
    state: str | None
    remote_status: str | None
    held: str | None = None


def blocks(sibling: Sibling) -> bool:
    """Whether abandoning the conference now could lose this archive."""
    if sibling.state in ARCHIVE_SAFE:
        return False
    return sibling.held is not None or sibling.remote_status not in HARMLESS_STATUSES


def blockers(siblings: Iterable[Sibling]) -> list[str]:
    """The keys of the siblings that hold the conference back (none: abandon it)."""
    return [sibling.key for sibling in siblings if blocks(sibling)]


def conference_blockers(db: Database, conference_id: str) -> list[str]:
    """What holds ``conference_id`` back now, from the ledger and the held records."""
    known = [Sibling(*row) for row in archives.of_conference(db, conference_id)]
    held = [
        Sibling(item.key, None, None, f"{item.kind}: {item.reason}")
        for item in held_records.blocking(db, conference_id)
    ]
    return blockers([*known, *held])
