"""The worker as a process of its own, run the way operators run it: for the tests, the crash
tool and the benchmark, which drive it against the sandbox. One place builds its command
line. Its data goes to stdout, its log to stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def worker_command(*args: str, config: Path | None = None) -> list[str]:
    """``sync-worker [--config CONFIG] ARGS...`` as run by this interpreter."""
    options = ["--config", str(config)] if config is not None else []
    return [sys.executable, "-m", "sync_worker", *options, *args]


def run_worker(
    *args: str, config: Path | None = None, timeout: float = 120, **options: Any
) -> subprocess.CompletedProcess[str]:
    """Run the worker to its end; its stdout (data) and stderr (the log) are kept as text."""
    return subprocess.run(
        worker_command(*args, config=config),
        capture_output=True,
        text=True,
        timeout=timeout,
        **options,
    )


def start_worker(*args: str, config: Path | None = None, **options: Any) -> subprocess.Popen[str]:
    """Start the worker; its stdout (data) and stderr (the log) are pipes of text unless
    ``options`` say otherwise."""
    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.Popen(worker_command(*args, config=config), text=True, **{**pipes, **options})


def log_events(output: str) -> list[dict[str, Any]]:
    """The JSON log events in some output (other lines are skipped)."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]
