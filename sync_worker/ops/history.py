"""``sync-worker history`` and the recent passes of ``status``: the passes kept in the
state file (state.pass_history), a line each for people, a JSON object each for tools."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from sync_worker.core.clock import iso_time
from sync_worker.jobs.context import Outcome
from sync_worker.state.pass_history import PassRecord

# What the table shows of each job's outcomes: a column each, the outcomes it adds up.
COLUMNS = (
    ("STORED", "archives", (Outcome.STORED,)),
    ("ABANDONED", "archives", (Outcome.ABANDONED,)),
    ("A-FAILED", "archives", (Outcome.FAILED, Outcome.GIVEN_UP, Outcome.HASH_MISMATCH)),
    ("SENT", "insights", (Outcome.SENT,)),
    ("I-FAILED", "insights", (Outcome.FAILED, Outcome.GIVEN_UP)),
)
HEADER = (
    f"{'STARTED':<25} {'DURATION':>8}  {'OUTCOME':<10} "
    + " ".join(f"{name:>9}" for name, _, _ in COLUMNS)
    + f" {'BYTES':>9} {'TE REQ':>6}  JOBS"
)


def render_table(passes: Iterable[PassRecord]) -> list[str]:
    """A header and a line per pass, each stopped job's error on a line below it."""
    lines = [HEADER]
    for record in passes:
        counts = " ".join(f"{_count(record.counts, job, kinds):>9}" for _, job, kinds in COLUMNS)
        lines.append(
            f"{iso_time(record.started_at):<25} {_duration(record.duration):>8}  "
            f"{record.outcome:<10} {counts} {_size(record.bytes_stored):>9} "
            f"{record.te_requests:>6}  {','.join(record.jobs)}"
        )
        lines.extend(f"{'':<25} {job} stopped: {error}" for job, error in record.errors.items())
    return lines


def write_json(passes: Iterable[PassRecord], out: TextIO) -> None:
    """A JSON object per pass, one a line, times in ISO 8601."""
    for record in passes:
        out.write(json.dumps(as_json(record)) + "\n")


def as_json(record: PassRecord) -> dict[str, Any]:
    finished = record.finished_at
    duration = record.duration
    return {
        "id": record.id,
        "started_at": iso_time(record.started_at),
        "finished_at": None if finished is None else iso_time(finished),
        "duration_seconds": None if duration is None else round(duration, 3),
        "outcome": record.outcome,
        "tenant": record.tenant,
        "jobs": record.jobs,
        "counts": record.counts,
        "errors": record.errors,
        "bytes_stored": record.bytes_stored,
        "te_requests": record.te_requests,
        "te_tokens_requested": record.te_tokens_requested,
    }


def _count(counts: Mapping[str, Mapping[str, int]], job: str, kinds: tuple[str, ...]) -> str:
    if job not in counts:
        return "-"
    return str(sum(counts[job].get(kind, 0) for kind in kinds))


def _duration(seconds: float | None) -> str:
    """``42.1s``, ``3m05s``, ``2h07m``; ``-`` for a pass not finished."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _size(count: int) -> str:
    """Bytes in the largest unit that keeps a number of at least 1 (1000s)."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
