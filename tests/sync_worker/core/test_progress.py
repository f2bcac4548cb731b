"""The progress display: on a real pseudo-terminal, a bar per download with its rate and
ETA, every log line printed whole above the bars (read back from a terminal emulator's
screen), and Ctrl-C telling what it waits for; nothing drawn when not on a terminal."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import threading

import pyte
import pytest

from sync_worker.core import logs
from sync_worker.core.progress import Progress
from sync_worker.sandbox import Fault
from sync_worker.sandbox.worker_process import run_worker, worker_command
from sync_worker.state.db import open_database
from tests.conftest import write_config

COLUMNS, ROWS = 1000, 100  # wide: no log line wraps onto a second row
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
BAR = "━"  # what rich draws a bar with
ETA = re.compile(r"(\d+:\d\d:\d\d|-:--:--)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """The worker run on a pseudo-terminal of COLUMNS x ROWS, all it writes kept."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS)}
        env.pop("NO_COLOR", None)
        self.process = subprocess.Popen(
            worker_command(*args), stdin=slave, stdout=slave, stderr=slave, env=env
        )
        os.close(slave)
        self._master = master
        self.output = b""

    def read_until(self, text: str, times: int = 1, deadline: float = 60) -> None:
        """Read until ``text`` has been written ``times`` times (or the worker ends)."""
        while self.text().count(text) < times:
            if not self._read(deadline):
                raise AssertionError(f"{text!r} never came {times} times:\n{self.text()}")

    def finish(self, timeout: float = 60) -> int:
        while self._read(timeout):
            pass
        os.close(self._master)
        return self.process.wait(timeout)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self._master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EIO: the worker closed its end
            return False
        self.output += data
        return bool(data)

    def text(self) -> str:
        return ANSI.sub("", self.output.decode(errors="replace"))

    def screen(self) -> list[str]:
        """The terminal's rows as they stand at the end, as a person would see them."""
        screen = pyte.Screen(COLUMNS, ROWS)
        stream = pyte.ByteStream(screen)
        stream.feed(self.output)  # the pty has turned each newline into CR LF
        return [row.rstrip() for row in screen.display if row.strip()]


@pytest.mark.lenient_only
def test_bars_show_and_every_log_line_stays_whole_above_them(sandbox, tmp_path):
    config = write_config(tmp_path, sandbox)
    terminal = Terminal("--config", str(config), "run-once")
    assert terminal.finish() == 0, terminal.text()
    drawn = terminal.text()
    ids = [r["id"][:8] for r in sandbox.flexperto.records() if r["status"] == "ABANDONED"]
    assert ids
    bars = [line for line in re.split(r"[\r\n]", drawn) if BAR in line]
    assert any("archives" in line and ETA.search(line) for line in bars)
    for archive in ids:  # a bar of its own, with bytes, rate and ETA
        line = next(line for line in bars if archive in line)
        assert re.search(r"\d[\d.]* ?/[\d.]+ ?(bytes|kB|MB)", line) and ETA.search(line)
        assert re.search(r"(B/s|\?)", line)
    rows = terminal.screen()
    assert rows, drawn
    for row in rows:  # each log line begins its row and no bar is left over any of them
        assert TIMESTAMP.match(row) and BAR not in row, row
    events = [re.search(r"\] (\S+)", row).group(1) for row in rows]
    assert events[0] == "run.started" and events[-1] == "run.finished"
    assert events.count("archive.stored") == len(ids)
    finished = next(row for row in rows if "run.finished" in row)
    assert "te_rate_limited=" in finished  # the last field of the line: it ends intact


@pytest.mark.lenient_only
def test_json_logs_on_a_terminal_get_no_bars(sandbox, tmp_path):
    config = write_config(tmp_path, sandbox)
    terminal = Terminal("--config", str(config), "--log-format", "json", "run-once")
    assert terminal.finish() == 0, terminal.text()
    assert BAR not in terminal.text()
    assert all(row.startswith("{") for row in terminal.screen())


@pytest.mark.lenient_only
def test_nothing_is_drawn_when_not_on_a_terminal(sandbox, tmp_path):
    config = write_config(tmp_path, sandbox)
    done = run_worker("--config", str(config), "--log-format", "console", "run-once")
    assert done.returncode == 0, done.stderr
    assert BAR not in done.stderr + done.stdout and "\x1b[" not in done.stderr
    assert "run.finished" in done.stderr and done.stdout == ""


