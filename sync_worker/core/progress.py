"""The downloads in hand, and their display for people at a terminal (rich): the pass's
archives and a bar per download with its rate and ETA; log lines are printed above the
bars, never over them. Nothing is drawn when stderr is not a terminal or the log is JSON
lines; the downloads are counted, and can be stopped at their next chunk, all the same."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as Bars
from rich.text import Text

from sync_worker.core import logs

PASS = "pass"  # the field that marks the pass's own line among the downloads
REDRAWS_PER_SECOND = 10
# One display on the terminal at a time: with several tenants side by side, the first
# pass to start draws, and the others draw nothing.
_terminal = threading.Lock()


class Progress:
    """The display of one pass: started by :meth:`start_pass`, ended by :meth:`finish`.

    Every drawing (a bar added, a log line printed above, a refresh) happens under one lock,
    in the thread that causes it: rich's own refresh thread is off, as its redraws raced
    the lines printed from the download threads and left stale bars on the screen."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        output = logs.output()
        self.enabled = self._stream.isatty() and (output is None or output.for_people)
        self._lock = threading.RLock()
        self._bars: Bars | None = None
        self._pass: TaskID | None = None
        self._drawn_at = 0.0
        self._in_hand = 0
        self._halt = threading.Event()

    def start_pass(self, total: int) -> None:
        """Show the pass's ``total`` archives to store, and take the log's lines above."""
        if not self.enabled or total == 0 or not _terminal.acquire(blocking=False):
            return
        bars = Bars(
            TextColumn("{task.description}"),
            BarColumn(),
            _Amount(),
            _Rate(),
            TimeRemainingColumn(),
            console=Console(file=self._stream),
            auto_refresh=False,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        with self._lock:
            self._bars = bars
            self._pass = bars.add_task("archives", total=total, **{PASS: True})
            output = logs.output()
            if output is not None and output.stream.isatty():  # the same terminal, as a rule
                output.print_above(self._print_above)
            bars.start()

    def item_done(self) -> None:
        with self._lock:
            if self._bars is not None and self._pass is not None:
                self._bars.advance(self._pass)
                self._bars.refresh()

    @property
    def in_hand(self) -> int:
        """Downloads under way."""
        with self._lock:
            return self._in_hand

    def track(self, chunks: Iterable[bytes], label: str, size: int | None) -> Iterator[bytes]:
        """Pass ``chunks`` through, with a bar of how much of ``size`` bytes has gone by;
        after :meth:`stop_now`, raise KeyboardInterrupt before the next chunk, as Ctrl-C
        does to a download in the main thread (its partial file resumes on a later pass)."""
        with self._lock:
            self._in_hand += 1
            bars = self._bars
            task = bars.add_task(label, total=size or None) if bars is not None else None
        try:
            for chunk in chunks:
                if self._halt.is_set():
                    raise KeyboardInterrupt
                if bars is not None and task is not None:
                    self._advance(bars, task, len(chunk))
                yield chunk
        finally:
            with self._lock:
                self._in_hand -= 1
                if bars is not None and task is not None:
                    bars.remove_task(task)
                    bars.refresh()

    def stopping(self, in_hand: int) -> None:
        """After a first Ctrl-C: say that the pass waits for the ``in_hand`` archives, and
        how to stop now."""
        message = (
            f"Finishing {in_hand} archive(s) in hand, then stopping; Ctrl-C again to stop "
            "now (a download cut short resumes on the next pass)"
        )
        with self._lock:
            if self._bars is not None:
                self._bars.console.print(Text(message, style="bold yellow"), soft_wrap=True)

    def stop_now(self) -> None:
        """A second Ctrl-C: every download in hand stops at its next chunk."""
        self._halt.set()

    def finish(self) -> None:
        """Take the bars away and give the log its stream back."""
        with self._lock:
            if self._bars is None:
                return
            self._bars.stop()
            output = logs.output()
            if output is not None:
                output.print_above(None)
            self._bars = self._pass = None
            _terminal.release()

    def _advance(self, bars: Bars, task: TaskID, size: int) -> None:
        """Count a chunk; redraw at most REDRAWS_PER_SECOND times (rate and ETA with it)."""
        with self._lock:
            bars.advance(task, size)
            now = time.monotonic()
            if self._bars is bars and now - self._drawn_at >= 1 / REDRAWS_PER_SECOND:
                self._drawn_at = now
                bars.refresh()

    def _print_above(self, line: str) -> None:
        with self._lock:
            if self._bars is None:
                print(line, file=self._stream, flush=True)
            else:
                self._bars.console.print(Text.from_ansi(line), soft_wrap=True)


class _Amount(DownloadColumn):
    """Bytes for a download, archives for the pass."""

    def render(self, task: Task) -> Text:
        if task.fields.get(PASS):
            return Text(f"{task.completed:.0f}/{task.total:.0f}", style="progress.download")
        return super().render(task)


class _Rate(TransferSpeedColumn):
    """The rate of a download; nothing for the pass."""

    def render(self, task: Task) -> Text:
        return Text("") if task.fields.get(PASS) else super().render(task)
