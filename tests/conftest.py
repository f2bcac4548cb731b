"""Shared fixtures: a sandbox on loopback, a config pointing at it, a fake clock, logs.

Every test that uses the ``sandbox`` fixture runs twice: against the lenient sandbox (which
answers the shapes the worker prefers, beyond the vendors' documents) and against the strict
one (which knows only the documents, so the worker's fallbacks are what works). A test
marked ``lenient_only`` checks one of the worker's optimisations, which only the lenient
sandbox allows, and runs once. A test marked ``both_stores`` runs with the local archive
store and with a bucket on an S3 server on loopback (moto, one for the session); one
marked ``s3_only`` with the bucket only. ``SYNC_WORKER_TEST_S3_ENDPOINT`` and its fellows
(tests/s3_endpoint.py) put the buckets on another S3 server instead; a test marked
``moto_only`` needs moto itself and is skipped then. A test marked ``fast``
(a whole file, through ``pytestmark``) is of the fast tier (``make test-fast``): pure logic and
the state layer, which may start no process and sleep in no real time.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from sync_worker.app.runner import PassResult, run_pass
from sync_worker.config import Config, load_config
from sync_worker.core import logs
from sync_worker.core.clock import FakeClock
from sync_worker.sandbox import LENIENT, STRICT, Dialect, Sandbox
from sync_worker.sandbox.bucket import S3Endpoint, S3Server
from sync_worker.state.db import Database, open_database, open_postgres
from tests.postgres_cluster import BIN_ENV, PostgresCluster, server_bin
from tests.s3_endpoint import ENDPOINT, ExternalS3, external

# Fast retries for tests; the clock is fake, so backoff waits cost no real time.
TEST_SETTINGS = """
[retry]
max_attempts = 5
backoff_seconds = 60
max_backoff_seconds = 600
[http]
timeout_seconds = 5
retries = 3
retry_wait_seconds = 1
retry_max_wait_seconds = 10
"""


class SimulatedCrash(BaseException):
    """Raised from inside the worker to stand for a kill at that instant."""


class InjectedError(Exception):
    """An arbitrary exception raised from inside the worker, standing for a bug there."""


SANDBOX_MODES = {"lenient": LENIENT, "strict": STRICT}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lenient_only: checks an optimisation that needs more than the vendors' documents "
        "promise; runs against the lenient sandbox only",
    )
    config.addinivalue_line(
        "markers", "both_stores: runs with the local store and with an S3 bucket on loopback"
    )
    config.addinivalue_line("markers", "s3_only: runs with an S3 bucket on loopback only")
    config.addinivalue_line(
        "markers",
        "both_states: runs also with the state in PostgreSQL (a private cluster) and an S3 bucket",
    )
    config.addinivalue_line(
        "markers", "postgresql_only: runs with the state in PostgreSQL and an S3 bucket only"
    )
    config.addinivalue_line(
        "markers", "fast: of the fast tier (make test-fast): no process started, no real sleep"
    )
    config.addinivalue_line(
        "markers",
        "moto_only(reason): needs moto itself (the reason says why): skipped when "
        f"{ENDPOINT} names another S3 server",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("moto_only")
    if marker is not None and external():
        pytest.skip(f"moto only, {marker.args[0]}: {ENDPOINT} names another S3 server")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker
    if "sandbox_mode" in metafunc.fixturenames:
        lenient_only = marked("lenient_only") is not None
        metafunc.parametrize("sandbox_mode", ["lenient"] if lenient_only else list(SANDBOX_MODES))
    if "store_kind" in metafunc.fixturenames:
        kinds = ["local", "s3"] if marked("both_stores") else ["local"]
        kinds = ["s3"] if marked("s3_only") else kinds
        if "state_kind" not in metafunc.fixturenames:
            metafunc.parametrize("store_kind", kinds)
            return
        pairs = [(kind, "sqlite") for kind in kinds]
        ids = list(kinds)
        if marked("postgresql_only"):
            pairs, ids = [], []
        if marked("both_states") or marked(
            "postgresql_only"
        ):  # a state in PostgreSQL wants a shared store: S3
            pairs.append(("s3", "postgresql"))
            ids.append("s3-postgresql")
        metafunc.parametrize(("store_kind", "state_kind"), pairs, ids=ids)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    """An S3 server for the whole session (each sandbox makes a bucket): moto on loopback,
    or the one the environment names."""
    server: S3Endpoint = ExternalS3.from_environment() or S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the session (of this test process)."""
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL's server is not installed: apt-get install postgresql (.ci/run does), "
            f"or name its bin folder in {BIN_ENV}"
        )
    cluster = PostgresCluster(bin_dir)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def open_state(
    request: pytest.FixtureRequest, state_engine: str, tmp_path: Path
) -> Iterator[Callable[[], Database]]:
    """``open_state()`` opens the test's state database on the engine of ``state_engine``
    (a file, or a new database of the session's cluster): each call a new connection to the
    same database, closed after the test."""
    opened: list[Database] = []
    dsn = (
        request.getfixturevalue("postgres_cluster").new_database()
        if state_engine == "postgresql"
        else ""
    )

    def open_it() -> Database:
        db = open_postgres(dsn) if dsn else open_database(tmp_path / "s.db")
        opened.append(db)
        return db

    yield open_it
    for db in opened:
        db.close()


