"""``sync-worker check``: is everything in place for a pass, and which of the worker's
assumptions about the two APIs hold? Answers in plain words.

Each finding is ``ok``, ``fallback`` (an assumption does not hold here: the worker does
without it, as the detail says), ``warning`` (it works, but the detail says what an operator
should change), ``skipped`` (not tried: the detail says how), ``missing``
(the state file, before the first pass) or ``FAIL`` (a pass cannot work until this is fixed).

Read-only: nothing is made or changed on disk (the state file is opened read-only, the
archive folder is not made), and everything asked of the services is read-only. Total
Expert's budgets and cached token are used from a copy in memory; a token is requested only
with ``--token`` (then kept in the state or budget file for the passes, if there is one).
Every request has a short deadline and is not retried, and a failure names the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from sync_worker.adapters.flexperto.client import PREFERRED_LISTING, FlexpertoClient, ListingForm
from sync_worker.adapters.flexperto.records import RecordError, parse_record
from sync_worker.adapters.http import ApiError
from sync_worker.adapters.stores import StoreError, StoreWarning, open_store
from sync_worker.adapters.stores.local import LocalStore
from sync_worker.adapters.totalexpert import (
    FILTER_SUPPORTED,
    UPDATED_SINCE_FILTER,
    TokenBudgetExhausted,
    TotalExpertClient,
    TotalExpertSession,
)
from sync_worker.config import Config, HttpConfig
from sync_worker.core.clock import Clock, iso_time
from sync_worker.core.network import SERVICES
from sync_worker.core.private_files import describe_writable_dir
from sync_worker.state import capabilities
from sync_worker.state.configured import (
    open_existing_state,
    open_state_read_only,
    private_copy,
    state_place,
)
from sync_worker.state.db import (
    Database,
    NoState,
    StateBusyError,
    StateFileError,
    database_errors,
    memory_copy,
    open_budget_database,
    open_existing_read_only,
    open_memory_database,
)
from sync_worker.state.te_access import SharedAccess

OK, FALLBACK, WARNING, SKIPPED, MISSING, FAIL = (
    "ok",
    "fallback",
    "warning",
    "skipped",
    "missing",
    "FAIL",
)
PROBE_SECONDS = 10.0


def _db_errors() -> tuple[type[Exception], ...]:
    """What opening or reading the state or the budget may raise."""
    return (OSError, *database_errors(), StateBusyError, StateFileError)


@dataclass(frozen=True)
class CheckPlan:
    """What ``check`` may do: reach the services at all, request a TE token, and how long
    each request may take."""

    offline: bool = False
    token: bool = False
    probe_seconds: float = PROBE_SECONDS


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


class MissingState(Exception):
    """No state file yet: normal before the first pass (or state.database is mistyped)."""


class TokenNotTried(Exception):
    """Check would have to request a TE token, and was not asked to (``--token``)."""


class CachedTokenOnly(SharedAccess):
    """TE's budgets and token from a private copy, refusing to request a token."""

    def spend_token_request(self, now: float) -> float | None:
        raise TokenNotTried(
            "credentials not tried: no usable token is cached; use --token to request one "
            "(it spends one of TE's token requests of the hour)"
        )

    def take_token_lease(self, now: float, seconds: float) -> float | None:
        return None  # a private copy: nobody else requests a token through it


