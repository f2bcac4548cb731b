"""Kill ``sync-worker run-once`` with SIGKILL at random instants, then check nothing was lost.

Runs the worker as a real subprocess against an in-process sandbox (lenient, or with
``--strict`` the one that knows only the vendors' documents), storing in a local folder or,
with ``--storage s3``, in an Object Lock bucket on an S3 server on loopback. Half the kills
land at a uniformly random time into a pass; the other half right after the worker logs a
randomly chosen step (listing, download, verification, SQLite commits, abandon, insight
POST), plus a random few milliseconds. New archives keep arriving so that there is always
work to cut, and before some passes TE's tokens are revoked or a fault is armed (a 500, a
reset, a truncated download...). The state is a SQLite file or, with ``--state postgresql``
(which wants ``--storage s3``), a database of a private PostgreSQL cluster started for the
run. After the last kill, passes run until nothing is left, and the invariants are checked:

- every archive that was AVAILABLE is stored once, with the bytes Flexperto hashed;
- no archive was abandoned before its verified file was renamed into place (or its object
  was in the bucket) and its record committed to the state;
- every matched contact has exactly one insight per archive;
- no temporary file and no incomplete upload is left behind;
- Total Expert's per-minute and token limits were never exceeded;
- no run, killed or not, printed a traceback; the last pass exits 0;
- on SQLite, the state file passes SQLite's integrity check; on PostgreSQL, the database is
  at the latest schema version and every one of its tables can be read.

With ``--crowd``, the passes are not alone with the state: a daemon (``sync-worker run``, a
pass a second) runs throughout and is itself SIGKILLed and restarted at random, and an
operator calls ``status`` over and over, as on a host where cron passes, the daemon and
people share one state file (or, on PostgreSQL, one database).

Usage: python -m tests.system.crash_tool --kills 1000 [--seed N] [--keep DIR] [--strict]
       [--storage s3] [--state postgresql] [--crowd]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg

from sync_worker.adapters.stores import Missing, Store, open_store
from sync_worker.config import Config, StateConfig, load_config
from sync_worker.sandbox import LENIENT, STRICT, Dialect, Fault, Sandbox
from sync_worker.sandbox.worker_process import log_events, worker_command
from sync_worker.state import postgres_schema
from sync_worker.state.configured import open_state, state_exists
from sync_worker.state.db import Database
from sync_worker.state.postgres import PostgresDatabase, connect
from tests.postgres_cluster import BIN_ENV, PostgresCluster, server_bin
from tests.state_rows import count_of, rows_of

KILL_EVENTS = (
    "archive.listed",
    "archive.downloaded",
    "archive.verified",
    "archive.stored",
    "archive.abandoned",
    "archive.claimed",
    "te.token_requested",
    "insight.matched",
    "insight.posting",
    "insight.sent",
)
# Enough token requests for thousands of kills, each of which may lose a fresh token; the
# check below still holds the worker to whatever limit is configured.
TOKEN_REQUESTS_PER_HOUR = 50
REQUESTS_PER_MINUTE = 1000
SETTINGS = """
[retry]
max_attempts = 1000
backoff_seconds = 0.001
max_backoff_seconds = 0.001
[http]
timeout_seconds = 10
retries = 2
retry_wait_seconds = 0.01
retry_max_wait_seconds = 0.05
"""
MAX_ATTEMPTS_PER_KILL = 5
# With --crowd: the daemon passes once a second beside the killed passes.
CROWD_SETTINGS = """
[schedule]
interval_seconds = 1
"""
# Armed before some passes (each for one to three requests): what a real day may bring.
FAULTS = (
    ("flexperto", Fault(path="/conferences/archives$", status=503)),
    ("flexperto", Fault(path="/download$", status=500)),
    ("flexperto", Fault(path="/archive/abandon$", status=502)),
    ("s3", Fault(action="truncate")),
    ("s3", Fault(action="reset")),
    ("te", Fault(method="POST", path="/insights$", status=500)),
    ("te", Fault(method="POST", path="/insights$", action="reset")),
    ("te", Fault(path="/contacts$", status=500)),
    ("te", Fault(path="/users$", status=500)),
    ("te", Fault(method="GET", path="/insights$", status=503)),
)
STDERR_LOG = "stderr.log"
CHAOS_RATE = 0.2  # share of passes that get a fault, and (separately) revoked tokens
# Each revocation may cost one of the hour's token requests: a third of them at most, so
# that kills (which can lose a fresh token) never exhaust the budget within a run. Past
# it, the worker rightly waits for the hour to end.
MAX_REVOCATIONS = TOKEN_REQUESTS_PER_HOUR // 3
STATES = ("sqlite", "postgresql")
PARTICIPANTS = (
    "max.kunde@example.org",
    "erika.muster@example.org",
    "lena.lang@example.org",
    "nobody@nowhere.example",
)


@dataclass
class Report:
    kills: int = 0
    kills_by_trigger: Counter[str] = field(default_factory=Counter)
    faults_armed: int = 0
    tokens_revoked: int = 0
    tracebacks: int = 0
    daemon_kills: int = 0
    status_calls: int = 0
    passes_to_finish: int = 0
    archives: int = 0
    insights: int = 0
    problems: list[str] = field(default_factory=list)


def run(
    kills: int,
    seed: int,
    folder: Path,
    dialect: Dialect = LENIENT,
    storage: str = "local",
    crowd: bool = False,
    state: str = "sqlite",
) -> Report:
    """Kill ``kills`` passes and check the invariants; ``state`` is ``sqlite`` (a file in
    ``folder``) or ``postgresql`` (a database of a private cluster, stopped at the end;
    only with ``storage="s3"``: a shared state wants a shared store)."""
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, not {state!r}")
    if state == "postgresql" and storage != "s3":
        raise ValueError("a state in PostgreSQL needs storage='s3'")
    rng = random.Random(seed)
    report = Report()
    with ExitStack() as stack:
        dsn = _private_database(stack) if state == "postgresql" else ""
        sandbox = stack.enter_context(
            Sandbox(
                folder / "sandbox",
                te_requests_per_minute=REQUESTS_PER_MINUTE,
                te_token_requests_per_hour=TOKEN_REQUESTS_PER_HOUR,
                dialect=dialect,
                storage=storage,
            )
        )
        config = folder / "config.toml"
        text = sandbox.config_toml(str(folder / "archives"), str(folder / "state.db"))
        if dsn:  # [state] ends the text, its database line last: the engine's keys follow
            assert text.endswith(f"database = {json.dumps(str(folder / 'state.db'))}\n")
            text += f'backend = "postgresql"\ndsn = {json.dumps(dsn)}\n'
        config.write_text(
            text.replace(
                "token_requests_per_hour = 2",
                f"token_requests_per_hour = {TOKEN_REQUESTS_PER_HOUR}",
            )
            + SETTINGS
            + (CROWD_SETTINGS if crowd else "")
        )
        config.chmod(0o600)  # it holds the sandbox's secrets
        loaded = load_config(config, env={})
        assert loaded.state.shared == bool(dsn)
        with Crowd(config, random.Random(rng.random()), report) if crowd else nullcontext():
            _kill_passes(sandbox, config, rng, report, kills)
        for server in ("flexperto", "s3", "te"):
            sandbox.service(server).faults.clear()
        report.passes_to_finish = _finish(config, loaded.state, report)
        _check(sandbox, folder, loaded, report)
    return report


def _private_database(stack: ExitStack) -> str:
    """Start a PostgreSQL cluster of the run's own, stopped when ``stack`` closes; the DSN
    of a new database in it."""
    bin_dir = server_bin()
    if bin_dir is None:
        raise RuntimeError(
            "PostgreSQL's server is not installed: apt-get install postgresql, "
            f"or name its bin folder in {BIN_ENV}"
        )
    cluster = PostgresCluster(bin_dir)
    stack.callback(cluster.stop)  # also when start fails half-way: stop removes its folder
    cluster.start()
    return cluster.new_database()


def _kill_passes(
    sandbox: Sandbox, config: Path, rng: random.Random, report: Report, kills: int
) -> None:
    typical_pass = 1.0
    for attempt in range(MAX_ATTEMPTS_PER_KILL * kills):
        if report.kills >= kills:
            break
        _add_archive(sandbox, rng, attempt)
        _stir(sandbox, rng, report)
        started = time.monotonic()
        if not _kill_one_pass(config, rng, report, typical_pass):
            typical_pass = time.monotonic() - started  # it finished: aim within that


class Crowd:
    """The other users of the state file while passes are killed: a daemon, itself killed
    and restarted at random, and an operator calling ``status`` in a loop. Their output
    goes to STDERR_LOG, checked for tracebacks at the end."""

    def __init__(self, config: Path, rng: random.Random, report: Report) -> None:
        self._config = config
        self._rng = rng
        self._report = report
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._daemon, daemon=True),
            threading.Thread(target=self._operator, daemon=True),
        ]

    def __enter__(self) -> Crowd:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _daemon(self) -> None:
        with (self._config.parent / STDERR_LOG).open("a") as output:
            while not self._stop.is_set():
                daemon = subprocess.Popen(
                    worker_command("--log-format", "json", "run", config=self._config),
                    stdout=output,
                    stderr=output,
                )
                self._stop.wait(self._rng.uniform(0.5, 4.0))
                _kill(daemon)
                daemon.wait()
                self._report.daemon_kills += 1

    def _operator(self) -> None:
        state = load_config(self._config, env={}).state
        while not self._stop.is_set():
            if not _state_made(state):  # status reads a state a pass made, it makes none
                self._stop.wait(0.1)
                continue
            done = subprocess.run(
                worker_command("status", config=self._config),
                capture_output=True,
                text=True,
                timeout=120,
            )
            self._report.status_calls += 1
            self._report.tracebacks += _tracebacks(done.stdout + done.stderr)
            if done.returncode != 0:
                self._report.problems.append(f"status failed: {done.stderr.strip()[:300]}")
            self._stop.wait(self._rng.uniform(0.0, 0.3))


def _stir(sandbox: Sandbox, rng: random.Random, report: Report) -> None:
    """Before some passes: revoke TE's tokens, arm a fault for the next few requests."""
    if rng.random() < CHAOS_RATE and report.tokens_revoked < MAX_REVOCATIONS:
        sandbox.totalexpert.revoke_tokens()
        report.tokens_revoked += 1
    if rng.random() < CHAOS_RATE:
        server, fault = rng.choice(FAULTS)
        sandbox.add_fault(server, replace(fault, times=rng.randint(1, 3)))
        report.faults_armed += 1


