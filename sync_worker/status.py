"""``sync-worker status``: what the checkpoints hold. A table for people (counts, then the
failing and parked items), streamed JSON for tools. Either costs what is at hand, not the
history (see state.reports).

The JSON is one document, ``{"counts": {...}, "archives": [...]}``, written an archive at
a time (one per line), so that even years of archives need no more memory than one page.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, TextIO

import sqlite_utils

from sync_worker.state import reports

TIME_FIELDS = ("next_attempt_at", "first_seen_at", "stored_at", "claimed_at", "sent_at")
FAILING_SHOWN = 50


def render_table(db: sqlite_utils.Database, limit: int = FAILING_SHOWN) -> str:
    """Counts per state, then up to ``limit`` failing or parked items."""
    counts = reports.counts(db)
    lines = ["Archives: " + _counts(counts["archives"]), "Insights: " + _counts(counts["insights"])]
    rows, total = reports.failing(db, limit)
    if not rows:
        lines.append("No failing items.")
        return "\n".join(lines)
    lines.append("")
    lines.append(f"{'ARCHIVE':<38} {'ITEM':<28} {'STATE':<10} {'TRIES':>5}  NEXT TRY / LAST ERROR")
    for row in rows:
        next_try = _iso(row["next_attempt_at"]) or "-"
        lines.append(
            f"{row['archive_id']:<38} {row['item'][:28]:<28} {row['state']:<10} "
            f"{row['attempts']:>5}  {next_try}"
        )
        lines.append(f"{'':<38} {row['last_error']}")
    if total > len(rows):
        lines.append(f"... and {total - len(rows)} more (sync-worker status --limit N)")
    return "\n".join(lines)


def write_json(
    db: sqlite_utils.Database,
    out: TextIO,
    states: tuple[str, ...] = (),
    since: float | None = None,
    limit: int | None = None,
) -> None:
    """The counts and every archive (filtered) with its insights, as one JSON document."""
    counts = reports.counts(db)
    out.write(f'{{"counts": {json.dumps(counts)}, "archives": [')
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
    return None if value is None else datetime.fromtimestamp(value, UTC).isoformat()


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none"
