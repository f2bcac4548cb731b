"""Optional dead-man's-switch pings (healthchecks.io style): ``URL/start`` as a pass
begins, then the URL on success or ``URL/fail`` on failure, with the pass summary.

The monitor learns from the start ping how long passes take, and that one began but never
ended (a hang, a kill). A ping that fails is logged and never fails the pass.
"""

from __future__ import annotations

import structlog

from sync_worker.adapters.http import new_session
from sync_worker.core.network import Route

TIMEOUT_SECONDS = 10.0

log = structlog.get_logger()


def ping_start(url: str, route: Route | None = None) -> None:
    """``route``: the proxy and CA bundle to reach the monitor with (none: direct)."""
    if url:
        _post(f"{url}/start", b"", route)


def ping(url: str, ok: bool, summary: str, route: Route | None = None) -> None:
    if url:
        _post(url if ok else f"{url}/fail", summary.encode(), route)


def _post(target: str, body: bytes, route: Route | None) -> None:
    try:
        with new_session(route=route) as session:
            response = session.post(target, data=body, timeout=TIMEOUT_SECONDS)
        if response.status_code >= 300:  # a redirect is not followed: not a ping either
            log.warning("healthcheck.failed", status=response.status_code)
    except Exception as exc:  # monitoring must never break the work it monitors
        log.warning("healthcheck.failed", error=type(exc).__name__)