def _add_archive(sandbox: Sandbox, rng: random.Random, n: int) -> None:
    participants = [
        {"account_id": f"p-{n}-{i}", "email": email, "name": email.split("@")[0]}
        for i, email in enumerate(rng.sample(PARTICIPANTS, rng.randint(1, 2)))
    ]
    sandbox.flexperto.add_archive(
        status="AVAILABLE",
        moderator={
            "account_id": "e-17",
            "email": "anna.expert@bank.example",
            "name": "Anna Expert",
        },
        participants=participants,
        size=rng.choice((10_000, 200_000, 3_000_000)),
    )


def _kill_one_pass(config: Path, rng: random.Random, report: Report, typical: float) -> bool:
    """Start a pass and kill it at a random instant; False if it finished first. Its log
    (stderr) is read as it comes; anything on its stdout is kept in STDERR_LOG beside the
    config, checked at the end."""
    with (config.parent / STDERR_LOG).open("a") as other:
        process = subprocess.Popen(
            worker_command(
                "--log-format", "json", "--log-level", "debug", "run-once", config=config
            ),
            stdout=other,
            stderr=subprocess.PIPE,
            text=True,
        )
        if rng.random() < 0.5:
            trigger = "timer"
            timer = threading.Timer(rng.uniform(0.0, typical), _kill, args=[process])
            timer.start()
            _watch(process, report, rng)
            timer.cancel()
        else:
            trigger = rng.choice(KILL_EVENTS)
            _watch(process, report, rng, kill_after=trigger)
        if process.wait() != -signal.SIGKILL:
            return False
    report.kills += 1
    report.kills_by_trigger[trigger] += 1
    return True


