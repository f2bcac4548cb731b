"""Archive records for tests that need one without a sandbox."""

from __future__ import annotations

from sync_worker.adapters.flexperto.records import ArchiveRecord, parse_record


def archive_record(
    archive_id: str,
    conference_id: str = "c1",
    status: str = "AVAILABLE",
    sha256: str = "0" * 64,
    **extra: object,
) -> ArchiveRecord:
    """A valid record, parsed as the worker parses what Flexperto lists."""
    raw = {
        "id": archive_id,
        "status": status,
        "sha256CheckSum": sha256,
        "subject": {"conference_id": conference_id, "participants": []},
        **extra,
    }
    return parse_record(raw)