def held_download(sandbox):
    """Hold the first download at the storage host until released: (entered, release)."""
    entered, release = threading.Event(), threading.Event()

    def hold(_service):
        entered.set()
        release.wait(60)

    sandbox.add_fault("s3", Fault(method="GET", action="call", callback=hold, times=1))
    return entered, release


def patient_config(tmp_path, sandbox):
    """A config whose HTTP deadline outlasts the held download (no retry meanwhile)."""
    path = write_config(tmp_path, sandbox)
    text = path.read_text()
    assert "timeout_seconds = 5\n" in text
    path.write_text(text.replace("timeout_seconds = 5\n", "timeout_seconds = 120\n"))
    return path


def stored(config_path, sandbox) -> int:
    db = open_database(config_path.parent / "state.db")
    try:
        return db.execute("select count(*) from archives where state = 'claimed'").fetchone()[0]
    finally:
        db.close()


@pytest.mark.lenient_only
def test_ctrl_c_says_what_it_waits_for_and_finishes_the_download_in_hand(sandbox, tmp_path):
    entered, release = held_download(sandbox)
    config = patient_config(tmp_path, sandbox)
    terminal = Terminal("--config", str(config), "run-once")
    try:
        assert entered.wait(60)
        terminal.read_until("archive.claimed", times=2)  # the others are done: one in hand
        terminal.process.send_signal(signal.SIGINT)
        terminal.read_until("Ctrl-C again to stop now")
    finally:
        release.set()
    assert terminal.finish() == 130, terminal.text()
    assert re.search(r"Finishing [123] archive\(s\) in hand", terminal.text())
    assert stored(config, sandbox) == 3  # the one in hand was finished


@pytest.mark.lenient_only
def test_a_second_ctrl_c_stops_the_download_in_hand_now(sandbox, tmp_path):
    entered, release = held_download(sandbox)
    config = patient_config(tmp_path, sandbox)
    terminal = Terminal("--config", str(config), "run-once")
    try:
        assert entered.wait(60)
        terminal.read_until("archive.claimed", times=2)
        terminal.process.send_signal(signal.SIGINT)
        terminal.read_until("Ctrl-C again to stop now")
        terminal.process.send_signal(signal.SIGINT)
        terminal.read_until("run.stopping_now")
    finally:
        release.set()  # its first chunk is where it stops
    assert terminal.finish() == 130, terminal.text()
    assert stored(config, sandbox) == 2
    assert "Traceback" not in terminal.text()


def test_a_non_terminal_draws_nothing_but_counts_and_stops_downloads():
    progress = Progress(io.StringIO())
    assert not progress.enabled
    progress.start_pass(2)
    chunks = progress.track(iter([b"ab", b"cd", b"ef"]), "a1", 6)
    assert next(chunks) == b"ab" and progress.in_hand == 1
    progress.stop_now()
    with pytest.raises(KeyboardInterrupt):
        next(chunks)
    assert progress.in_hand == 0
    progress.finish()


def test_log_lines_handed_above_come_whole_without_their_newline():
    stream = io.StringIO()
    logs.configure("console", "info", stream)
    above: list[str] = []
    output = logs.output()
    output.print_above(above.append)
    print("one line", file=output, flush=True)  # as structlog writes: text, then newline
    output.write("two\nthree")
    output.write(" parts\n")
    output.print_above(None)
    output.write("back\n")
    assert above == ["one line", "two", "three parts"]
    assert stream.getvalue() == "back\n"


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_one_display_at_a_time_on_the_terminal():
    logs.configure("console", "info", Tty())
    first, second = Progress(Tty()), Progress(Tty())
    first.start_pass(1)
    second.start_pass(1)  # another tenant's pass, side by side: it draws nothing
    assert list(second.track(iter([b"ab"]), "b1", 2)) == [b"ab"]
    second.finish()
    first.finish()
    assert second._stream.getvalue() == "" and "archives" in first._stream.getvalue()
    second.start_pass(1)  # the terminal is free again
    second.finish()
    assert "archives" in second._stream.getvalue()
