"""The ``sync-worker`` command line.

Exit codes: 0 all done, 1 some item failed and will be retried (or a command failed), 2
configuration or usage error, 130 interrupted, 141 stdout closed by its reader (see
closed_stdout). Data goes to stdout, every log line to stderr. No exception leaves a command
as a traceback: an unexpected one is logged as ``command.failed`` and told on stderr in one
line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import structlog

from sync_worker.app.runner import JOBS, run_passes
from sync_worker.app.scheduler import Daemon
from sync_worker.config import (
    Config,
    ConfigError,
    config_path,
    example_toml,
    load_config,
    load_tenants,
)
from sync_worker.core import closed_stdout, logs
from sync_worker.core.clock import SystemClock
from sync_worker.jobs.context import AuditPlan
from sync_worker.ops import command_docs, config_show, history, manifest, metrics, status
from sync_worker.ops.checks import PROBE_SECONDS, CheckPlan, run_checks
from sync_worker.state import archives, insights, pass_history, reports, state_copy
from sync_worker.state.configured import open_existing_state, open_state_read_only
from sync_worker.state.db import StateFileError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
HISTORY_SHOWN = 100  # passes that `history` shows without --limit

log = structlog.get_logger()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sync-worker",
        description="Claim Flexperto archives and record them as Total Expert insights.",
        epilog="exit codes: 0 all done, 1 some item failed and will be retried (or a command "
        "failed), 2 configuration or usage error, 130 interrupted, 141 stdout closed by its "
        "reader",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {command_docs.version()}")
    _add_global_options(parser, GLOBAL_DEFAULTS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run-once", help="one full pass, then exit")
    commands.add_parser("run", help="the daemon: a pass every interval until SIGTERM")
    status_parser = commands.add_parser("status", help="what the checkpoints hold")
    status_parser.add_argument(
        "--json", action="store_true", help="every archive with its insights, as JSON"
    )
    status_parser.add_argument(
        "--state",
        action="append",
        default=[],
        help="JSON: only archives in this state (repeatable), e.g. --state failed",
    )
    status_parser.add_argument(
        "--since",
        type=_moment,
        help="JSON: only archives first seen at or after this UTC date or time (2026-11-01)",
    )
    status_parser.add_argument(
        "--limit",
        type=_positive,
        help=f"JSON: at most this many archives; table: failing items shown "
        f"(default {status.FAILING_SHOWN})",
    )
    _add_history_parser(commands)
    sandbox = commands.add_parser("sandbox", help="serve the sandbox Flexperto and TE APIs")
    sandbox.add_argument("--dir", default="sandbox-data", help="folder for sandbox files")
    sandbox.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject a fault, e.g. te:path=/insights,status=503,times=2 (repeatable)",
    )
    demo_parser = commands.add_parser("demo", help="one pass against the sandbox, explained")
    demo_parser.add_argument("--dir", default="demo-data", help="folder for the demo's files")
    for with_sandbox in (sandbox, demo_parser):
        with_sandbox.add_argument(
            "--strict",
            action="store_true",
            help="the sandbox answers only what the vendors' documents say, refusing the rest",
        )
        with_sandbox.add_argument(
            "--storage",
            choices=("local", "s3"),
            default="local",
            help="s3: archives go to a bucket of an S3 server on loopback (needs moto)",
        )
    check = commands.add_parser(
        "check", help="validate the config and reach both services, changing nothing"
    )
    reach = check.add_mutually_exclusive_group()
    reach.add_argument(
        "--offline",
        action="store_true",
        help="no network: the config, the state file and the archive folder only",
    )
    reach.add_argument(
        "--token",
        action="store_true",
        help="request a TE token if none is cached (spends one of TE's token requests of "
        "the hour); without it the TE checks that need one are skipped",
    )
    check.add_argument(
        "--probe-timeout",
        type=_positive,
        default=int(PROBE_SECONDS),
        metavar="SECONDS",
        help=f"longest wait for each request, not retried (default {PROBE_SECONDS:.0f})",
    )
    config_parser = commands.add_parser("config", help="the configuration in effect")
    config_commands = config_parser.add_subparsers(
        dest="config_command", required=True, metavar="ACTION"
    )
    shown = config_commands.add_parser(
        "show", help="as TOML, from file, environment and defaults, secrets masked"
    )
    validate = config_commands.add_parser("validate", help="the same as check --offline")
    for action in (shown, validate):
        _add_global_options(action, dict.fromkeys(GLOBAL_DEFAULTS, argparse.SUPPRESS))
    audit = commands.add_parser("audit", help="read stored archives back and check their sha256")
    chosen = audit.add_mutually_exclusive_group()
    chosen.add_argument(
        "--sample",
        type=_positive,
        help="the N archives audited longest ago (default: the share due, as the daemon reads)",
    )
    chosen.add_argument(
        "--all",
        action="store_true",
        help="every archive, and any file of the store the ledger does not know",
    )
    audit.add_argument(
        "--max-bytes-per-second", type=_positive, help="read no faster (default: audit cap)"
    )
    export = commands.add_parser("export", help="an auditor's manifest of every stored archive")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.add_argument(
        "--since", type=_moment, help="only archives stored at or after this UTC date or time"
    )
    retry = commands.add_parser("retry", help="retry failing and parked items on the next pass")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("archive_id", nargs="?", help="the archive to retry")
    which.add_argument("--all-failed", action="store_true", help="every failing or parked item")
    migrate = commands.add_parser(
        "migrate-state",
        help="copy a state file into the config's empty PostgreSQL state database",
    )
    migrate.add_argument(
        "--from",
        dest="source",
        metavar="PATH",
        help="the SQLite state file to copy (default: state.database); it is left as it is",
    )
    init = commands.add_parser("init-config", help="write a commented example config")
    init.add_argument("path", help="where to write it")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=command_docs.SHELLS)
    commands.add_parser("man", help="print the man page (roff), e.g. for man -l -")
    for command in commands.choices.values():  # accepted after the command too
        _add_global_options(command, dict.fromkeys(GLOBAL_DEFAULTS, argparse.SUPPRESS))
    return parser


def _add_history_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("history", help="the passes kept in the state file")
    parser.add_argument(
        "--since", type=_moment, help="only passes started at or after this UTC date or time"
    )
    parser.add_argument(
        "--limit",
        type=_positive,
        help=f"at most this many passes, the newest (default {HISTORY_SHOWN})",
    )
    parser.add_argument("--json", action="store_true", help="a JSON object per pass, one a line")


GLOBAL_DEFAULTS = {"config": None, "log_format": "auto", "log_level": "info", "tenant": None}


def _add_global_options(parser: argparse.ArgumentParser, defaults: dict[str, object]) -> None:
    """The options of every command. A command's own copy defaults to SUPPRESS, so that a
    value given before the command is not reset by the copy after it."""
    parser.add_argument(
        "--config", default=defaults["config"], help="config file (default: $SYNC_WORKER_CONFIG)"
    )
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default=defaults["log_format"],
        help="log rendering; auto = console on a terminal, JSON lines otherwise",
    )
    parser.add_argument(
        "--log-level",
        choices=tuple(logs.LEVELS),
        default=defaults["log_level"],
        help="lowest level logged",
    )
    parser.add_argument(
        "--tenant",
        default=defaults["tenant"],
        help="with [[tenant]] tables: only this one (status, export, retry and history need one)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    return closed_stdout.flush_stdout(_command(args))


def _command(args: argparse.Namespace) -> int:
    """Run the command; its exit code, whatever it raises."""
    try:
        return _dispatch(args)
    except ConfigError as exc:
        _tell(f"sync-worker: configuration error: {exc}")
        return EXIT_USAGE
    except StateFileError as exc:
        _tell(f"sync-worker: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _tell("sync-worker: interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # the last boundary: a message and an exit code, no traceback
        if closed_stdout.ended_by_reader(exc):
            return closed_stdout.EXIT_CLOSED_PIPE
        details = logs.exception_fields(exc)
        log.error("command.failed", command=args.command, **details)
        _tell(
            f"sync-worker: {args.command} failed: {details['error_class']}: "
            f"{logs.mask(details['error'])}"
        )
        return EXIT_FAILED


def _tell(message: str) -> None:
    """A one-line message for the person or unit that ran the command, on stderr; on the
    journal marked as an error (``<3>``) like the log's error lines, for ``journalctl -p err``."""
    priority = f"<{logs.PRIORITIES['error']}>" if logs.is_journal(sys.stderr, os.environ) else ""
    print(f"{priority}{message}", file=sys.stderr)


