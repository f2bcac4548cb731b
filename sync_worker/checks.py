"""``sync-worker check``: is everything in place for a pass? Answers in plain words."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from state.db import open_database
from sync_worker.clock import Clock
from sync_worker.config import Config
from sync_worker.flexperto import FlexpertoClient
from sync_worker.http import ApiError
from sync_worker.totalexpert import TokenBudgetExhausted, TotalExpertClient


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str


def run_checks(config: Config, clock: Clock) -> list[Finding]:
    findings = [
        _check("state database", lambda: _state(config)),
        _check("archive folder", lambda: _archive_dir(config)),
        _check("flexperto", lambda: _flexperto(config, clock)),
    ]
    db = open_database(config.state.database)
    try:
        client = TotalExpertClient(config.totalexpert, config.http, db, clock)
        findings.append(_check("totalexpert", lambda: _heartbeat(client)))
        findings.append(_check("totalexpert token", lambda: _token(client)))
        client.close()
    finally:
        db.close()
    return findings


def _check(name: str, probe: Callable[[], str]) -> Finding:
    try:
        return Finding(name, True, probe())
    except (ApiError, OSError, TokenBudgetExhausted) as exc:
        return Finding(name, False, str(exc))


def _state(config: Config) -> str:
    open_database(config.state.database).close()
    return f"{config.state.database} opens"


def _archive_dir(config: Config) -> str:
    folder = config.storage.archive_dir
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{folder} is not writable by this user")
    return f"{folder} is writable"


def _flexperto(config: Config, clock: Clock) -> str:
    client = FlexpertoClient(config.flexperto, config.http, clock.sleep)
    try:
        client.probe()
    finally:
        client.close()
    return f"{config.flexperto.base_url} lists archives with this api-key"


def _heartbeat(client: TotalExpertClient) -> str:
    client.heartbeat()
    return "heartbeat answered"


def _token(client: TotalExpertClient) -> str:
    if client.token_expiry() is None:
        client.fetch_token()
        detail = "new access token obtained"
    else:
        detail = "cached access token reused"
    expiry = client.token_expiry()
    until = datetime.fromtimestamp(expiry, UTC).isoformat() if expiry else "unknown"
    return f"{detail}, valid until {until}"
