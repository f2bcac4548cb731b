"""``sync-worker check``: is everything in place for a pass, and which of the worker's
assumptions about the two APIs hold? Answers in plain words.

Each finding is ``ok``, ``fallback`` (an assumption does not hold here: the worker does
without it, as the detail says) or ``FAIL`` (a pass cannot work until this is fixed).
Everything asked of the services is read-only, and Total Expert's requests go through the
same rate-limit buckets as a pass's; a token is requested only when none is cached.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlite_utils

from sync_worker.clock import Clock
from sync_worker.config import Config
from sync_worker.flexperto.client import PREFERRED_LISTING, FlexpertoClient, ListingForm
from sync_worker.flexperto.records import RecordError, parse_record
from sync_worker.http import ApiError
from sync_worker.network import SERVICES
from sync_worker.state import capabilities
from sync_worker.state.db import (
    StateBusyError,
    StateFileError,
    open_database,
    open_existing,
    open_memory_database,
)
from sync_worker.state.te_access import SharedAccess
from sync_worker.stores import StoreError, open_store
from sync_worker.totalexpert import (
    FILTER_SUPPORTED,
    UPDATED_SINCE_FILTER,
    TokenBudgetExhausted,
    TotalExpertClient,
)

OK, FALLBACK, FAIL = "ok", "fallback", "FAIL"


@dataclass(frozen=True)
class Finding:
    name: str
    status: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != FAIL


class Fallback(Exception):
    """An assumption that does not hold; the message says what the worker does instead."""


def run_checks(config: Config, clock: Clock) -> list[Finding]:
    findings = [
        *_routes(config),
        _check("state database", lambda: _state(config)),
        _check(
            "archive store", lambda: open_store(config.storage, config.http, config.network).probe()
        ),
    ]
    flexperto = FlexpertoClient(config.flexperto, config.http, clock, config.network)
    try:
        findings.append(_check("flexperto listing", lambda: _listing(flexperto)))
        if findings[-1].ok:
            findings.append(_check("flexperto records", lambda: _records(flexperto)))
    finally:
        flexperto.close()
    db = _state_or_memory(config)
    try:
        access = SharedAccess.for_config(db, config.totalexpert, config.state.busy_timeout_seconds)
    except (OSError, sqlite3.Error, StateBusyError) as exc:
        db.close()
        return [*findings, Finding("totalexpert budget", FAIL, f"{type(exc).__name__}: {exc}")]
    client = TotalExpertClient(config.totalexpert, config.http, access, clock, config.network)
    try:
        findings.extend(_totalexpert_findings(config, client))
        findings.extend(_remembered(db))
    finally:
        client.close()
        access.close()
        db.close()
    return findings


def _routes(config: Config) -> list[Finding]:
    """Which proxy (without its credentials) and which CAs each service is reached with."""
    services = [s for s in SERVICES if s != "s3" or config.storage.backend == "s3"]
    return [Finding(f"network {s}", OK, config.network.route(s).describe()) for s in services]


def _state_or_memory(config: Config) -> sqlite_utils.Database:
    """The state file, whose budgets and token every process shares; if it cannot be opened
    (the first finding says why), a private one, so that TE can still be checked."""
    try:
        return _open_state(config)
    except (OSError, sqlite3.Error, StateBusyError, StateFileError):
        return open_memory_database()


def _open_state(config: Config) -> sqlite_utils.Database:
    """The state file, made if there is none yet (it keeps TE's token for the passes); one
    that is there but is not a state file is left as it is."""
    path = config.state.database
    return open_existing(path) if path.exists() else open_database(path)


def _totalexpert_findings(config: Config, client: TotalExpertClient) -> list[Finding]:
    findings = [
        _check("totalexpert", lambda: _heartbeat(client)),
        _check("totalexpert token", lambda: _token(client)),
    ]
    if not findings[-1].ok:
        return findings  # everything below needs a token
    type_id: list[int] = []
    findings.append(
        _check("insight type", lambda: _insight_type(client, config, type_id)),
    )
    findings.append(_check("contacts changed since", lambda: _updated_since(client)))
    if type_id:
        findings.append(_check("insight search", lambda: _insight_data(client, type_id[0])))
    return findings


def _check(name: str, probe: Callable[[], str]) -> Finding:
    try:
        return Finding(name, OK, probe())
    except Fallback as exc:
        return Finding(name, FALLBACK, str(exc))
    except (
        ApiError,
        OSError,
        TokenBudgetExhausted,
        RecordError,
        sqlite3.Error,
        StoreError,
        StateFileError,
    ) as exc:
        plain = isinstance(exc, ApiError | TokenBudgetExhausted | StoreError | StateFileError)
        return Finding(name, FAIL, str(exc) if plain else f"{type(exc).__name__}: {exc}")


def _state(config: Config) -> str:
    """The state file opens and SQLite finds every page of it sound (``integrity_check``
    reads them all: a damaged index or page that a cursory query would not notice)."""
    db = _open_state(config)
    try:
        problems = [row[0] for row in db.execute("pragma integrity_check(5)").fetchall()]
    finally:
        db.close()
    if problems != ["ok"]:
        raise StateFileError(
            f"{config.state.database} fails SQLite's integrity check: " + "; ".join(problems)
        )
    return f"{config.state.database} opens and passes SQLite's integrity check"


def _listing(client: FlexpertoClient) -> str:
    form = client.negotiate_listing()
    client.use(form)
    if form != PREFERRED_LISTING:
        raise Fallback(f"the archive list takes only this form: {form.summary()}")
    return f"archives listed with this api-key ({form.summary()})"


def _records(client: FlexpertoClient) -> str:
    raw = client.first_record()
    if raw is None:
        return "no archive listed now: the record fields will be checked on another day"
    record = parse_record(raw)
    missing = [
        text
        for absent, text in (
            (record.size is None, "no 'size' (the sha256 alone verifies downloads)"),
            (
                not record.people_listed,
                "no subject.participants (read from each archive's own metadata)",
            ),
        )
        if absent
    ]
    if missing:
        raise Fallback("records have " + "; ".join(missing))
    return "records carry the checksum, size and participants"


def _heartbeat(client: TotalExpertClient) -> str:
    client.heartbeat()
    return "heartbeat answered"


def _token(client: TotalExpertClient) -> str:
    if client.token_usable_until() is None:
        client.fetch_token()
        detail = "new access token obtained"
    else:
        detail = "cached access token reused"
    until = client.token_usable_until()
    when = datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds") if until else "?"
    return f"{detail}, used until {when}"


def _insight_type(client: TotalExpertClient, config: Config, found: list[int]) -> str:
    name = config.totalexpert.insight_type
    type_id = client.insight_type_id(name)
    if type_id is None:
        raise ApiError("totalexpert", f"insight type {name!r} does not exist: ask TE for it")
    found.append(type_id)
    return f"{name!r} exists (id {type_id})"


def _updated_since(client: TotalExpertClient) -> str:
    verdict = client.probe_updated_since()
    if verdict != FILTER_SUPPORTED:
        raise Fallback(
            f"filter {UPDATED_SINCE_FILTER} {verdict}: the copy of contacts is re-read whole "
            "at most daily, or addresses are looked up one by one"
        )
    return f"filter {UPDATED_SINCE_FILTER} works: passes ask only for what changed"


def _insight_data(client: TotalExpertClient, type_id: int) -> str:
    shown = client.lists_insight_data(type_id)
    if shown is None:
        return "no insight of this type yet: whether TE lists their data is checked later"
    if not shown:
        raise Fallback(
            "TE lists insights without their data: an insight whose POST went unanswered "
            "is parked as unverified instead of being looked for"
        )
    return "TE lists insights with their data: unanswered POSTs are looked for, not repeated"


def _remembered(db: sqlite_utils.Database) -> list[Finding]:
    """What passes have learnt and use now (state.capabilities)."""
    findings = []
    for name, decision in capabilities.everything(db).items():
        value = decision.value
        if name == capabilities.LISTING_FORM:
            form = ListingForm.from_text(value)
            value = form.summary() if form else value
        since = datetime.fromtimestamp(decision.decided_at, UTC).isoformat(timespec="seconds")
        findings.append(Finding("remembered", OK, f"{name}: {value} (since {since})"))
    return findings
