"""What a job needs to do its work, handed in by the runner."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlite_utils

from sync_worker.archive_store import ArchiveStore
from sync_worker.clock import Clock
from sync_worker.config import Config
from sync_worker.flexperto import FlexpertoClient
from sync_worker.progress import Progress
from sync_worker.totalexpert import TotalExpertClient


@dataclass
class PassStats:
    """Outcome counts of one pass, safe to update from worker threads."""

    counts: Counter[str] = field(default_factory=Counter)
    bytes_downloaded: int = 0
    te_requests: int = 0
    te_tokens_requested: int = 0
    network_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: str, count: int = 1) -> None:
        with self._lock:
            self.counts[outcome] += count

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes_downloaded += count

    @property
    def failures(self) -> int:
        return self.counts["failed"] + self.counts["given_up"]


@dataclass
class JobContext:
    """What a job works with.

    The archive job downloads in several threads, each with a copy of this context whose
    ``db`` is a connection of its own (a SQLite connection runs one transaction at a time).
    The copies share the rest, which is safe for that use: ``config`` is frozen, ``clock``
    and ``stats`` and ``progress`` lock what they change, ``store`` keeps no state but its
    folder, and ``flexperto`` is only asked for downloads (its sessions' connection pools
    are thread-safe, and nothing on them changes after set-up). ``totalexpert`` keeps its
    budgets in the main thread's connection: never call it from a download thread.
    """

    config: Config
    db: sqlite_utils.Database
    clock: Clock
    flexperto: FlexpertoClient
    totalexpert: TotalExpertClient
    store: ArchiveStore
    stats: PassStats
    stop_requested: Callable[[], bool] = lambda: False
    progress: Progress = field(default_factory=Progress)
