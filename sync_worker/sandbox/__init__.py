"""Sandbox Flexperto, storage host ("S3") and Total Expert servers on loopback.

Used by the tests, by ``sync-worker demo`` and ``sync-worker sandbox``, and by the
benchmark. Each server logs every request it serves and takes switchable faults.
"""

from __future__ import annotations

import json
import secrets
import socket
from pathlib import Path
from types import TracebackType

from sync_worker.clock import Clock, SystemClock
from sync_worker.sandbox.faults import Fault
from sync_worker.sandbox.flexperto import FlexpertoState, S3State
from sync_worker.sandbox.http import RequestRecord, SandboxServer, ServerState
from sync_worker.sandbox.seed import INSIGHT_TYPE, seed_flexperto, seed_totalexpert
from sync_worker.sandbox.totalexpert import TotalExpertState

__all__ = ["Fault", "RequestRecord", "Sandbox"]


class Sandbox:
    def __init__(
        self,
        data_dir: Path,
        clock: Clock | None = None,
        seed: bool = True,
        te_requests_per_minute: int = 1000,
        te_token_requests_per_hour: int = 2,
        packing_listings: int = 1,
    ) -> None:
        self.clock = clock or SystemClock()
        self.api_key = secrets.token_urlsafe(24)
        self.client_id = "sandbox-" + secrets.token_hex(4)
        self.client_secret = secrets.token_urlsafe(24)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.flexperto = FlexpertoState(self.clock, data_dir, self.api_key, packing_listings)
        self.s3 = S3State(self.clock, self.flexperto)
        self.totalexpert = TotalExpertState(
            self.clock,
            self.client_id,
            self.client_secret,
            te_requests_per_minute,
            te_token_requests_per_hour,
        )
        self._servers = {
            "flexperto": SandboxServer(self.flexperto),
            "s3": SandboxServer(self.s3, host=_second_loopback()),
            "totalexpert": SandboxServer(self.totalexpert),
        }
        self.flexperto_url = self._servers["flexperto"].url
        self.s3_url = self._servers["s3"].url
        self.totalexpert_url = self._servers["totalexpert"].url + "/v1"
        self.flexperto.s3_url = self.s3_url
        self.totalexpert.base_url = self.totalexpert_url
        if seed:
            seed_totalexpert(self.totalexpert)
            seed_flexperto(self.flexperto)

    def start(self) -> Sandbox:
        for server in self._servers.values():
            server.start()
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def state(self, server: str) -> ServerState:
        return self._servers[server].state

    def add_fault(self, server: str, fault: Fault) -> None:
        """Arm ``fault`` on ``flexperto``, ``s3`` or ``te``/``totalexpert``."""
        self.state("totalexpert" if server == "te" else server).faults.add(fault)

    def requests(self) -> list[RequestRecord]:
        """Every request served by the three servers, in order of arrival."""
        served = [r for s in self._servers.values() for r in s.state.requests]
        return sorted(served, key=lambda record: record.received_at)

    def config_toml(self, archive_dir: str, database: str) -> str:
        """A worker configuration pointing at this sandbox."""
        te = self.totalexpert
        q = json.dumps
        return (
            f"[flexperto]\nbase_url = {q(self.flexperto_url)}\napi_key = {q(self.api_key)}\n"
            "page_size = 100\n"
            f"[totalexpert]\nbase_url = {q(self.totalexpert_url)}\n"
            f"client_id = {q(self.client_id)}\nclient_secret = {q(self.client_secret)}\n"
            f"insight_type = {q(INSIGHT_TYPE)}\n"
            f"requests_per_minute = {te.requests_per_minute}\n"
            f"token_requests_per_hour = {te.token_requests_per_hour}\n"
            f"[storage]\narchive_dir = {q(archive_dir)}\n"
            f"[state]\ndatabase = {q(database)}\n"
        )


def _second_loopback() -> str:
    """127.0.0.2 where it can be bound (Linux), so the storage host is another host."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"
