"""Structured logging: JSON lines for machines, readable lines on a terminal, no secrets.

Every secret the worker knows (api-key, client id and secret, access tokens as they are
obtained) is registered with :func:`add_secret`; a processor replaces any occurrence of one,
in any field, before the event is rendered. Fields named like secrets are masked too.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

REDACTED = "[REDACTED]"
SECRET_FIELDS = frozenset(
    {
        "api_key",
        "client_secret",
        "access_token",
        "refresh_token",
        "token",
        "password",
        "authorization",
        "secret",
    }
)
MIN_SECRET_LENGTH = 4
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
ERROR_TEXT_LIMIT = 500
# Where the project's packages sit (the repository, or site-packages), and their names.
SOURCE_ROOT = Path(__file__).resolve().parent.parent
OUR_PACKAGES = ("sync_worker", "jobs", "state")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def add_secret(value: str | None) -> None:
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask registered secret values and secret-named fields."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for key, value in list(event.items()):
        if key.lower() in SECRET_FIELDS and value is not None:
            event[key] = REDACTED
        else:
            event[key] = _scrub(value, secrets)
    return event


def mask(text: str) -> str:
    """``text`` with every registered secret replaced, for output outside the log."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    return _scrub(text, secrets)


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {key: _scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item, secrets) for item in value]
    if isinstance(value, BaseException):
        return _scrub(f"{type(value).__name__}: {value}", secrets)
    return value


def exception_fields(exc: BaseException) -> dict[str, str]:
    """Log fields for an unexpected exception, in place of a traceback: its class, its
    message (shortened; secrets are masked when the event is rendered), and where in the
    worker's own code it was raised, for a bug report."""
    fields = {"error_class": type(exc).__name__, "error": str(exc)[:ERROR_TEXT_LIMIT]}
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = _our_path(frame.filename)
        if path is not None:
            fields["where"] = f"{path}:{frame.lineno} in {frame.name}"
            break
    return fields


def _our_path(filename: str) -> str | None:
    """``filename`` relative to the source root if it belongs to one of our packages."""
    path = Path(filename).resolve()
    if not path.is_relative_to(SOURCE_ROOT):
        return None
    relative = path.relative_to(SOURCE_ROOT)
    return str(relative) if relative.parts[0] in OUR_PACKAGES else None


def configure(
    fmt: str = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Set up structlog. ``fmt`` is ``json``, ``console``, or ``auto`` (console on a TTY)."""
    stream = stream or sys.stdout
    for secret in secrets:
        add_secret(secret)
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # the tenant, in every event of its work
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