def run_checks(config: Config, clock: Clock, plan: CheckPlan = CheckPlan()) -> list[Finding]:
    findings = [
        *_routes(config),
        _check("state database", lambda: _state(config)),
        _store_finding(config, plan),
    ]
    if plan.offline:
        return findings
    http = probe_http(config.http, plan.probe_seconds)
    flexperto = FlexpertoClient(config.flexperto, http, clock, config.network)
    where = f"Flexperto at {_host(config.flexperto.base_url)}"
    try:
        findings.append(_check("flexperto listing", lambda: _listing(flexperto), where))
        if findings[-1].ok:
            findings.append(_check("flexperto records", lambda: _records(flexperto), where))
    finally:
        flexperto.close()
    try:
        db = _access_database(config, plan.token)
    except _db_errors() as exc:
        detail = f"{config.totalexpert.shared_budget}: {type(exc).__name__}: {exc}"
        return [*findings, Finding("totalexpert budget", FAIL, detail)]
    te = config.totalexpert
    kind = SharedAccess if plan.token else CachedTokenOnly
    access = kind(
        db,
        te.base_url,
        te.client_id,
        te.requests_per_minute,
        te.token_requests_per_hour,
        egress=te.egress,
    )
    client = TotalExpertClient(TotalExpertSession(te, http, access, clock, config.network))
    where = f"Total Expert at {_host(te.base_url)}"
    try:
        findings.extend(_totalexpert_findings(config, client, where))
        findings.extend(_remembered(config, db))
    finally:
        client.close()
        db.close()
    return findings


def _routes(config: Config) -> list[Finding]:
    """Which proxy (without its credentials) and which CAs each service is reached with."""
    services = [s for s in SERVICES if s != "s3" or config.storage.backend == "s3"]
    routes = [Finding(f"network {s}", OK, config.network.route(s).describe()) for s in services]
    if config.monitoring.healthcheck_url:
        routes.append(Finding("network healthcheck", OK, config.network.common_route().describe()))
    return routes


def probe_http(http: HttpConfig, seconds: float) -> HttpConfig:
    """The HTTP settings for a probe: no retry, and no request longer than ``seconds``."""
    return replace(
        http,
        retries=0,
        timeout_seconds=min(http.timeout_seconds, seconds),
        deadline_seconds=min(http.deadline_seconds, seconds),
    )


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _store_finding(config: Config, plan: CheckPlan) -> Finding:
    storage = config.storage
    if plan.offline:
        spool = LocalStore(storage.archive_dir)
        if storage.backend == "s3":
            return _check(
                "archive store",
                lambda: f"bucket {storage.bucket} not reached (offline); spool {spool.probe()}",
            )
        return _check("archive store", spool.probe)
    where = "S3" + (f" at {_host(storage.endpoint_url)}" if storage.endpoint_url else "")
    http = probe_http(config.http, plan.probe_seconds)
    return _check(
        "archive store",
        lambda: open_store(storage, http, config.network).probe(),
        where if storage.backend == "s3" else "",
    )


def _access_database(config: Config, token: bool) -> Database:
    """Where check finds TE's budgets and cached token: the budget file, else the state.
    A copy in memory (nothing written); with ``--token`` the file or database itself, when
    a pass has made it, so that the token requested serves the passes. Neither is ever
    made. A broken budget file raises; a broken state is left to the state finding."""
    budget = config.totalexpert.shared_budget_file
    if budget is not None:
        if not budget.is_file():
            return open_memory_database()
        timeout = config.state.busy_timeout_seconds
        return open_budget_database(budget, timeout) if token else memory_copy(budget, timeout)
    if not config.state.shared and not config.state.database.is_file():
        return open_memory_database()
    try:
        return open_existing_state(config.state) if token else private_copy(config.state)
    except _db_errors():
        return open_memory_database()


def _state_copy(config: Config) -> Database:
    path = config.state.database
    try:
        return memory_copy(path) if path.is_file() else open_memory_database()
    except _db_errors():
        return open_memory_database()


def _totalexpert_findings(config: Config, client: TotalExpertClient, where: str) -> list[Finding]:
    findings = [
        _check("totalexpert", lambda: _heartbeat(client), where),
        _check("totalexpert token", lambda: _token(client), where),
    ]
    if findings[-1].status != OK:
        return findings  # everything below needs a token
    type_id: list[int] = []
    findings.append(
        _check("insight type", lambda: _insight_type(client, config, type_id), where),
    )
    findings.append(_check("contacts changed since", lambda: _updated_since(client), where))
    if type_id:
        findings.append(_check("insight search", lambda: _insight_data(client, type_id[0]), where))
    return findings


