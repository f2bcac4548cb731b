"""SHA256SUMS, from the ledger: a line per stored archive, in the format of ``sha256sum``, so
that an auditor can check the copy with ``sha256sum -c`` and no other tool.

The local store adds each archive's line as it stores it. An object cannot be appended to:
in a bucket the archive job rewrites it after a pass that stored something. The audit
rewrites it in either store, which also drops lines repeated by passes cut short.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog

from sync_worker.adapters.stores import StoreError, sums_name
from sync_worker.jobs.context import JobContext
from sync_worker.state import audits

log = structlog.get_logger()


def rewrite(ctx: JobContext) -> bool:
    """Replace SHA256SUMS in the store; False (and a warning) when the store refused."""
    try:
        ctx.store.write_sums(lines(ctx))
    except (StoreError, OSError) as exc:
        log.warning("storage.sums_failed", error=str(exc))
        return False
    return True


def lines(ctx: JobContext) -> Iterator[str]:
    for item in audits.every_stored(ctx.db):
        yield f"{item.sha256}  {sums_name(item.conference_id, item.archive_id)}\n"
