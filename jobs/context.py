"""What a job needs to do its work, handed in by the runner."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from sync_worker.adapters.flexperto.client import FlexpertoClient
from sync_worker.adapters.stores import Store
from sync_worker.adapters.totalexpert import TotalExpertClient
from sync_worker.config import Config
from sync_worker.core.clock import Clock
from sync_worker.core.progress import Progress
from sync_worker.state.db import Database


class Outcome(StrEnum):
    """What happened to an item in a pass; counted in ``run.finished``'s ``outcomes``."""

    LISTED = "listed"
    REJECTED = "rejected"
    WAITING = "waiting"  # backing off after a failure
    STORED = "stored"
    HASH_MISMATCH = "hash_mismatch"
    ABANDONED = "abandoned"
    FOUND_ABANDONED = "found_abandoned"  # claimed by another worker or a run before
    DEFERRED = "deferred"
    MATCHED = "matched"
    NO_MATCH = "no_match"
    SENT = "sent"
    AUDITED = "audited"
    AUDIT_MISMATCH = "audit_mismatch"
    AUDIT_MISSING = "audit_missing"
    AUDIT_UNEXPECTED = "audit_unexpected"
    FAILED = "failed"
    GIVEN_UP = "given_up"


# What makes a pass end with exit code 1: something failed, or an audit found a problem.
PROBLEMS = (
    Outcome.FAILED,
    Outcome.GIVEN_UP,
    Outcome.AUDIT_MISMATCH,
    Outcome.AUDIT_MISSING,
    Outcome.AUDIT_UNEXPECTED,
)


@dataclass(frozen=True)
class AuditPlan:
    """What an audit reads: every archive (and the store's files the ledger does not
    know), the ``sample`` least recently audited, or (neither) the share due this run."""

    everything: bool = False
    sample: int | None = None
    max_bytes_per_second: float | None = None  # None: the configured cap


@dataclass
class PassStats:
    """Outcome counts of one pass, safe to update from worker threads."""

    counts: Counter[Outcome] = field(default_factory=Counter)
    bytes_downloaded: int = 0
    bytes_stored: int = 0  # the size of the archives stored
    te_requests: int = 0
    te_tokens_requested: int = 0
    te_rate_limited: int = 0  # 429 answers
    te_token_budget_exhausted: int = 0  # times the insight job found no token request left
    network_seconds: float = 0.0
    job_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # what each job did
    job_errors: dict[str, str] = field(default_factory=dict)  # why a job (or "pass") stopped
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: Outcome, count: int = 1) -> None:
        with self._lock:
            self.counts[outcome] += count

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes_downloaded += count

    def add_stored(self, size: int) -> None:
        """One archive of ``size`` bytes stored."""
        with self._lock:
            self.counts[Outcome.STORED] += 1
            self.bytes_stored += size

    def snapshot(self) -> Counter[Outcome]:
        with self._lock:
            return Counter(self.counts)

    def counts_since(self, before: Counter[Outcome]) -> dict[str, int]:
        """The outcomes counted since ``before`` (a :meth:`snapshot`)."""
        with self._lock:
            grown = self.counts - before
        return {str(outcome): n for outcome, n in sorted(grown.items())}

    @property
    def failures(self) -> int:
        return sum(self.counts[outcome] for outcome in PROBLEMS)


@dataclass
class JobContext:
    """What a job works with.

    The archive job downloads in several threads, each with a copy of this context whose
    ``db`` is a connection of its own (a SQLite connection runs one transaction at a time).
    The copies share the rest, which is safe for that use: ``config`` is frozen, ``clock``
    and ``stats`` and ``progress`` lock what they change, ``store`` keeps no state but its
    folder (and a boto3 client, which is thread-safe), and ``flexperto`` is only asked for
    downloads (its sessions' connection pools are thread-safe, and nothing on them changes
    after set-up). ``totalexpert`` keeps its budgets in the main thread's connection: never
    call it from a download thread.
    """

    config: Config
    db: Database
    clock: Clock
    flexperto: FlexpertoClient
    totalexpert: TotalExpertClient
    store: Store
    stats: PassStats
    stop_requested: Callable[[], bool] = lambda: False
    progress: Progress = field(default_factory=Progress)
    audit_plan: AuditPlan = field(default_factory=AuditPlan)