def _check(name: str, probe: Callable[[], str], where: str = "") -> Finding:
    """Run one probe: its finding, a failure's detail led by the service and host."""
    try:
        return Finding(name, OK, probe())
    except Fallback as exc:
        return Finding(name, FALLBACK, str(exc))
    except StoreWarning as exc:
        return Finding(name, WARNING, str(exc))
    except TokenNotTried as exc:
        return Finding(name, SKIPPED, str(exc))
    except MissingState as exc:
        return Finding(name, MISSING, str(exc))
    except TokenBudgetExhausted as exc:
        next_at = iso_time(exc.next_allowed_at)
        detail = f"TE's token requests of the hour are spent: the next at {next_at}"
        return Finding(name, FAIL, _led_by(where, detail))
    except (
        ApiError,
        OSError,
        RecordError,
        *database_errors(),
        StoreError,
        StateFileError,
    ) as exc:
        plain = isinstance(exc, ApiError | StoreError | StateFileError)
        detail = str(exc) if plain else f"{type(exc).__name__}: {exc}"
        return Finding(name, FAIL, _led_by(where, detail))


def _led_by(where: str, detail: str) -> str:
    """``detail`` led by ``where`` (``Service at HOST``), unless it names the host already,
    as a connection error does."""
    host = where.rpartition(" at ")[2]
    return f"{where}: {detail}" if where and host not in detail else detail


def _state(config: Config) -> str:
    """The state opens read-only and is sound: SQLite finds every page of the file sound
    (``integrity_check`` reads them all: a damaged index or page that a cursory query would
    not notice); PostgreSQL's database is at this code's schema. None yet is a finding of
    its own, if a pass can make it."""
    if config.state.shared:
        return _state_database(config)
    path = config.state.database
    if not path.exists() and not path.is_symlink():
        place = describe_writable_dir(path.parent)
        raise MissingState(
            f"no state file at {path}: the first pass makes it ({place}); if passes have "
            "run, state.database is mistyped"
        )
    db = open_existing_read_only(path, config.state.busy_timeout_seconds)
    try:
        problems = [row[0] for row in db.execute("pragma integrity_check(5)").fetchall()]
    finally:
        db.close()
    if problems != ["ok"]:
        raise StateFileError(f"{path} fails SQLite's integrity check: " + "; ".join(problems))
    return f"{path} opens and passes SQLite's integrity check"


def _state_database(config: Config) -> str:
    try:
        db = open_state_read_only(config.state)
    except NoState as exc:
        raise MissingState(f"{exc}; the first pass makes it") from None
    try:
        place = state_place(config.state, db)
        archives = db.execute("select count(*) from archives").fetchone()[0]
    finally:
        db.close()
    return f"{place} opens read-only at this code's schema, {archives} archive(s) in the ledger"


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
    if client.session.token_usable_until() is None:
        client.session.fetch_token()
        detail = "new access token obtained"
    else:
        detail = "cached access token reused"
    until = client.session.token_usable_until()
    when = iso_time(until) if until else "?"
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


def _remembered(config: Config, access_db: Database) -> list[Finding]:
    """What passes have learnt and use now: in the state file, of which ``access_db`` is
    a copy unless TE's budgets are in a budget file."""
    if config.totalexpert.shared_budget_file is None:
        return _remembered_in(access_db)
    db = _state_copy(config)
    try:
        return _remembered_in(db)
    finally:
        db.close()


def _remembered_in(db: Database) -> list[Finding]:
    findings = []
    for name, decision in capabilities.everything(db).items():
        value = decision.value
        if name == capabilities.LISTING_FORM:
            form = ListingForm.from_text(value)
            value = form.summary() if form else value
        since = iso_time(decision.decided_at)
        findings.append(Finding("remembered", OK, f"{name}: {value} (since {since})"))
    return findings
