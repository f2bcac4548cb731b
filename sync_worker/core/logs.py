"""Structured logging: JSON lines for machines, readable lines on a terminal, no secrets.

Every secret the worker knows (api-key, client id and secret, access tokens as they are
obtained) is registered with :func:`add_secret`; a processor replaces any occurrence of one,
in any field, before the event is rendered. A secret is also found in the forms a server's
echo or an error message may show it in: in any case, URL-encoded, and base64-encoded (alone,
at any offset of a longer encoding, and as HTTP Basic credentials, registered as such).
Fields named like secrets are masked too.

When the log stream is the journal (systemd's ``JOURNAL_STREAM`` names its device and
inode), each line starts with its syslog priority, ``<3>`` for an error, so that
``journalctl -p err`` finds it.
"""

from __future__ import annotations

import base64
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

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
URLSAFE = str.maketrans("+/", "-_")  # base64's alphabet for URLs and file names
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# The syslog priority of each logging method (sd-daemon(3)); any other is logged at info.
PRIORITIES = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}
ERROR_TEXT_LIMIT = 500
# Where the project's packages sit (the repository, or site-packages), and their names.
SOURCE_ROOT = Path(__file__).resolve().parents[2]
OUR_PACKAGES = ("sync_worker", "jobs", "state")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_output: LogOutput | None = None  # where configure() sends the lines


class LogOutput:
    """The stream log lines are written to, unless a display drawn on the same terminal
    takes them for a while (:meth:`print_above`), to print them above itself."""

    def __init__(self, stream: TextIO, for_people: bool) -> None:
        self.stream = stream
        self.for_people = for_people  # console lines, not JSON
        self._above: Callable[[str], None] | None = None
        self._line = ""  # of a line handed over in parts (print writes its end apart)

    def write(self, text: str) -> None:
        above = self._above
        if above is None:
            self.stream.write(text)
            return
        *lines, self._line = (self._line + text).split("\n")
        for line in lines:
            above(line)

    def flush(self) -> None:
        if self._above is None:
            self.stream.flush()

    def print_above(self, printer: Callable[[str], None] | None) -> None:
        """Hand every line to ``printer`` (without its newline) from now on; None: to the
        stream again."""
        self._above = printer


def output() -> LogOutput | None:
    """Where log lines go, once :func:`configure` has run."""
    return _output


def add_secret(value: str | None) -> None:
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def add_basic_credentials(user: str, password: str) -> None:
    """Register ``user:password`` as it is sent in HTTP Basic auth (base64 of the pair)."""
    add_secret(base64.b64encode(f"{user}:{password}".encode()).decode())


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask registered secret values and secret-named fields."""
    pattern = _current_pattern()
    for key, value in list(event.items()):
        if key.lower() in SECRET_FIELDS and value is not None:
            event[key] = REDACTED
        else:
            event[key] = _scrub(value, pattern)
    return event


def mask(text: str) -> str:
    """``text`` with every registered secret replaced, for output outside the log."""
    return _scrub(text, _current_pattern())


def _current_pattern() -> re.Pattern[str] | None:
    with _secrets_lock:
        secrets = frozenset(_secrets)
    return _pattern(secrets)


@lru_cache(maxsize=4)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    """One expression for every form of every secret, the longest tried first; case is
    ignored (a secret lower- or upper-cased, a %2f for a %2F)."""
    forms = {form for secret in secrets for form in _forms(secret)}
    forms = {form for form in forms if len(form) >= MIN_SECRET_LENGTH}
    if not forms:
        return None
    ordered = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE)


def _forms(secret: str) -> Iterator[str]:
    """``secret`` as it is, URL-encoded, and base64-encoded in the usual alphabets."""
    yield secret
    yield quote(secret, safe="")
    yield quote_plus(secret)
    data = secret.encode()
    for encoded in _base64_forms(data):
        yield encoded
        yield encoded.translate(URLSAFE)


def _base64_forms(data: bytes) -> Iterator[str]:
    """The base64 of ``data`` whole (padded), and the characters that stand for it alone
    wherever it begins in a longer encoding (at each of the three offsets)."""
    yield base64.b64encode(data).decode()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode()
        first = -(-8 * offset // 6)  # the first character made of ``data``'s bits only
        last = 8 * (offset + len(data)) // 6  # past the last such character
        yield encoded[first:last]


def _scrub(value: Any, pattern: re.Pattern[str] | None) -> Any:
    if isinstance(value, str):
        return pattern.sub(REDACTED, value) if pattern else value
    if isinstance(value, dict):
        return {key: _scrub(item, pattern) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item, pattern) for item in value]
    if isinstance(value, BaseException):
        return _scrub(f"{type(value).__name__}: {value}", pattern)
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
    """Set up structlog, to stderr unless ``stream`` is given. ``fmt`` is ``json``,
    ``console``, or ``auto`` (console on a TTY)."""
    global _output
    stream = stream or sys.stderr
    for secret in secrets:
        add_secret(secret)
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    processors = [
        structlog.contextvars.merge_contextvars,  # the tenant, in every event of its work
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.format_exc_info,
        redact,
        renderer,
    ]
    if is_journal(stream, os.environ):
        processors.append(syslog_priority)
    _output = LogOutput(stream, for_people=fmt == "console")
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(_output),
        cache_logger_on_first_use=False,
    )


def is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether ``stream`` is connected to the journal: systemd sets ``JOURNAL_STREAM`` to
    the ``DEVICE:INODE`` of the journal stream it gives a service (systemd.exec(5)); it is
    inherited by children whose output goes elsewhere, so the stream's own must match."""
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor (a StringIO), or closed
        return False
    return environ.get("JOURNAL_STREAM") == f"{stat.st_dev}:{stat.st_ino}"


def syslog_priority(_logger: Any, method: str, rendered: str) -> str:
    """structlog processor after the renderer: the line prefixed with its priority, ``<N>``,
    which journald strips and keeps as the entry's PRIORITY."""
    return f"<{PRIORITIES.get(method, PRIORITIES['info'])}>{rendered}"