def _with_sandbox(args: argparse.Namespace) -> int:
    """``demo`` and ``sandbox``: the only commands that load the sandbox (and its servers'
    dependencies), so that no other command imports it."""
    from sync_worker.app import demo
    from sync_worker.sandbox import LENIENT, STRICT

    dialect = STRICT if args.strict else LENIENT
    if args.command == "demo":
        return demo.run(Path(args.dir), dialect, args.storage)
    try:
        return demo.serve_sandbox(Path(args.dir), args.fault, dialect, args.storage)
    except ValueError as exc:
        _tell(f"sync-worker: bad --fault: {exc}")
        return EXIT_USAGE


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("demo", "sandbox"):
        return _with_sandbox(args)
    if args.command == "completion":
        print(command_docs.completion(build_parser(), args.shell), end="")
        return EXIT_OK
    if args.command == "man":
        print(command_docs.man_page(build_parser()), end="")
        return EXIT_OK
    if args.command == "init-config":
        return _init_config(Path(args.path), args.force)
    one = args.command in TENANT_COMMANDS
    configs = _load(args, one)
    if one:
        return TENANT_COMMANDS[args.command](configs[0], args)
    return COMMANDS[args.command](configs, args)


def _load(args: argparse.Namespace, one: bool) -> list[Config]:
    """Every tenant of the config, or the one ``--tenant`` names (or the only one)."""
    path = config_path(args.config, os.environ)
    if one or args.tenant is not None:
        configs = [load_config(path, tenant=args.tenant)]
    else:
        configs = load_tenants(path)
    logs.configure(
        args.log_format, args.log_level, secrets=[s for c in configs for s in c.secrets()]
    )
    return configs


