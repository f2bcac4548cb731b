"""What the checkpoints hold, for ``sync-worker status``: JSON for tools, a table for people."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from sync_worker.state import insights

ARCHIVE_FIELDS = (
    "archive_id",
    "conference_id",
    "state",
    "remote_status",
    "path",
    "sha256",
    "size",
    "attempts",
    "last_error",
    "next_attempt_at",
    "first_seen_at",
    "stored_at",
    "claimed_at",
)
TIME_FIELDS = ("next_attempt_at", "first_seen_at", "stored_at", "claimed_at", "sent_at")


def collect(db: sqlite_utils.Database) -> dict[str, Any]:
    """Every archive with its insights, and counts per state."""
    rows = db.query(
        f"select {', '.join(ARCHIVE_FIELDS)} from archives order by first_seen_at, archive_id"
    )
    archives = []
    for row in rows:
        item = _with_times(row)
        item["insights"] = [_with_times(i) for i in insights.for_archive(db, row["archive_id"])]
        archives.append(item)
    return {
        "archives": archives,
        "counts": {
            "archives": dict(Counter(a["state"] for a in archives)),
            "insights": dict(Counter(i["state"] for a in archives for i in a["insights"])),
        },
    }


def empty() -> dict[str, Any]:
    """The report of a worker that has not run yet."""
    return {"archives": [], "counts": {"archives": {}, "insights": {}}}


def _with_times(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _iso(value) if key in TIME_FIELDS else value for key, value in row.items()}


def _iso(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, UTC).isoformat()


def render_table(report: dict[str, Any]) -> str:
    """A short human summary: counts, then every item that is failing or parked."""
    lines = ["Archives: " + _counts(report["counts"]["archives"])]
    lines.append("Insights: " + _counts(report["counts"]["insights"]))
    problems = [(archive, None) for archive in report["archives"] if archive["last_error"]] + [
        (archive, item)
        for archive in report["archives"]
        for item in archive["insights"]
        if item["last_error"]
    ]
    if not problems:
        lines.append("No failing items.")
        return "\n".join(lines)
    lines.append("")
    lines.append(f"{'ARCHIVE':<38} {'ITEM':<28} {'STATE':<9} {'TRIES':>5}  NEXT TRY / LAST ERROR")
    for archive, item in problems:
        what = "archive" if item is None else f"insight {item['email']}"
        source = archive if item is None else item
        next_try = archive["next_attempt_at"] if item is None else "-"
        lines.append(
            f"{archive['archive_id']:<38} {what[:28]:<28} {source['state']:<9} "
            f"{source['attempts']:>5}  {next_try or '-'}"
        )
        lines.append(f"{'':<38} {source['last_error']}")
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none"
