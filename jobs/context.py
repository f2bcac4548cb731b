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
    config: Config
    db: sqlite_utils.Database
    clock: Clock
    flexperto: FlexpertoClient
    totalexpert: TotalExpertClient
    store: ArchiveStore
    stats: PassStats
    stop_requested: Callable[[], bool] = lambda: False
    progress: Progress = field(default_factory=Progress)
