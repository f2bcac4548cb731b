"""Data on stdout, the log on stderr, for every command; a closed stdout ends a command
quietly; on the journal each log line carries its syslog priority. Real processes against
the sandbox."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync_worker.app.cli import build_parser
from sync_worker.sandbox import LENIENT, Fault, Sandbox
from sync_worker.sandbox.worker_process import (
    log_events,
    run_worker,
    start_worker,
    worker_command,
)
from tests.conftest import write_config

EXIT_CLOSED_PIPE = 141
# A log line as the console renderer writes it: an ISO time, then the level in brackets.
CONSOLE_LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}T\S+\s+\[")
# A valid invocation of each command against the sandbox's config ({dir}: a fresh folder),
# and its exit code when its stdout is closed before it starts: 141 for a command that
# writes data there. A new command fails the tests below until it is given one here.
INVOCATIONS: dict[str, list[tuple[tuple[str, ...], int]]] = {
    "run-once": [(("run-once",), 0)],
    "run": [(("run",), 0)],
    "status": [(("status",), EXIT_CLOSED_PIPE), (("status", "--json"), EXIT_CLOSED_PIPE)],
    "sandbox": [(("sandbox", "--dir", "{dir}"), EXIT_CLOSED_PIPE)],
    "demo": [(("demo", "--dir", "{dir}"), EXIT_CLOSED_PIPE)],
    "check": [(("check",), EXIT_CLOSED_PIPE)],
    "audit": [(("audit", "--all"), 0)],
    "export": [
        (("export", "--format", "csv"), EXIT_CLOSED_PIPE),
        (("export", "--format", "jsonl"), EXIT_CLOSED_PIPE),
    ],
    "retry": [(("retry", "--all-failed"), EXIT_CLOSED_PIPE)],
    "init-config": [(("init-config", "{dir}/new.toml"), EXIT_CLOSED_PIPE)],
    "history": [(("history",), EXIT_CLOSED_PIPE), (("history", "--json"), EXIT_CLOSED_PIPE)],
    "config": [(("config", "show"), EXIT_CLOSED_PIPE), (("config", "validate"), EXIT_CLOSED_PIPE)],
    "completion": [(("completion", "bash"), EXIT_CLOSED_PIPE)],
    "man": [(("man",), EXIT_CLOSED_PIPE)],
    # into a new database, from the sandbox's state file ({state}): see command_config
    "migrate-state": [(("migrate-state", "--from", "{state}"), EXIT_CLOSED_PIPE)],
}
# Commands that log nothing when all is well.
SILENT = frozenset(
    {"status", "export", "retry", "init-config", "check", "sandbox", "history", "config"}
    | {"completion", "man", "migrate-state"}
)
LOG_OPTIONS = ("--log-format", "json", "--log-level", "debug")
WATCHDOG_SECONDS = 120
PRIORITIES = {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>"}


def subcommands() -> list[str]:
    """Every subcommand of the parser."""
    [commands] = [a for a in build_parser()._actions if a.dest == "command"]
    return sorted(commands.choices)


def cases() -> Iterator[tuple[str, tuple[str, ...], int]]:
    """(command, arguments, exit code with stdout closed) for every subcommand; one left
    out of INVOCATIONS is run bare and expected to exit -1, so that it fails."""
    for command in subcommands():
        for args, closed_exit in INVOCATIONS.get(command, [((command,), -1)]):
            yield command, args, closed_exit


CASES = [pytest.param(*case, id=" ".join(case[1])) for case in cases()]


@pytest.fixture(scope="module")
def worked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A config pointing at a sandbox, after one pass (so there is state to show)."""
    folder = tmp_path_factory.mktemp("output")
    with Sandbox(folder / "sandbox", dialect=LENIENT, te_token_requests_per_hour=100) as sandbox:
        config = write_config(folder, sandbox)
        done = run_worker("run-once", config=config)
        assert done.returncode == 0, done.stderr[-2000:]
        yield config


@pytest.fixture
def command_config(command: str, worked: Path, tmp_path: Path, request) -> Path:
    """The config a case runs with: the sandbox's; for ``migrate-state``, the same with
    its state in a new database of the session's PostgreSQL cluster (and, as that wants,
    a bucket: the command does not reach it)."""
    if command != "migrate-state":
        return worked
    dsn = request.getfixturevalue("postgres_cluster").new_database()
    text = worked.read_text().replace(
        "[state]\n", f'[state]\nbackend = "postgresql"\ndsn = {json.dumps(dsn)}\n'
    )
    text = text.replace("[storage]\n", '[storage]\nbackend = "s3"\nbucket = "unused"\n')
    path = tmp_path / "postgresql.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def invocation(args: tuple[str, ...], tmp_path: Path, worked: Path) -> list[str]:
    """The command line of a case, logging everything as JSON."""
    places = {"dir": tmp_path / "fresh", "state": worked.parent / "state.db"}
    return [*LOG_OPTIONS, *(arg.format(**places) for arg in args)]


