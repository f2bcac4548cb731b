"""The endpoint Flexperto's webhook calls reach (through the operator's TLS proxy): a
delivery to a known secret path wakes that tenant's archive job, and nothing else.

The answer never waits for the work: it is given as soon as the wake-up is noted, well
within Flexperto's three seconds, whatever the job is doing. Deliveries may repeat, come
together or out of order, or name an archive we do not know: each only wakes the job, which
lists and claims what is available, so all of that is harmless. Polling remains the source
of truth; a lost delivery costs latency, never an archive. Any path but a current secret is
404, any method but POST 405.

A hostile or broken client holds little: at most ``max_connections`` requests are handled at
a time (one thread each); a connection past them is answered 503 and closed at once, never
queued. Each request must arrive whole within ``deadline_seconds``, however slowly its bytes
trickle in; past that it is cut.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from sync_worker.adapters.flexperto.records import SAFE_ID
from sync_worker.config import parse_listen

MAX_BODY = 64 * 1024  # a notification is a few hundred bytes
# Deliveries are rare and answered at once: more than this at a time is an attack or a fault.
MAX_CONNECTIONS = 16
# The whole request, headers and body; Flexperto itself gives up waiting after three seconds.
REQUEST_DEADLINE_SECONDS = 3.0
BUSY_ANSWER = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

log = structlog.get_logger()


class WebhookReceiver:
    """An HTTP server in a thread; ``wake(tenant)`` is called for each good delivery."""

    def __init__(
        self,
        listen: str,
        wake: Callable[[str], None],
        max_connections: int = MAX_CONNECTIONS,
        deadline_seconds: float = REQUEST_DEADLINE_SECONDS,
    ) -> None:
        self._wake = wake
        self._secrets: dict[str, str] = {}  # secret path -> tenant
        self._lock = threading.Lock()
        host, port = parse_listen(listen, "webhook.listen")
        self._server = _Server((host, port), _handler(self, deadline_seconds), max_connections)
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
    """A thread per request, up to ``max_connections`` at a time; an IPv6 address (``::1``)
    is served on an IPv6 socket."""

    daemon_threads = True
    # Connections the kernel holds until they are taken or refused (each at once): a flood
    # fills this, not the threads, and a delivery behind it is still answered promptly.
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Handle the request in a thread of its own if a slot is free; else refuse it now."""
        if not self._slots.acquire(blocking=False):
            log.warning("webhook.busy")
            _refuse(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A broken delivery (a client gone, a read timed out) is a log line, not a
        traceback on stderr."""
        log.warning("webhook.bad_request")


def _refuse(request: socket.socket) -> None:
    """Answer 503 if the client's socket takes it without waiting; it is closed either way."""
    try:
        request.setblocking(False)
        request.send(BUSY_ANSWER)
    except OSError:
        pass


def _handler(receiver: WebhookReceiver, deadline_seconds: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = deadline_seconds  # bounds the answer's writes; reads: see setup()

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # the plain reader, replaced by one that keeps the deadline
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline_seconds))

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


class _DeadlineReader(io.RawIOBase):
    """A connection's bytes, each read waiting only for what is left of the request's
    deadline: a request that is not whole by then is cut (``TimeoutError``)."""

    def __init__(self, connection: socket.socket, seconds: float) -> None:
        self._connection = connection
        self._deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError("the request took longer than its deadline")
            self._connection.settimeout(left)
            return self._connection.recv_into(buffer)
        except TimeoutError:
            log.warning("webhook.too_slow")
            raise


def _length(header: str | None) -> int | None:
    """The body's length as the header states it in ASCII digits ("²" is a digit too)."""
    if header is None or not (header.isascii() and header.isdigit()):
        return None
    return int(header)


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
