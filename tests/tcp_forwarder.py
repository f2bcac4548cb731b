"""A TCP forwarder on loopback, standing for what sits in front of a store in real life (a
load balancer, a VIP): :meth:`Forwarder.stop` makes the store vanish as one that went away
does (connections cut, the port refusing), :meth:`Forwarder.start` brings it back on the
same port."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sync_worker.config import Config, load_config
from sync_worker.sandbox import Sandbox, free_port

CHUNK = 64 * 1024
ACCEPT_POLL_SECONDS = 0.05


class Forwarder:
    """Forwards 127.0.0.1:``port`` to ``upstream`` (host, port) while started."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.connections = 0  # accepted, since it was made

    def start(self) -> Forwarder:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener.settimeout(ACCEPT_POLL_SECONDS)
        self._stopping.clear()
        self._spawn(self._accept, listener)
        return self

    def stop(self) -> None:
        """Close the port and every connection through it; returns once nothing runs."""
        self._stopping.set()
        with self._lock:
            for sock in self._sockets:
                _close(sock)
            self._sockets.clear()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout=10)
        self._threads = [t for t in self._threads if t.is_alive()]

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while not self._stopping.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                self.connections += 1
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
                with self._lock:
                    if self._stopping.is_set():
                        _close(client)
                        _close(server)
                        return
                    self._sockets |= {client, server}
                self._spawn(_pump, client, server)
                self._spawn(_pump, server, client)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until either ends (or is closed by stop())."""
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def behind_a_forwarder(
    sandbox: Sandbox, tmp_path: Path, flexperto_extra: str = ""
) -> tuple[Forwarder, Config]:
    """The config in ``tmp_path`` (tests.conftest's) with its bucket reached through a
    forwarder, started, which a test stops to make the store vanish; one try per S3 call."""
    endpoint = urlsplit(sandbox.bucket.server.url)
    if endpoint.scheme != "http":
        pytest.skip("the forwarder stands in front of a plain-http endpoint only")
    forwarder = Forwarder((endpoint.hostname, endpoint.port)).start()
    path = tmp_path / "config.toml"
    text = path.read_text().replace(sandbox.bucket.server.url, forwarder.url)
    text = text.replace("page_size = 100\n", f"page_size = 100\n{flexperto_extra}")
    path.write_text(text.replace("retries = 3", "retries = 1"))
    return forwarder, load_config(path, env={})
