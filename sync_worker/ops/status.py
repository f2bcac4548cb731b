"""``sync-worker status``: what the checkpoints hold. A table for people (counts, then the
failing and parked items, then the last passes), streamed JSON for tools. Either costs
what is at hand, not the history (see state.reports).

The JSON is one document, ``{"counts": {...}, "archives": [...]}``, written an archive at
a time (one per line), so that even years of archives need no more memory than one page;
while insights are blocked (state.insight_blocks) it also holds ``"insights_blocked"``.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from sync_worker.core.clock import iso_time
from sync_worker.ops import history
from sync_worker.state import held_records, insight_blocks, pass_history, reports
from sync_worker.state.db import Database

TIME_FIELDS = ("next_attempt_at", "first_seen_at", "stored_at", "claimed_at", "sent_at")
FAILING_SHOWN = 50
RECENT_PASSES = 5


def render_table(db: Database, limit: int = FAILING_SHOWN) -> str:
    """What blocks insights, if anything does; counts per state, then up to ``limit``
    failing or parked items, then the last RECENT_PASSES passes."""
    counts = reports.counts(db)
    lines = [
        *_blocked(db),
        "Archives: " + _counts(counts["archives"]),
        "Insights: " + _counts(counts["insights"]),
    ]
    lines.extend(_held(db, limit))
    lines.extend(_failing(db, limit))
    lines.extend(_recent_passes(db))
    return "\n".join(lines)


def _failing(db: Database, limit: int) -> list[str]:
    """Up to ``limit`` failing or parked items, each with its next try and last error."""
    rows, total = reports.failing(db, limit)
    if not rows:
        return ["No failing items."]
    lines = [""]
    lines.append(f"{'ARCHIVE':<38} {'ITEM':<28} {'STATE':<10} {'TRIES':>5}  NEXT TRY / LAST ERROR")
    for row in rows:
        next_try = _iso(row["next_attempt_at"]) or "-"
        lines.append(
            f"{row['archive_id']:<38} {row['item'][:28]:<28} {row['state']:<10} "
            f"{row['attempts']:>5}  {next_try}"
        )
        lines.append(f"{'':<38} {row['last_error']}")
    lines.extend(_more(total - len(rows)))
    return lines


def _recent_passes(db: Database) -> list[str]:
    """The last few passes, the newest first (all of them: sync-worker history)."""
    recent = pass_history.passes(db, limit=RECENT_PASSES)
    if not recent:
        return []
    return ["", "Recent passes (sync-worker history for more)", *history.render_table(recent)]


def _blocked(db: Database) -> list[str]:
    """The line saying why no insight reaches Total Expert, when none can (state.insight_blocks)."""
    block = insight_blocks.current(db)
    if block is None:
        return []
    line = f"Insights blocked since {_iso(block.since)} because {block.reason}"
    if block.retry_at is not None:
        line += f"; not tried again before {_iso(block.retry_at)} unless the credentials change"
    return [line, ""]


def blocked_json(db: Database) -> dict[str, Any] | None:
    """The block in force, for ``status --json``: kind, reason, since and next try."""
    block = insight_blocks.current(db)
    if block is None:
        return None
    return {
        "kind": block.kind,
        "reason": block.reason,
        "since": _iso(block.since),
        "next_try_at": _iso(block.retry_at),
    }


def _held(db: Database, limit: int) -> list[str]:
    """The held records, which keep their conference (or, without one, every conference)
    from being abandoned."""
    held, total = held_records.listed(db, limit)
    if not held:
        return []
    lines = [
        "",
        "Held back: listed records not taken, whose conference is not abandoned meanwhile",
        f"{'RECORD':<38} {'CONFERENCE':<28} {'KIND':<11} SINCE / REASON",
    ]
    for item in held:
        conference = item.conference_id or "(unreadable: holds back all)"
        lines.append(
            f"{item.key!s:<38} {conference[:28]:<28} {item.kind:<11} {_iso(item.first_seen_at)}"
        )
        lines.append(f"{'':<38} {item.reason}")
    lines.extend(_more(total - len(held)))
    return [*lines, ""]


def _more(hidden: int) -> list[str]:
    return [f"... and {hidden} more (sync-worker status --limit N)"] if hidden > 0 else []


def write_json(
    db: Database,
    out: TextIO,
    states: tuple[str, ...] = (),
    since: float | None = None,
    limit: int | None = None,
) -> None:
    """The counts and every archive (filtered) with its insights, as one JSON document."""
    counts = reports.counts(db)
    blocked = blocked_json(db)
    shown = f', "insights_blocked": {json.dumps(blocked)}' if blocked is not None else ""
    out.write(f'{{"counts": {json.dumps(counts)}{shown}, "archives": [')
    archives = reports.archives_with_insights(db, states, since, limit)
    for n, archive in enumerate(archives):
        out.write(("\n" if n == 0 else ",\n") + json.dumps(_readable(archive)))
    out.write("\n]}\n")


def _readable(archive: dict[str, Any]) -> dict[str, Any]:
    """The archive with its times (and its insights' times) in ISO 8601."""
    shown = _with_times(archive)
    shown["insights"] = [_with_times(item) for item in archive["insights"]]
    return shown


def _with_times(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _iso(value) if key in TIME_FIELDS else value for key, value in row.items()}


def _iso(value: float | None) -> str | None:
    return None if value is None else iso_time(value)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none"