def run_command(command: str, args: list[str], config: Path, **options) -> tuple[str, str, int]:
    """Run one invocation to its end, stopping a long-running command (``run``,
    ``sandbox``) once it is at work; its stdout, stderr and exit code."""
    process = start_worker(*args, config=config, **options)
    watchdog = threading.Timer(WATCHDOG_SECONDS, process.kill)  # never hang the suite
    watchdog.start()
    try:
        if command == "run":
            seen = _read_until(process.stderr, '"event": "run.finished"')
            process.send_signal(signal.SIGTERM)
        elif command == "sandbox" and process.stdout is not None:
            seen = _read_until(process.stdout, "database")
            process.send_signal(signal.SIGTERM)
        else:
            seen = ""
        out, err = process.communicate()
    finally:
        watchdog.cancel()
    if command == "run":
        return out or "", seen + err, process.returncode
    return seen + (out or ""), err, process.returncode


def _read_until(stream, marker: str) -> str:
    lines = []
    for line in stream:
        lines.append(line)
        if marker in line:
            break
    return "".join(lines)


def is_log_line(line: str) -> bool:
    """A JSON log event or a console log line."""
    if CONSOLE_LOG_LINE.match(line):
        return True
    try:
        parsed = json.loads(line)
    except ValueError:
        return False
    return isinstance(parsed, dict) and {"event", "level", "timestamp"} <= parsed.keys()


def test_every_command_has_an_invocation():
    assert sorted(INVOCATIONS) == subcommands()


@pytest.mark.parametrize(("command", "args", "_closed_exit"), CASES)
def test_no_log_line_on_stdout(command, args, _closed_exit, worked, command_config, tmp_path):
    out, err, code = run_command(command, invocation(args, tmp_path, worked), command_config)
    assert "Traceback" not in err
    assert code == 0, err[-2000:]
    assert [line for line in out.splitlines() if is_log_line(line)] == []
    if command not in SILENT:
        assert log_events(err), "the log goes to stderr"


@pytest.mark.parametrize(("command", "args", "closed_exit"), CASES)
def test_a_closed_stdout_ends_the_command_quietly(
    command, args, closed_exit, worked, command_config, tmp_path
):
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write fails with EPIPE
    try:
        _out, err, code = run_command(
            command, invocation(args, tmp_path, worked), command_config, stdout=writer
        )
    finally:
        os.close(writer)
    assert "Traceback" not in err
    assert "Exception ignored" not in err
    assert not any("failed" in line for line in err.splitlines() if not is_log_line(line))
    assert "command.failed" not in err
    assert code == closed_exit, err[-2000:]


@pytest.mark.parametrize(("command", "args", "_closed_exit"), CASES)
def test_no_stdout_at_all_is_no_traceback(
    command, args, _closed_exit, worked, command_config, tmp_path
):
    """stdout closed before the worker starts (``>&-``): Python has no sys.stdout."""
    if command == "sandbox":
        pytest.skip("it serves until stopped, and prints nothing that could tell when")
    _out, err, _code = run_command(
        command,
        invocation(args, tmp_path, worked),
        command_config,
        stdout=None,
        preexec_fn=lambda: os.close(1),
    )
    assert "Traceback" not in err


def journal_run(
    tmp_path: Path,
    config: Path,
    journal_stream: str | None,
    command: tuple[str, ...] = ("run-once",),
    exit_code: int = 1,
) -> list[str]:
    """The stderr lines of ``command`` (a pass whose listing fails), written to a real file,
    with ``JOURNAL_STREAM`` as given (``{}`` stands for the file's device and inode)."""
    stderr_file = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with stderr_file.open("w") as stderr:
        if journal_stream is not None:
            stat = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = journal_stream.format(f"{stat.st_dev}:{stat.st_ino}")
        done = subprocess.run(
            worker_command(*LOG_OPTIONS, *command, config=config),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            timeout=120,
        )
    assert done.returncode == exit_code
    return stderr_file.read_text().splitlines()


@pytest.fixture
def failing_listing(sandbox_in, tmp_path) -> Path:
    sandbox, _config = sandbox_in(LENIENT)
    sandbox.add_fault("flexperto", Fault(status=403, times=None))
    return tmp_path / "config.toml"  # where sandbox_in wrote it


def test_on_the_journal_each_log_line_carries_its_priority(tmp_path, failing_listing):
    lines = journal_run(tmp_path, failing_listing, "{}")
    assert {line[:3] for line in lines} >= {"<6>", "<3>"}, lines
    for line in lines:
        event = json.loads(line[3:])
        assert line[:3] == PRIORITIES[event["level"]]


def test_on_the_journal_a_commands_one_line_error_is_an_error_too(tmp_path, failing_listing):
    missing = ("--tenant", "nobody", "status")  # a configuration error: no such tenant
    [line] = journal_run(tmp_path, failing_listing, "{}", missing, exit_code=2)
    assert line.startswith("<3>sync-worker: configuration error:"), line
    [line] = journal_run(tmp_path, failing_listing, None, missing, exit_code=2)
    assert line.startswith("sync-worker: configuration error:"), line


@pytest.mark.parametrize("journal_stream", [None, "1:2", "{}9"])
def test_off_the_journal_no_line_has_a_priority(tmp_path, failing_listing, journal_stream):
    lines = journal_run(tmp_path, failing_listing, journal_stream)
    assert lines and all(line.startswith("{") for line in lines)
