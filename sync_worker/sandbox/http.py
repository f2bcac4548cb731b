"""The sandbox servers' common base: a threaded HTTP/1.1 server on loopback that logs every
request it serves and applies the faults armed on it.

A server is a :class:`FakeService` subclass (the API: ``handle(Incoming) -> Reply``) bound by
a :class:`SandboxServer`. Replies always carry ``Content-Length``, so connections stay alive.
Given an ``ssl.SSLContext`` (``tls``), a server speaks HTTPS: each connection's handshake
happens in its own thread, so that a client refusing the certificate holds up no other.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sync_worker.core.clock import Clock
from sync_worker.sandbox.faults import Fault, FaultList

SEND_CHUNK = 1024 * 1024
TRICKLE_BYTES = 64
ENDLESS_LIMIT = 4 * 1024 * SEND_CHUNK


@dataclass(frozen=True)
class LoggedRequest:
    """One request as a server saw it; times are the sandbox clock's."""

    server: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int
    received_at: float
    finished_at: float


@dataclass(frozen=True)
class Incoming:
    """A parsed request handed to :meth:`FakeService.handle`."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """An answer: a body in memory, or a byte range of a file streamed from disk."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None
    offset: int = 0
    length: int = 0

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
        body = json.dumps(payload).encode()
        return cls(status, body, {"Content-Type": "application/json", **(headers or {})})

    @property
    def content_length(self) -> int:
        return self.length if self.file is not None else len(self.body)

    def chunks(self, limit: int | None = None) -> Iterator[bytes]:
        """The body, at most ``limit`` bytes of it."""
        remaining = self.content_length if limit is None else min(limit, self.content_length)
        if self.file is None:
            yield self.body[:remaining]
            return
        with self.file.open("rb") as handle:
            handle.seek(self.offset)
            while remaining > 0:
                chunk = handle.read(min(SEND_CHUNK, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk


class FakeService:
    """What one sandbox server knows; subclasses answer requests in :meth:`handle`.

    ``sequence`` numbers requests on arrival; the sandbox shares one between its servers so
    that their logs merge in order of arrival.
    """

    name = "server"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.faults = FaultList()
        self.sequence: Callable[[], int] = itertools.count().__next__
        self._log: list[tuple[int, LoggedRequest]] = []

    @property
    def requests(self) -> list[LoggedRequest]:
        """A copy of this server's request log, in order of arrival."""
        return [record for _, record in self.numbered_requests()]

    def numbered_requests(self) -> list[tuple[int, LoggedRequest]]:
        """The request log with each request's arrival number."""
        with self.lock:
            return sorted(self._log, key=lambda entry: entry[0])

    def clear_requests(self) -> None:
        with self.lock:
            self._log.clear()

    def log(self, number: int, record: LoggedRequest) -> None:
        with self.lock:
            self._log.append((number, record))

    def handle(self, request: Incoming) -> Reply:
        raise NotImplementedError

    def error(self, status: int, message: str) -> Reply:
        """This API's error body for ``status``."""
        return Reply.json(status, {"error": message})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    service: FakeService  # set on the per-server subclass
    timeout = 30
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()  # a failure ends this connection (handle_error)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _dispatch(self) -> None:
        number, received_at = self.service.sequence(), self.service.clock.now()
        request = self._read_request()
        fault = self.service.faults.take(request.method, request.path)
        action = fault.action if fault else None
        reply = None if action == "reset" else self._answer(request, fault)
        # Logged before the answer goes out: whoever has the answer finds the request logged.
        self.service.log(
            number,
            LoggedRequest(
                server=self.service.name,
                method=request.method,
                path=request.path,
                query=request.query,
                headers=request.headers,
                body=request.body,
                status=0 if reply is None else reply.status,
                received_at=received_at,
                finished_at=self.service.clock.now(),
            ),
        )
        if reply is None:
            self._reset()
        else:
            self._send(reply, fault)

    def _read_request(self) -> Incoming:
        try:
            length = max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:  # the body cannot be framed: take none and close afterwards
            length, self.close_connection = 0, True
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        return Incoming(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={key.lower(): value for key, value in self.headers.items()},
            body=body,
        )

    def _answer(self, request: Incoming, fault: Fault | None) -> Reply:
        """The reply to send: the fault's, or the API's own (after a delay or a callback)."""
        action = fault.action if fault else None
        if action == "delay":
            time.sleep(fault.delay)
        if action == "call" and fault.callback is not None:
            fault.callback(self.service)
        if action == "respond":
            return self._fault_reply(fault)
        if action == "malformed_json":
            return Reply(200, b'{"items": [', {"Content-Type": "application/json"})
        return self.service.handle(request)

    def _fault_reply(self, fault: Fault) -> Reply:
        assert fault.status is not None
        if fault.body is None:
            reply = self.service.error(fault.status, f"injected HTTP {fault.status}")
        else:
            body = fault.body.encode() if isinstance(fault.body, str) else fault.body
            reply = Reply(fault.status, body, {"Content-Type": "application/json"})
        reply.headers.update(fault.headers or {})
        return reply

    def _send(self, reply: Reply, fault: Fault | None) -> None:
        action = fault.action if fault else None
        try:
            if action == "endless":
                self._write_endless(reply)
            elif action == "trickle":
                self._write_trickle(reply, fault.delay if fault else 0.0)
            elif action == "gzip":
                self._write(_gzipped(reply), truncate=False)
            else:
                self._write(reply, truncate=action == "truncate")
        except OSError:  # the client hung up (timed out) before the answer was complete
            self.close_connection = True

    def _write_endless(self, reply: Reply) -> None:
        """The reply without a length, its body followed by zeros until the client hangs
        up (or ENDLESS_LIMIT bytes, so that a careless client cannot keep a thread)."""
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for chunk in reply.chunks():
            self.wfile.write(chunk)
        zeros = bytes(SEND_CHUNK)
        for _ in range(ENDLESS_LIMIT // SEND_CHUNK):
            self.wfile.write(zeros)

    def _write_trickle(self, reply: Reply, delay: float) -> None:
        """The reply with its length, its body TRICKLE_BYTES at a time, each piece after
        ``delay`` seconds of the service's clock. The pieces go as fast as the socket takes
        them, so on a fake clock the trickle may run ahead of its reader by what the
        socket buffers hold: the reader may see the time its headers came as late."""
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(reply.content_length))
        self.end_headers()
        for chunk in reply.chunks():
            for start in range(0, len(chunk), TRICKLE_BYTES):
                self.service.clock.sleep(delay)
                self.wfile.write(chunk[start : start + TRICKLE_BYTES])

    def _write(self, reply: Reply, truncate: bool) -> None:
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(reply.content_length))
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = reply.content_length // 2 if truncate else None
        if reply.file is not None and limit is None:
            with reply.file.open("rb") as handle:  # zero-copy, as a real storage host would
                self.connection.sendfile(handle, reply.offset, reply.length)
            return
        for chunk in reply.chunks(limit):
            self.wfile.write(chunk)
        if truncate:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the connection was reset on purpose
            super().finish()


def _gzipped(reply: Reply) -> Reply:
    """The reply with its body gzip-compressed and said so, whether asked for or not."""
    body = gzip.compress(b"".join(reply.chunks()))
    return Reply(reply.status, body, {**reply.headers, "Content-Encoding": "gzip"})


class _Server(ThreadingHTTPServer):
    """Tracks its open connections so that stopping can close them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # parallel clients must not wait for a SYN retransmit

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(address, handler)
        self._tls = tls
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End every open connection (kept-alive ones included)."""
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, _client_address: Any) -> None:
        pass  # clients that hang up mid-answer are part of the game


class SandboxServer:
    """One server: a fake service bound to a loopback address (port 0: a free one),
    speaking HTTPS with ``tls``."""

    def __init__(
        self,
        service: FakeService,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        handler = type(f"{service.name}Handler", (_Handler,), {"service": service})
        self.service = service
        self._scheme = "https" if tls else "http"
        self._server = _Server((host, port), handler, tls)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"sandbox-{service.name}",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
        self._server.close_connections()
