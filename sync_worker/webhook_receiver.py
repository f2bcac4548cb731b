"""The endpoint Flexperto's webhook calls reach (through the operator's TLS proxy): a
delivery to a known secret path wakes that tenant's archive job, and nothing else.

The answer never waits for the work: it is given as soon as the wake-up is noted, well
within Flexperto's three seconds, whatever the job is doing. Deliveries may repeat, come
together or out of order, or name an archive we do not know: each only wakes the job, which
lists and claims what is available, so all of that is harmless. Polling remains the source
of truth; a lost delivery costs latency, never an archive. Any path but a current secret is
404, any method but POST 405.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from sync_worker.config import parse_listen
from sync_worker.flexperto.records import SAFE_ID

MAX_BODY = 64 * 1024  # a notification is a few hundred bytes
READ_TIMEOUT_SECONDS = 2.0

log = structlog.get_logger()


class WebhookReceiver:
    """An HTTP server in a thread; ``wake(tenant)`` is called for each good delivery."""

    def __init__(self, listen: str, wake: Callable[[str], None]) -> None:
        self._wake = wake
        self._secrets: dict[str, str] = {}  # secret path -> tenant
        self._lock = threading.Lock()
        host, port = parse_listen(listen, "webhook.listen")
        self._server = _Server((host, port), _handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> WebhookReceiver:
        self._thread.start()
        log.info("webhook.listening", port=self.port)
        return self

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def accept(self, tenant: str, secrets: list[str]) -> None:
        """From now on, accept deliveries for ``tenant`` at these secrets (only)."""
        with self._lock:
            self._secrets = {s: t for s, t in self._secrets.items() if t != tenant}
            self._secrets.update(dict.fromkeys(secrets, tenant))

    def tenant_for(self, path: str) -> str | None:
        secret = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            return self._secrets.get(secret) if secret else None

    def delivered(self, tenant: str, body: bytes) -> None:
        where = {"tenant": tenant} if tenant else {}
        log.info("webhook.received", **_archive_fields(body), **where)
        self._wake(tenant)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A broken delivery (a client gone, a read timed out) is a log line, not a
        traceback on stderr."""
        log.warning("webhook.bad_request")


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = READ_TIMEOUT_SECONDS  # a slow client cannot hold a thread for long

        def do_POST(self) -> None:
            tenant = receiver.tenant_for(self.path)
            if tenant is None:
                self._answer(404)
                return
            length = _length(self.headers.get("Content-Length"))
            if length is None or length > MAX_BODY:
                self._answer(411 if length is None else 413)
                return
            receiver.delivered(tenant, self.rfile.read(length))
            self._answer(204)

        def do_GET(self) -> None:
            self._answer(405)

        do_PUT = do_DELETE = do_PATCH = do_GET

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:  # the paths hold secrets: no access log
            pass

    return Handler


def _length(header: str | None) -> int | None:
    return int(header) if header is not None and header.isdigit() else None


def _archive_fields(body: bytes) -> dict[str, str]:
    """The archive a delivery names, for the log, if it names one in the documented shape
    with a plausible id; the delivery wakes the job either way."""
    try:
        data = json.loads(body).get("data")
        archive_id = data.get("archive_id")
        conference_id = data.get("archive_subject", {}).get("conference_id")
    except (ValueError, AttributeError):
        return {"payload": "unreadable"}
    fields = {}
    for name, value in (("archive_id", archive_id), ("conference_id", conference_id)):
        if isinstance(value, str) and SAFE_ID.fullmatch(value):
            fields[name] = value
    return fields
