"""Sandbox Flexperto, storage host ("S3") and Total Expert servers on loopback.

Used by the tests, by ``sync-worker demo`` and ``sync-worker sandbox``, and by the
benchmark. Each server logs every request it serves and takes switchable faults::

    with Sandbox(tmp_path, clock=FakeClock()) as sb:
        sb.add_fault("te", Fault(path="/insights$", status=503))
        config_text = sb.config_toml("archives", "state.db")

``dialect`` (default :data:`LENIENT`) says how far the servers go beyond the vendors'
documents; :data:`STRICT` keeps to them. ``tls`` (an ``ssl.SSLContext`` holding a
certificate for 127.0.0.1, 127.0.0.2 and localhost) makes the three speak HTTPS.
"""

from __future__ import annotations

import itertools
import json
import secrets
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from sync_worker.core.clock import Clock, SystemClock
from sync_worker.sandbox.bucket import S3Endpoint, S3Server, SandboxBucket
from sync_worker.sandbox.dialect import LENIENT, STRICT, Dialect
from sync_worker.sandbox.faults import Fault
from sync_worker.sandbox.flexperto import FakeFlexperto, FakeStorageHost
from sync_worker.sandbox.http import FakeService, LoggedRequest, SandboxServer
from sync_worker.sandbox.seed import INSIGHT_TYPE, seed_sandbox
from sync_worker.sandbox.totalexpert import FakeTotalExpert

__all__ = [
    "LENIENT",
    "STRICT",
    "Dialect",
    "FakeFlexperto",
    "FakeStorageHost",
    "FakeTotalExpert",
    "Fault",
    "LoggedRequest",
    "Sandbox",
    "free_port",
    "tenants_toml",
]