def _run_once(configs: list[Config], _args: argparse.Namespace) -> int:
    results = run_passes(configs, SystemClock())
    _write_metrics(configs)
    return max(result.exit_code for result in results)


def _run(configs: list[Config], _args: argparse.Namespace) -> int:
    Daemon(configs, SystemClock()).serve()
    return EXIT_OK


def _write_metrics(configs: list[Config]) -> None:
    """The textfile for node_exporter, if configured: after a run of a timer or cron."""
    path = configs[0].metrics.textfile_path
    if path is not None:
        metrics.write_textfile(path, metrics.registry_for(configs, SystemClock()))


def _status(config: Config, args: argparse.Namespace) -> int:
    db = open_existing_state(config.state)
    try:
        if args.json:
            status.write_json(db, sys.stdout, tuple(args.state), args.since, args.limit)
        else:
            print(status.render_table(db, args.limit or status.FAILING_SHOWN))
    finally:
        db.close()
    return EXIT_OK


def _history(config: Config, args: argparse.Namespace) -> int:
    db = open_existing_state(config.state)
    try:
        passes = pass_history.passes(db, args.since, args.limit or HISTORY_SHOWN)
    finally:
        db.close()
    if args.json:
        history.write_json(passes, sys.stdout)
    else:
        print("\n".join(history.render_table(passes)) if passes else "No pass recorded.")
    return EXIT_OK


