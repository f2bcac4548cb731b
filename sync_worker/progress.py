"""Progress display for people at a terminal; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TextIO

BAR_WIDTH = 24


class Progress:
    """A one-line display of the pass and the download in hand, redrawn in place."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self.enabled = self._stream.isatty()
        self._lock = threading.Lock()
        self._done = 0
        self._total = 0

    def start_pass(self, total: int) -> None:
        self._done, self._total = 0, total
        self._draw("")

    def item_done(self) -> None:
        with self._lock:
            self._done += 1
        self._draw("")

    def track(self, chunks: Iterable[bytes], label: str, size: int | None) -> Iterator[bytes]:
        """Pass ``chunks`` through, showing how much of ``size`` bytes has gone by."""
        seen = 0
        for chunk in chunks:
            seen += len(chunk)
            self._draw(f"{label} {_bar(seen, size)} {seen / 1_048_576:,.1f} MiB")
            yield chunk

    def finish(self) -> None:
        if self.enabled:
            with self._lock:
                self._stream.write("\r\033[K")
                self._stream.flush()

    def _draw(self, detail: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            line = f"archives {self._done}/{self._total} {detail}"
            self._stream.write("\r\033[K" + line[:120])
            self._stream.flush()


def _bar(seen: int, size: int | None) -> str:
    if not size:
        return ""
    filled = min(BAR_WIDTH, BAR_WIDTH * seen // size)
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + f"] {100 * seen // size:3d}%"
