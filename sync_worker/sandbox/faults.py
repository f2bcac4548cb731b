"""Switchable faults for the sandbox servers.

A :class:`Fault` matches requests by method (``None``: any) and path (a regular expression
searched in the path, query excluded) and applies to the next ``times`` matching requests
(``None``: all of them). Faults are checked in the order they were added, before the
server's normal handling; faulted requests are logged like any other. Actions:

- ``respond``: answer ``status`` with ``headers`` and ``body`` instead of the real answer
  (``body`` None: that API's usual error body for the status);
- ``reset``: drop the connection without answering (SO_LINGER 0: the client sees a reset);
- ``delay``: sleep ``delay`` real seconds, then answer normally (for client timeouts);
- ``truncate``: send the real status and headers but only the first half of the body, then
  close (meant for the storage host's downloads);
- ``endless``: send the real status and headers, no length, and the body followed by zeros
  until the client hangs up;
- ``trickle``: send the real status and headers, then the body a few bytes at a time, each
  piece after ``delay`` seconds of the sandbox's clock (a fake clock just moves on: the
  client sees a peer slower than any deadline, and nobody waits);
- ``gzip``: send the real answer gzip-compressed with ``Content-Encoding: gzip``, whatever
  the client accepts;
- ``malformed_json``: answer 200, ``Content-Type: application/json``, body ``{"items": [``;
- ``call``: call ``callback(service)`` with the fake service, then answer normally (to change
  its data mid-flow, for example a record's status between listing and download).

Command-line syntax (``sync-worker sandbox --fault SPEC``, parsed by :meth:`Fault.parse`)::

    SERVER:key=value,key=value,...

SERVER is ``flexperto``, ``s3`` or ``te`` (``totalexpert`` is accepted too). Keys:
``method`` (GET, POST...), ``path`` (regular expression; it cannot contain a comma),
``status`` (int), ``action`` (one of the above, default ``respond``), ``delay`` (seconds),
``times`` (int, or ``inf`` for every matching request; default 1), ``retry_after``
(sets a ``Retry-After`` header) and ``body`` (text). Examples::

    te:path=/insights$,method=POST,status=503,times=2
    te:status=429,retry_after=7
    flexperto:path=/download$,action=delay,delay=2.5
    s3:action=trickle,delay=1
    s3:action=truncate,times=inf
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ACTIONS = frozenset(
    {
        "respond",
        "reset",
        "delay",
        "truncate",
        "endless",
        "trickle",
        "gzip",
        "malformed_json",
        "call",
    }
)
SERVER_NAMES = {
    "flexperto": "flexperto",
    "s3": "s3",
    "te": "totalexpert",
    "totalexpert": "totalexpert",
}
OPTION_KEYS = frozenset(
    {"method", "path", "status", "action", "delay", "times", "retry_after", "body"}
)


@dataclass
class Fault:
    """One switchable misbehaviour of a sandbox server (see the module docstring)."""

    method: str | None = None
    path: str = ".*"
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
        if self.action == "call" and self.callback is None:
            raise ValueError("a 'call' fault needs a callback")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1 (or None for always)")
        try:
            re.compile(self.path)
        except re.error as exc:
            raise ValueError(f"fault path is not a regular expression: {exc}") from None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and bool(
            re.search(self.path, path)
        )

    @staticmethod
    def parse(text: str) -> tuple[str, Fault]:
        """Parse ``SERVER:key=value,...`` into (server name, Fault); ``te`` -> ``totalexpert``."""
        server, colon, spec = text.partition(":")
        if not colon or server not in SERVER_NAMES:
            raise ValueError(f"a fault reads SERVER:key=value,... (flexperto, s3, te): {text!r}")
        options: dict[str, Any] = {}
        for part in filter(None, spec.split(",")):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"fault option needs key=value: {part!r}")
            _set_option(options, key.strip(), value.strip())
        return SERVER_NAMES[server], Fault(**options)


def _set_option(options: dict[str, Any], key: str, value: str) -> None:
    """Store one ``key=value`` of a fault spec as a :class:`Fault` argument."""
    if key not in OPTION_KEYS:
        raise ValueError(f"unknown fault option {key!r}")
    try:
        if key == "status":
            options["status"] = int(value)
        elif key == "delay":
            options["delay"] = float(value)
        elif key == "times":
            options["times"] = None if value == "inf" else int(value)
        elif key == "retry_after":
            options.setdefault("headers", {})["Retry-After"] = value
        else:
            options[key] = value
    except ValueError:
        raise ValueError(f"bad value for fault option {key}: {value!r}") from None


@dataclass
class _Armed:
    fault: Fault
    left: int | None  # uses left; None: unlimited


class FaultList:
    """The faults armed on one server, checked in order and used up, thread-safe."""

    def __init__(self) -> None:
        self._armed: list[_Armed] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._armed.append(_Armed(fault, fault.times))

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._armed)

    def take(self, method: str, path: str) -> Fault | None:
        """The first fault matching this request, counting one use of it."""
        with self._lock:
            for armed in self._armed:
                if armed.fault.matches(method, path):
                    if armed.left is not None:
                        armed.left -= 1
                        if armed.left <= 0:
                            self._armed.remove(armed)
                    return armed.fault
        return None