def _audit(configs: list[Config], args: argparse.Namespace) -> int:
    for config in configs:  # audits what passes stored: never against a new state file
        open_state_read_only(config.state).close()
    plan = AuditPlan(
        everything=args.all, sample=args.sample, max_bytes_per_second=args.max_bytes_per_second
    )
    results = run_passes(configs, SystemClock(), jobs=["audit"], audit_plan=plan)
    _write_metrics(configs)
    return max(result.exit_code for result in results)


def _export(config: Config, args: argparse.Namespace) -> int:
    db = open_existing_state(config.state)
    try:
        manifest.write(reports.manifest(db, args.since), sys.stdout, args.format)
    finally:
        db.close()
    return EXIT_OK


def _moment(text: str) -> float:
    """A UTC date or ISO 8601 time as epoch seconds (for --since)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or time: {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


def _check(configs: list[Config], args: argparse.Namespace) -> int:
    plan = CheckPlan(offline=args.offline, token=args.token, probe_seconds=args.probe_timeout)
    return _report_checks(configs, plan)


def _report_checks(configs: list[Config], plan: CheckPlan) -> int:
    """Print each tenant's findings; exit 1 if one is a FAIL."""
    ok = True
    for config in configs:
        if config.tenant:
            print(f"tenant {config.tenant}")
        findings = run_checks(config, SystemClock(), plan)
        for finding in findings:
            print(f"{finding.status:<8}  {finding.name:<22} {finding.detail}")
        ok = ok and all(f.ok for f in findings)
    return EXIT_OK if ok else EXIT_FAILED


def _config(configs: list[Config], args: argparse.Namespace) -> int:
    if args.config_command == "validate":
        return _report_checks(configs, CheckPlan(offline=True))
    print(config_show.render(configs), end="")
    return EXIT_OK


def _retry(config: Config, args: argparse.Namespace) -> int:
    archive_id = None if args.all_failed else args.archive_id
    db = open_existing_state(config.state)
    try:
        if archive_id and archives.get(db, archive_id) is None:
            _tell(f"sync-worker: no archive {archive_id!r} in the state database")
            return EXIT_USAGE
        count = archives.retry_failed(db, archive_id) + insights.retry_failed(db, archive_id)
    finally:
        db.close()
    print(f"{count} item(s) put back to work; the next pass tries them")
    return EXIT_OK


def _migrate_state(config: Config, args: argparse.Namespace) -> int:
    """Copy a state file into the config's state database (state.state_copy)."""
    if not config.state.shared:
        _tell(
            "sync-worker: migrate-state copies into a PostgreSQL state: set state.backend = "
            '"postgresql" and state.dsn in the config, and name the file with --from'
        )
        return EXIT_USAGE
    source = Path(args.source) if args.source else config.state.database
    try:
        report = state_copy.copy_state(
            source, config.state.dsn, JOBS, config.state.busy_timeout_seconds
        )
    except state_copy.StateCopyError as exc:
        _tell(f"sync-worker: {exc}")
        return EXIT_FAILED
    for table, rows in report.rows.items():
        print(f"{table:<16} {rows:>9} rows")
    print(
        f"the state of {source} is now in the database {report.target}: workers may switch "
        'to state.backend = "postgresql"; the file is left as it was'
    )
    return EXIT_OK


def _init_config(path: Path, force: bool) -> int:
    if path.exists() and not force:
        _tell(f"sync-worker: {path} exists; use --force to overwrite")
        return EXIT_USAGE
    example = example_toml()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(example)
    print(f"wrote {path}; fill in the secrets or give them from the environment")
    return EXIT_OK


# Commands for every tenant of the config (or the one --tenant names)...
COMMANDS = {
    "audit": _audit,
    "run-once": _run_once,
    "run": _run,
    "check": _check,
    "config": _config,
}
# ... and for exactly one.
TENANT_COMMANDS = {
    "export": _export,
    "status": _status,
    "retry": _retry,
    "history": _history,
    "migrate-state": _migrate_state,
}


if __name__ == "__main__":
    sys.exit(main())
