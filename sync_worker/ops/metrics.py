"""Prometheus metrics, read from the state files at each scrape, so that the daemon (an
HTTP endpoint) and a timer or cron run (a node_exporter textfile) show the same numbers.

Counters come from state.run_history's running totals, which every process adds to. Each
tenant's numbers carry its name in the ``tenant`` label (empty for a file without tenants).
A tenant whose state cannot be read is logged and left out of that scrape; the rest still
shows.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sync_worker.config import REMOTE_METRICS, Config, parse_listen
from sync_worker.core.clock import Clock
from sync_worker.core.logs import exception_fields
from sync_worker.state import held_records, insight_blocks, reports, run_history
from sync_worker.state.configured import open_state_read_only, state_exists
from sync_worker.state.db import NoState, StateFileError, database_errors, has_table, open_read_only
from sync_worker.state.lifecycles import ARCHIVE_SAFE, ARCHIVE_UNSTORED, GIVEN_UP, TABLES, sql_list
from sync_worker.state.te_access import SharedAccess

PREFIX = "sync_worker_"
# running total in state.run_history -> (metric name, help)
TOTALS = {
    "te_requests": ("te_requests", "Requests sent to Total Expert"),
    "te_rate_limited": ("te_rate_limited", "HTTP 429 answers from Total Expert"),
    "te_tokens_requested": ("te_token_requests", "Access tokens requested from Total Expert"),
    "te_token_budget_exhausted": (
        "te_token_budget_exhausted",
        "Insight passes that found no token request left in the hour",
    ),
    "bytes_downloaded": ("downloaded_bytes", "Archive bytes downloaded from Flexperto"),
}

log = structlog.get_logger()


class StateCollector(Collector):
    """Every metric of every tenant, read when Prometheus asks."""

    def __init__(self, configs: Sequence[Config], clock: Clock) -> None:
        self._configs = list(configs)
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        found = families()
        for config in self._configs:
            if not state_exists(config.state):
                continue  # nothing has run yet
            try:
                _collect_tenant(config, self._clock.now(), found)
            except NoState:
                continue  # nothing has run yet
            except (*database_errors(), StateFileError, OSError) as exc:
                fields = {**config.log_fields(), **exception_fields(exc)}
                log.warning("metrics.unreadable", **fields)
        yield from found.values()


def registry_for(configs: Sequence[Config], clock: Clock) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(configs, clock))
    return registry


def serve(listen: str, registry: CollectorRegistry, allow_remote: bool = False) -> Any:
    """Serve ``/metrics`` at ``listen`` (HOST:PORT, loopback unless ``allow_remote``) in a
    thread; returns the server, whose ``shutdown()`` stops it."""
    host, port = parse_listen(listen, "metrics.listen", REMOTE_METRICS, allow_remote)
    server, _thread = start_http_server(port, host, registry)
    log.info("metrics.serving", listen=listen, remote=allow_remote)
    return server


def write_textfile(path: Path, registry: CollectorRegistry) -> None:
    """Write the metrics for node_exporter's textfile collector: a temporary file in the
    same folder, readable by node_exporter (0644: the service's umask would hide it),
    fsynced, then renamed over ``path``, so that a reader never sees half of it. A failure
    is logged; it never fails the pass."""
    try:
        text = generate_latest(registry)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except Exception as exc:
        log.warning("metrics.textfile_failed", path=str(path), **exception_fields(exc))


def families() -> dict[str, Metric]:
    """Every metric, empty: to be filled per tenant."""
    gauges = {
        "archives": ("Archives known, by state", ["state"]),
        "insights": ("Insights (and participants without one), by state", ["state"]),
        "stored_bytes": ("Bytes of verified archives in the store", []),
        "given_up_items": ("Items parked after too many failures, by kind", ["kind"]),
        "held_records": (
            "Listed records held back, holding back their conference's abandon, by kind",
            ["kind"],
        ),
        "oldest_unstored_archive_age_seconds": (
            "Age of the oldest archive listed but not yet stored (0: none)",
            [],
        ),
        "last_run_timestamp_seconds": ("When the job last finished a run", ["sync_job"]),
        "last_run_duration_seconds": ("How long the job's last run took", ["sync_job"]),
        "last_success_timestamp_seconds": ("When a run of the job last succeeded", ["sync_job"]),
        "insights_blocked": (
            "1 while insights cannot reach Total Expert for this reason (credentials, "
            "insight_type, token_budget), else 0",
            ["reason"],
        ),
        "insights_blocked_since_timestamp_seconds": (
            "Since when insights have been blocked (only while they are)",
            [],
        ),
        "te_requests_left": ("Total Expert requests left in the current minute", []),
        "te_token_requests_left": ("Total Expert token requests left in the current hour", []),
        "te_token_expiry_timestamp_seconds": ("When the cached Total Expert token expires", []),
    }
    counters = {
        "runs": ("Runs of the job", ["sync_job"]),
        "failed_runs": ("Runs of the job that ended with a failure", ["sync_job"]),
        **{name: (text, []) for name, text in TOTALS.values()},
    }
    families: dict[str, Metric] = {
        name: GaugeMetricFamily(PREFIX + name, text, labels=["tenant", *labels])
        for name, (text, labels) in gauges.items()
    }
    families.update(
        {
            name: CounterMetricFamily(PREFIX + name, text, labels=["tenant", *labels])
            for name, (text, labels) in counters.items()
        }
    )
    return families


def _collect_tenant(config: Config, now: float, families: dict[str, Metric]) -> None:
    tenant = config.tenant
    db = open_state_read_only(config.state)
    try:
        counts = reports.counts(db)
        for state, count in sorted(counts["archives"].items()):
            families["archives"].add_metric([tenant, state], count)
        for state, count in sorted(counts["insights"].items()):
            families["insights"].add_metric([tenant, state], count)
        families["stored_bytes"].add_metric([tenant], _stored_bytes(db))
        for kind, count in _given_up(db).items():
            families["given_up_items"].add_metric([tenant, kind], count)
        held = held_records.counts(db) if has_table(db, "held_records") else {}
        for kind in held_records.KINDS:
            families["held_records"].add_metric([tenant, kind], held.get(kind, 0))
        oldest = _oldest_unstored(db)
        families["oldest_unstored_archive_age_seconds"].add_metric(
            [tenant], max(now - oldest, 0.0) if oldest is not None else 0.0
        )
        _add_runs(db, tenant, families)
        _add_block(db, tenant, families)
        totals = run_history.totals(db)
        for key, (name, _text) in TOTALS.items():
            families[name].add_metric([tenant], totals.get(key, 0))
        _add_budget(config, db, now, families)
    finally:
        db.close()


def _add_runs(db: Any, tenant: str, families: dict[str, Metric]) -> None:
    for run in run_history.job_runs(db):
        labels = [tenant, run["job"]]
        families["last_run_timestamp_seconds"].add_metric(labels, run["last_finished_at"])
        families["last_run_duration_seconds"].add_metric(labels, run["last_duration"])
        if run["last_ok_at"] is not None:
            families["last_success_timestamp_seconds"].add_metric(labels, run["last_ok_at"])
        families["runs"].add_metric(labels, run["runs"])
        families["failed_runs"].add_metric(labels, run["failed_runs"])


def _add_block(db: Any, tenant: str, families: dict[str, Metric]) -> None:
    """What blocks insights (state.insight_blocks): 0 or 1 per reason, and since when."""
    block = insight_blocks.current(db)
    for kind in insight_blocks.KINDS:
        blocked = block is not None and block.kind == kind
        families["insights_blocked"].add_metric([tenant, kind], int(blocked))
    if block is not None:
        families["insights_blocked_since_timestamp_seconds"].add_metric([tenant], block.since)


def _add_budget(config: Config, state_db: Any, now: float, families: dict[str, Metric]) -> None:
    """What is left of TE's budgets, where this tenant keeps them (state or shared file)."""
    budget_file = config.totalexpert.shared_budget_file
    if budget_file is not None and not budget_file.exists():
        return
    db = state_db if budget_file is None else open_read_only(budget_file)
    try:
        access = SharedAccess(
            db,
            config.totalexpert.base_url,
            config.totalexpert.client_id,
            config.totalexpert.requests_per_minute,
            config.totalexpert.token_requests_per_hour,
            egress=config.totalexpert.egress,
        )
        families["te_requests_left"].add_metric([config.tenant], access.requests_left(now))
        families["te_token_requests_left"].add_metric(
            [config.tenant], access.token_requests_left(now)
        )
        expiry = access.token_expiry()
        if expiry is not None:
            families["te_token_expiry_timestamp_seconds"].add_metric([config.tenant], expiry)
    finally:
        if db is not state_db:
            db.close()


def _stored_bytes(db: Any) -> int:
    """The bytes stored (an int: PostgreSQL's sum of bigints is a numeric)."""
    return int(
        db.execute(
            f"select coalesce(sum(size), 0) from archives where state in {sql_list(ARCHIVE_SAFE)}"
        ).fetchone()[0]
    )


def _given_up(db: Any) -> dict[str, int]:
    return {
        table: db.execute(f"select count(*) from {table} where state = ?", [GIVEN_UP]).fetchone()[0]
        for table in TABLES.values()
    }


def _oldest_unstored(db: Any) -> float | None:
    return db.execute(
        f"select min(first_seen_at) from archives where state in {sql_list(ARCHIVE_UNSTORED)}"
    ).fetchone()[0]