def _watch(
    process: subprocess.Popen, report: Report, rng: random.Random, kill_after: str | None = None
) -> None:
    """Read the pass's log to its end, counting tracebacks; with ``kill_after``, kill the
    process a few random milliseconds after it logs that event."""
    assert process.stderr is not None
    for line in process.stderr:
        report.tracebacks += _tracebacks(line)
        if kill_after is not None and f'"event": "{kill_after}"' in line:
            time.sleep(rng.uniform(0.0, 0.005))
            _kill(process)
            kill_after = None


def _tracebacks(text: str) -> int:
    """Tracebacks in some output: printed, or as a log event's exception field."""
    return text.count("Traceback") + text.count('"exception":')


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)


def _finish(config: Path, state: StateConfig, report: Report, max_passes: int = 10) -> int:
    output = ""
    for n in range(1, max_passes + 1):
        result = subprocess.run(
            worker_command("--log-format", "json", "run-once", config=config),
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = result.stderr
        report.tracebacks += _tracebacks(result.stdout + result.stderr)
        if result.returncode == 0 and _nothing_open(state):
            return n
    report.problems.append(
        f"work still open after {max_passes} clean passes; the last one logged "
        f"{dict(_complaints(output))}"
    )
    return max_passes


def _complaints(log: str) -> Counter[str]:
    """The warnings and errors in a pass's JSON log, by event."""
    return Counter(e["event"] for e in log_events(log) if e.get("level") in ("warning", "error"))


def _state_made(state: StateConfig) -> bool:
    """Whether a pass has made the state: its file is there, or its database has a schema
    (made whole in the transaction that records its version)."""
    if not state.shared:
        return state_exists(state)
    db = connect(state.dsn, state.busy_timeout_seconds)
    try:
        return postgres_schema.version_of(db) > 0
    finally:
        db.close()


def _nothing_open(state: StateConfig) -> bool:
    db = open_state(state)
    try:
        open_archives = db.execute(
            "select count(*) from archives where state != 'claimed'"
        ).fetchone()[0]
        open_participants = db.execute(
            "select count(*) from participants where state not in ('matched', 'no_match')"
        ).fetchone()[0]
        open_insights = db.execute(
            "select count(*) from insights where state != 'sent'"
        ).fetchone()[0]
    finally:
        db.close()
    return open_archives == open_participants == open_insights == 0


def _check(sandbox: Sandbox, folder: Path, config: Config, report: Report) -> None:
    problems = report.problems
    store = open_store(config.storage, config.http)
    placed = _placed_at(sandbox, folder)
    problems.extend(_damage(config.state))  # first: open_state would migrate an old schema
    db = open_state(config.state)
    try:
        _check_state(sandbox, folder, store, placed, db, report)
    finally:
        db.close()
    report.tracebacks += _tracebacks((folder / STDERR_LOG).read_text())
    if report.tracebacks:
        problems.append(f"{report.tracebacks} traceback(s) in the runs' output")


def _check_state(
    sandbox: Sandbox,
    folder: Path,
    store: Store,
    placed: dict[str, float],
    db: Database,
    report: Report,
) -> None:
    problems = report.problems
    rows = {row["archive_id"]: row for row in rows_of(db, "archives", "archive_id")}
    abandons = [r for r in sandbox.flexperto.requests if r.path.endswith("/archive/abandon")]
    first_abandon: dict[str, float] = {}
    for request in abandons:
        conference = request.path.split("/")[-3]
        first_abandon.setdefault(conference, request.received_at)
    for record in sandbox.flexperto.records():
        if record["status"] not in ("AVAILABLE", "ABANDONED"):
            continue
        report.archives += 1
        archive_id = record["id"]
        conference = record["subject"]["conference_id"]
        row = rows.get(archive_id)
        if record["status"] != "ABANDONED":
            problems.append(f"{archive_id} was never abandoned")
        if row is None or row["state"] != "claimed":
            problems.append(f"{archive_id} is not claimed in the state: {row and row['state']}")
            continue
        digest = hashlib.sha256()
        try:
            for chunk in store.read(row["path"]):
                digest.update(chunk)
        except Missing:
            problems.append(f"{archive_id}: stored file missing")
            continue
        if digest.hexdigest() != record["sha256CheckSum"]:
            problems.append(f"{archive_id}: stored bytes differ from the checksum")
        abandoned_at = first_abandon.get(conference)
        if abandoned_at is not None:
            if row["stored_at"] > abandoned_at:
                problems.append(f"{archive_id}: abandoned before its state record")
            if placed[row["path"]] > abandoned_at + 0.01:
                problems.append(f"{archive_id}: abandoned before its file was in place")
    keys = Counter(
        (i["data"]["flexperto_archive_id"], i["contact_id"]) for i in sandbox.totalexpert.insights()
    )
    report.insights = len(keys)
    problems.extend(f"insight doubled: {key}" for key, n in keys.items() if n > 1)
    ledger = rows_of(db, "insights", "archive_id, contact_id")
    expected = {(r["archive_id"], r["contact_id"]) for r in ledger}
    if set(keys) != expected:
        problems.append(f"insights in TE differ from the ledger: {set(keys) ^ expected}")
    leftovers = [p for p in (folder / "archives").rglob("*") if p.name.endswith((".part", ".tmp"))]
    problems.extend(f"temporary file left: {p}" for p in leftovers)
    if sandbox.bucket is not None and sandbox.bucket.incomplete_uploads():
        problems.append(f"uploads left incomplete: {sandbox.bucket.incomplete_uploads()}")
    te = sandbox.totalexpert
    if te.max_requests_in_window(60) > REQUESTS_PER_MINUTE:
        problems.append(f"per-minute limit exceeded: {te.max_requests_in_window(60)}")
    if te.max_token_requests_in_window(3600) > TOKEN_REQUESTS_PER_HOUR:
        problems.append(f"token limit exceeded: {te.max_token_requests_in_window(3600)}")
    if te.rate_limited_count:
        problems.append(f"TE answered 429 {te.rate_limited_count} times")
    if sandbox.s3.api_key_rejections:
        problems.append("the api-key was sent to the download host")


def _damage(state: StateConfig) -> list[str]:
    """What is wrong with the state itself: SQLite's integrity check of the file; on
    PostgreSQL (which keeps its own files whole), a schema version other than the latest,
    or a table that cannot be read, as the passes left them (read without migrating)."""
    if not state.shared:
        sqlite = open_state(state)
        try:
            integrity = sqlite.execute("pragma integrity_check").fetchone()[0]
        finally:
            sqlite.close()
        return [] if integrity == "ok" else [f"state file damaged: {integrity}"]
    db = connect(state.dsn, state.busy_timeout_seconds)
    try:
        return _postgres_damage(db)
    finally:
        db.close()


def _postgres_damage(db: PostgresDatabase) -> list[str]:
    problems = []
    version, latest = postgres_schema.version_of(db), postgres_schema.POSTGRES_STEPS[-1].number
    if version != latest:
        problems.append(f"state database at schema version {version}, not {latest}")
    listed = db.query(
        "select tablename from pg_tables where schemaname = current_schema() order by 1"
    )
    for table in [row["tablename"] for row in listed]:
        try:
            count_of(db, table)
        except psycopg.Error as exc:
            problems.append(f"state table {table} unreadable: {exc}")
    return problems


def _placed_at(sandbox: Sandbox, folder: Path) -> dict[str, float]:
    """When each stored archive appeared under its final name, by its location: the file's
    ctime (the rename), or the object's LastModified (to the millisecond)."""
    if sandbox.bucket is None:
        return {str(p): p.stat().st_ctime for p in (folder / "archives").glob("*/*.zip")}
    bucket = sandbox.bucket
    pages = bucket.client().get_paginator("list_objects_v2").paginate(Bucket=bucket.name)
    return {
        f"s3://{bucket.name}/{item['Key']}": item["LastModified"].timestamp()
        for page in pages
        for item in page.get("Contents", [])
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument(
        "--strict", action="store_true", help="a sandbox that knows only the vendors' documents"
    )
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    parser.add_argument(
        "--state",
        choices=STATES,
        default="sqlite",
        help="a SQLite file, or a database of a private PostgreSQL cluster (needs --storage s3)",
    )
    parser.add_argument(
        "--crowd", action="store_true", help="a daemon and status calls share the state"
    )
    args = parser.parse_args(argv)
    if args.state == "postgresql" and args.storage != "s3":
        parser.error("--state postgresql needs --storage s3 (a shared state wants a shared store)")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="crash-tool-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        report = run(
            args.kills,
            args.seed,
            folder,
            STRICT if args.strict else LENIENT,
            args.storage,
            args.crowd,
            args.state,
        )
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(
        json.dumps(
            {
                "seed": args.seed,
                "strict": args.strict,
                "storage": args.storage,
                "state": args.state,
                "crowd": args.crowd,
                **report.__dict__,
            },
            indent=2,
            default=dict,
        )
    )
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
