"""``sync-worker export``: the auditor's manifest, one row per stored archive, as CSV or JSON
lines, written as it is read (state.reports.manifest pages through the ledger)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import Any, TextIO

from sync_worker.core.clock import iso_time
from sync_worker.state.reports import MANIFEST_FIELDS

TIME_FIELDS = ("stored_at", "abandoned_at", "last_audit_at")


def write(rows: Iterable[dict[str, Any]], out: TextIO, fmt: str) -> None:
    """The rows as ``csv`` (insight ids separated by spaces) or ``jsonl``."""
    if fmt == "csv":
        writer = csv.DictWriter(out, MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            shown = _readable(row)
            writer.writerow({**shown, "te_insight_ids": " ".join(map(str, row["te_insight_ids"]))})
        return
    for row in rows:
        out.write(json.dumps(_readable(row)) + "\n")


def _readable(row: dict[str, Any]) -> dict[str, Any]:
    """The row's fields in the manifest's order, times as ISO 8601 UTC."""
    return {key: _iso(row[key]) if key in TIME_FIELDS else row[key] for key in MANIFEST_FIELDS}


def _iso(value: float | None) -> str | None:
    return None if not value else iso_time(value)