@pytest.fixture(autouse=True)
def _fast_tier_rules(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``fast`` test that starts a process or sleeps in its own thread fails, saying so
    (threads it starts may wait: a lock's contention is state-layer logic). The session's
    PostgreSQL cluster, which a state-layer test on that engine needs, is started first."""
    if request.node.get_closest_marker("fast") is None:
        return
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("state_engine") == "postgresql":
        request.getfixturevalue("postgres_cluster")
    owner = threading.get_ident()

    def refused(name: str, real: Callable) -> Callable:
        def guarded(*args, **kwargs):
            if threading.get_ident() == owner:
                raise AssertionError(f"a fast-tier test may not call {name}: mark it otherwise")
            return real(*args, **kwargs)

        return guarded

    monkeypatch.setattr(
        subprocess.Popen,
        "_execute_child",
        refused("subprocess.Popen", subprocess.Popen._execute_child),
    )
    monkeypatch.setattr(time, "sleep", refused("time.sleep", time.sleep))


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    """Each test starts with logs going nowhere: a test that ran the CLI may have left them
    pointed at a capture stream that pytest has closed since."""
    logs.configure("json", "info", stream=io.StringIO())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sandbox(
    tmp_path: Path,
    clock: FakeClock,
    sandbox_mode: str,
    store_kind: str,
    request: pytest.FixtureRequest,
) -> Iterator[Sandbox]:
    s3_server = request.getfixturevalue("s3_server") if store_kind == "s3" else None
    with Sandbox(
        tmp_path / "sandbox",
        clock=clock,
        dialect=SANDBOX_MODES[sandbox_mode],
        storage=store_kind,
        s3_server=s3_server,
    ) as running:
        yield running


@pytest.fixture
def sandbox_in(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., tuple[Sandbox, Config]]]:
    """Start a sandbox speaking a given dialect: ``sandbox_in(dialect)`` gives it and a
    config pointing at it (for tests of one fallback at a time)."""
    started: list[Sandbox] = []

    def start(dialect: Dialect, extra: str = "") -> tuple[Sandbox, Config]:
        running = Sandbox(tmp_path / "sandbox", clock=clock, dialect=dialect).start()
        started.append(running)
        return running, load_config(write_config(tmp_path, running, extra), env={})

    yield start
    for running in started:
        running.stop()


def write_config(folder: Path, sandbox: Sandbox, extra: str = "", state: str = "") -> Path:
    """The config file for ``sandbox``, with more keys of its ``[state]`` in ``state``."""
    path = folder / "config.toml"
    path.write_text(sandbox.config_toml("archives", "state.db") + state + TEST_SETTINGS + extra)
    path.chmod(0o600)  # it holds the sandbox's secrets
    return path


@pytest.fixture
def config(
    tmp_path: Path, sandbox: Sandbox, state_kind: str, request: pytest.FixtureRequest
) -> Config:
    """A config pointing at the sandbox, its state in a file or in a new database of the
    session's PostgreSQL cluster."""
    state = ""
    if state_kind == "postgresql":
        dsn = request.getfixturevalue("postgres_cluster").new_database()
        state = f'backend = "postgresql"\ndsn = {json.dumps(dsn)}\n'
    return load_config(write_config(tmp_path, sandbox, state=state), env={})


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict]]]:
    """Captured JSON log events of the test, at debug level."""
    stream = io.StringIO()
    logs.configure("json", "debug", stream=stream)

    def events() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield events
    logs.configure("json", "info", stream=io.StringIO())


class CrashSwitch:
    """Makes the worker 'die' (or raise ``error``) right when it logs ``event`` for the
    ``nth`` time."""

    def __init__(self) -> None:
        self._armed: tuple[str, int, type[BaseException]] | None = None
        self._seen = 0
        processors = structlog.get_config()["processors"]
        structlog.configure(processors=[self._processor, *processors])

    def arm(self, event: str, nth: int = 1, error: type[BaseException] = SimulatedCrash) -> None:
        self._armed, self._seen = (event, nth, error), 0

    def disarm(self) -> None:
        self._armed = None

    def _processor(self, _logger, _method, event_dict):
        if self._armed and event_dict.get("event") == self._armed[0]:
            self._seen += 1
            if self._seen == self._armed[1]:
                raise self._armed[2](f"injected at {self._armed[0]}")
        return event_dict


@pytest.fixture
def crash(log_lines) -> CrashSwitch:
    return CrashSwitch()


@pytest.fixture
def run(config: Config, clock: FakeClock) -> Callable[..., PassResult]:
    def run_once(**kwargs) -> PassResult:
        return run_pass(config, clock, **kwargs)

    return run_once
