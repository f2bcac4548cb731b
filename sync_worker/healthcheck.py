"""Optional dead-man's-switch ping at the end of each pass (healthchecks.io style).

Success requests the configured URL, failure requests ``URL/fail``. A ping that fails is
logged and never fails the pass.
"""

from __future__ import annotations

import structlog

from sync_worker.http import new_session

TIMEOUT_SECONDS = 10.0

log = structlog.get_logger()


def ping(url: str, ok: bool, summary: str) -> None:
    if not url:
        return
    target = url if ok else f"{url}/fail"
    try:
        with new_session() as session:
            response = session.post(target, data=summary.encode(), timeout=TIMEOUT_SECONDS)
        if response.status_code >= 400:
            log.warning("healthcheck.failed", status=response.status_code)
    except Exception as exc:  # monitoring must never break the work it monitors
        log.warning("healthcheck.failed", error=type(exc).__name__)
