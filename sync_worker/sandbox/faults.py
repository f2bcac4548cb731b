"""Switchable faults for the sandbox servers.

A :class:`Fault` matches requests by method and path (a regular expression searched in the
path) and applies to the next ``times`` of them (``None``: all). Actions:

- ``respond``: answer ``status`` with ``headers`` and ``body`` instead of the real answer
  (``body`` None: the API's usual error JSON for that status);
- ``reset``: drop the connection without answering (the client sees a reset);
- ``delay``: wait ``delay`` real seconds, then answer normally (for client timeouts);
- ``truncate``: send the real status and headers but only half the body, then close;
- ``malformed_json``: answer 200 with a body that is not valid JSON;
- ``call``: call ``callback(state)`` and then answer normally (to change state mid-flow).

On the command line (``sync-worker sandbox --fault SPEC``) a fault is written
``SERVER:key=value,...`` with SERVER one of ``flexperto``, ``s3``, ``te`` and keys
``method``, ``path``, ``status``, ``action``, ``delay``, ``times`` (``inf`` for always),
``retry_after`` and ``body``; for example ``te:path=/insights,status=503,times=2``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ACTIONS = frozenset({"respond", "reset", "delay", "truncate", "malformed_json", "call"})
SERVERS = {"flexperto": "flexperto", "s3": "s3", "te": "totalexpert", "totalexpert": "totalexpert"}


@dataclass
class Fault:
    method: str | None = None
    path: str = ""
    status: int | None = None
    headers: dict[str, str] | None = None
    body: bytes | str | None = None
    action: str = "respond"
    delay: float = 0.0
    times: int | None = 1
    callback: Callable[[Any], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}")
        if self.action == "respond" and self.status is None:
            raise ValueError("a 'respond' fault needs a status")

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and bool(
            re.search(self.path, path)
        )

    @staticmethod
    def parse(text: str) -> tuple[str, Fault]:
        """Parse ``SERVER:key=value,...`` into (server name, Fault)."""
        server, _, spec = text.partition(":")
        if server not in SERVERS:
            raise ValueError(f"fault server must be one of flexperto, s3, te: {text!r}")
        options: dict[str, Any] = {}
        headers: dict[str, str] = {}
        for part in filter(None, spec.split(",")):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"fault option needs key=value: {part!r}")
            if key in ("status",):
                options[key] = int(value)
            elif key == "delay":
                options[key] = float(value)
            elif key == "times":
                options[key] = None if value == "inf" else int(value)
            elif key == "retry_after":
                headers["Retry-After"] = value
            elif key in ("method", "path", "action", "body"):
                options[key] = value
            else:
                raise ValueError(f"unknown fault option {key!r}")
        if headers:
            options["headers"] = headers
        return SERVERS[server], Fault(**options)


class FaultList:
    """The faults armed on one server, consumed in order, thread-safe."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str) -> Fault | None:
        """The first fault matching this request, counting one use of it."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None