class Sandbox:
    """The three servers, their secrets and their data; ``start``/``stop`` or ``with``.

    Sockets are bound (``ports`` = Flexperto, storage host, TE; 0 = any free port) when the
    sandbox is made, so the URLs are known before it starts.
    """

    def __init__(
        self,
        data_dir: Path,
        clock: Clock | None = None,
        seed: bool = True,
        te_requests_per_minute: int = 1000,
        te_token_requests_per_hour: int = 2,
        packing_listings: int = 1,
        ports: tuple[int, int, int] = (0, 0, 0),
        dialect: Dialect = LENIENT,
        storage: str = "local",
        s3_server: S3Endpoint | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.dialect = dialect
        # With storage "s3", archives go to a bucket of an S3 server on loopback: the one
        # given (shared), else one of this sandbox's own.
        self._own_s3_server = s3_server is None and storage == "s3"
        server: S3Endpoint | None = S3Server() if self._own_s3_server else s3_server
        self.bucket = SandboxBucket(server) if storage == "s3" and server else None
        self.api_key = secrets.token_urlsafe(24)
        self.client_id = secrets.token_urlsafe(12)
        self.client_secret = secrets.token_urlsafe(24)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.flexperto = FakeFlexperto(
            self.clock, data_dir, self.api_key, packing_listings, dialect
        )
        self.s3 = FakeStorageHost(self.clock, self.flexperto)
        self.totalexpert = FakeTotalExpert(
            self.clock,
            self.client_id,
            self.client_secret,
            te_requests_per_minute,
            te_token_requests_per_hour,
            dialect,
        )
        sequence = _shared_counter()
        for service in self._services():
            service.sequence = sequence
        self._servers: dict[str, SandboxServer] = {}
        hosts = ("127.0.0.1", _second_loopback(), "127.0.0.1")
        try:
            for service, host, port in zip(self._services(), hosts, ports, strict=True):
                self._servers[service.name] = SandboxServer(service, host, port, tls)
        except OSError:
            self.stop()
            raise
        self.flexperto_url = self._servers["flexperto"].url
        self.s3_url = self._servers["s3"].url
        self.totalexpert_url = self._servers["totalexpert"].url + "/v1"
        self.flexperto.s3_url = self.s3_url
        self.totalexpert.base_url = self.totalexpert_url
        if seed:
            seed_sandbox(self.flexperto, self.totalexpert)

    def _services(self) -> tuple[FakeService, FakeService, FakeService]:
        return (self.flexperto, self.s3, self.totalexpert)

    def start(self) -> Sandbox:
        for server in self._servers.values():
            server.start()
        return self

    def stop(self) -> None:
        """Stop the servers (in parallel, it is quicker) and close their connections."""
        stopping = [threading.Thread(target=s.stop) for s in self._servers.values()]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        if self.bucket is not None:
            self.bucket.discard()
        if self._own_s3_server and self.bucket is not None:
            self.bucket.server.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def service(self, server: str) -> FakeService:
        """The fake ``flexperto``, ``s3`` or ``te``/``totalexpert`` service."""
        return self._servers["totalexpert" if server == "te" else server].service

    def add_fault(self, server: str, fault: Fault) -> None:
        """Arm ``fault`` on ``flexperto``, ``s3`` or ``te``/``totalexpert``."""
        self.service(server).faults.add(fault)

    def requests(self) -> list[LoggedRequest]:
        """Every request served by the three servers, in order of arrival."""
        served = [entry for s in self._servers.values() for entry in s.service.numbered_requests()]
        return [record for _, record in sorted(served, key=lambda entry: entry[0])]

    @property
    def storage_host(self) -> str:
        """The storage host's ``HOST:PORT``: plain http on loopback, so the one internal
        target a config of this sandbox allows for downloads."""
        return urlsplit(self.s3_url).netloc

    def config_toml(self, archive_dir: str, database: str) -> str:
        """A worker configuration pointing at this sandbox."""
        q = json.dumps
        return (
            f"[flexperto]\nbase_url = {q(self.flexperto_url)}\napi_key = {q(self.api_key)}\n"
            "page_size = 100\n"
            f"download_hosts_allowed = [{q(self.storage_host)}]\n"
            + self.totalexpert_toml()
            + (
                self.bucket.storage_toml(archive_dir)
                if self.bucket is not None
                else f"[storage]\narchive_dir = {q(archive_dir)}\n"
            )
            + f"[state]\ndatabase = {q(database)}\n"
        )

    def totalexpert_toml(self) -> str:
        """The ``[totalexpert]`` section for this sandbox's TE and its limits."""
        q = json.dumps
        te = self.totalexpert
        return (
            f"[totalexpert]\nbase_url = {q(self.totalexpert_url)}\n"
            f"client_id = {q(self.client_id)}\nclient_secret = {q(self.client_secret)}\n"
            f"insight_type = {q(INSIGHT_TYPE)}\n"
            f"requests_per_minute = {te.requests_per_minute}\n"
            f"token_requests_per_hour = {te.token_requests_per_hour}\n"
        )


def _shared_counter() -> Callable[[], int]:
    """A thread-safe 0, 1, 2... shared by the servers to number requests on arrival."""
    numbers, lock = itertools.count(), threading.Lock()

    def next_number() -> int:
        with lock:
            return next(numbers)

    return next_number


def _second_loopback() -> str:
    """127.0.0.2 where it can be bound (Linux), so the storage host is another host."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"


def tenants_toml(te: Sandbox, tenants: dict[str, Sandbox], budget: str = "te-budget.db") -> str:
    """A worker configuration with a ``[[tenant]]`` per named sandbox (its Flexperto, an
    archive folder and state file of its own, local storage) and all of them on ``te``'s
    Total Expert, sharing one ``budget`` file."""
    q = json.dumps
    text = te.totalexpert_toml() + f"shared_budget = {q(budget)}\n"
    for name, box in tenants.items():
        text += (
            f"[[tenant]]\nname = {q(name)}\n"
            f"[tenant.flexperto]\nbase_url = {q(box.flexperto_url)}\napi_key = {q(box.api_key)}\n"
            f"download_hosts_allowed = [{q(box.storage_host)}]\n"
            f"[tenant.storage]\narchive_dir = {q(name + '/archives')}\n"
            f"[tenant.state]\ndatabase = {q(name + '/state.db')}\n"
        )
    return text


def free_port() -> int:
    """A loopback port nothing listens on right now (for a server to be started on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
