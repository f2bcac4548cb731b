"""The worker over real TLS and through a real CONNECT proxy, both on loopback.

The sandbox speaks HTTPS with a certificate from a private CA made here (trustme); the
proxy is proxy.py (from PyPI), run as a process of its own with Basic auth, whose log
shows the tunnels it opened and what it was asked.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import trustme

from sync_worker.adapters.flexperto.client import FlexpertoClient
from sync_worker.adapters.http import TransientError
from sync_worker.app.runner import run_pass
from sync_worker.config import Config, load_config
from sync_worker.core.clock import FakeClock
from sync_worker.ops.checks import FAIL, OK, run_checks
from sync_worker.sandbox import STRICT, Sandbox, free_port
from sync_worker.sandbox.bucket import S3Server
from tests.conftest import TEST_SETTINGS

PROXY_USER = "sync"
PROXY_PASSWORD = "proxy-pass-7d1f"
STARTUP_SECONDS = 60  # proxy.py starts in about a second; a loaded machine is slower


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.fixture
def bundle(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "corporate-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def tls_sandbox(tmp_path: Path, clock: FakeClock, ca: trustme.CA) -> Iterator[Sandbox]:
    tls = server_context(ca, "127.0.0.1", "127.0.0.2", "localhost")
    with Sandbox(tmp_path / "sandbox", clock=clock, dialect=STRICT, tls=tls) as running:
        yield running


def config_for(tmp_path: Path, sandbox: Sandbox, network: str = "") -> Config:
    path = tmp_path / "config.toml"
    text = sandbox.config_toml("archives", "state.db") + TEST_SETTINGS
    path.write_text(text + (f"[network]\n{network}" if network else ""))
    path.chmod(0o600)
    return load_config(path, env={})


class ProxyPy:
    """proxy.py on a free loopback port, asking for Basic auth, logging at debug level."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        port_file, self.log_file = folder / "port", folder / "proxy.log"
        self._process = subprocess.Popen(
            [
                *(sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0"),
                *("--port-file", str(port_file), "--log-file", str(self.log_file)),
                *("--basic-auth", f"{PROXY_USER}:{PROXY_PASSWORD}", "--log-level", "DEBUG"),
                *("--threaded", "--num-acceptors", "1", "--num-workers", "1"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.port = int(self._wait_for(lambda: port_file.exists() and port_file.read_text()))
        self.url = f"http://127.0.0.1:{self.port}"

    def _wait_for(self, ready):
        """Wait (real time: another process) for ``ready()`` to be true; its value."""
        until = time.monotonic() + STARTUP_SECONDS
        while not (value := ready()):
            assert self._process.poll() is None, "proxy.py ended"
            assert time.monotonic() < until, "proxy.py is not ready"
            time.sleep(0.05)
        return value

    def log(self) -> str:
        return self.log_file.read_text()

    def upstreams(self) -> set[str]:
        """Every HOST:PORT the proxy opened a connection to."""
        return set(re.findall(r"Connecting to upstream (\S+)", self.log()))

    def requests(self) -> list[str]:
        """The ``METHOD HOST:PORT`` of every request it served (logged when it closes)."""
        return re.findall(r"access_log:\d+ - \S+ - (\w+ \S+) - ", self.log())

    def wait_for_upstreams(self, wanted: set[str]) -> set[str]:
        return self._wait_for(lambda: wanted <= self.upstreams() and self.upstreams())

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ProxyPy]:
    running = ProxyPy(tmp_path / "proxy")
    yield running
    running.stop()


def hostport(url: str) -> str:
    return url.split("://")[1].split("/")[0]


def finding(findings, name):
    return next(f for f in findings if f.name == name)


# --- TLS ----------------------------------------------------------------------------------


def test_an_unknown_ca_is_refused_naming_the_host(tmp_path, tls_sandbox, clock):
    config = config_for(tmp_path, tls_sandbox)
    client = FlexpertoClient(config.flexperto, config.http, clock, config.network)
    with pytest.raises(TransientError) as refused:
        client.negotiate_listing()
    client.close()
    where = hostport(tls_sandbox.flexperto_url)
    assert str(refused.value) == (
        f"flexperto {where}: TLS verification failed: certificate verify failed: "
        "unable to get local issuer certificate"
    )
    assert not refused.value.maybe_processed  # refused in the handshake: nothing was sent
    assert tls_sandbox.flexperto.requests == []


def test_check_names_host_and_cause_of_each_failure(tmp_path, tls_sandbox, clock):
    findings = run_checks(config_for(tmp_path, tls_sandbox), clock)
    listing, te = finding(findings, "flexperto listing"), finding(findings, "totalexpert")
    assert listing.status == te.status == FAIL
    assert listing.detail.startswith(f"flexperto {hostport(tls_sandbox.flexperto_url)}: TLS ")
    assert te.detail.startswith(f"totalexpert {hostport(tls_sandbox.totalexpert_url)}: TLS ")
    assert "certificate verify failed" in te.detail


def test_a_pass_logs_host_and_cause(tmp_path, tls_sandbox, clock, log_lines):
    run_pass(config_for(tmp_path, tls_sandbox), clock)
    errors = {e["event"]: e["error"] for e in log_lines() if "error" in e}
    assert errors["archive.list_failed"] == (
        f"flexperto {hostport(tls_sandbox.flexperto_url)}: TLS verification failed: "
        "certificate verify failed: unable to get local issuer certificate"
    )


def test_a_hostname_mismatch_is_named(tmp_path, clock, ca, bundle):
    tls = server_context(ca, "archives.example.org")
    with Sandbox(tmp_path / "sandbox", clock=clock, tls=tls) as box:
        config = config_for(tmp_path, box, f'ca_bundle = "{bundle}"\n')
        listing = finding(run_checks(config, clock), "flexperto listing")
    assert listing.status == FAIL
    assert listing.detail == (
        f"flexperto {hostport(box.flexperto_url)}: TLS verification failed: certificate "
        "verify failed: IP address mismatch, certificate is not valid for '127.0.0.1'."
    )


def test_a_pass_over_tls_with_the_configured_bundle(tmp_path, tls_sandbox, clock, bundle):
    config = config_for(tmp_path, tls_sandbox, f'ca_bundle = "{bundle}"\n')
    assert run_pass(config, clock).exit_code == 0
    available = [r for r in tls_sandbox.flexperto.records() if r["status"] == "ABANDONED"]
    assert len(available) == 3
    assert len(list(config.storage.archive_dir.rglob("*.zip"))) == 3
    assert len(tls_sandbox.totalexpert.insights()) == 3


def test_check_reports_each_services_proxy_and_ca(tmp_path, tls_sandbox, clock, bundle):
    proxy = f"http://127.0.0.1:{free_port()}"
    network = (
        f'ca_bundle = "{bundle}"\nproxy = "{proxy}"\n'
        f'proxy_user = "{PROXY_USER}"\nproxy_password = "{PROXY_PASSWORD}"\n'
        'totalexpert_proxy = "direct"\n'
    )
    findings = run_checks(config_for(tmp_path, tls_sandbox, network), clock)
    routes = {f.name: f.detail for f in findings if f.name.startswith("network ")}
    assert routes == {
        "network flexperto": f"through proxy {proxy} as user {PROXY_USER}; trusts CA bundle "
        f"{bundle}",
        "network storage_host": f"through proxy {proxy} as user {PROXY_USER}; trusts CA "
        f"bundle {bundle}",
        "network totalexpert": f"direct (no proxy); trusts CA bundle {bundle}",
    }
    assert all(finding(findings, name).status == OK for name in routes)
    assert PROXY_PASSWORD not in json.dumps([f.detail for f in findings])


# --- the proxy ----------------------------------------------------------------------------


def test_a_pass_through_the_proxy_tunnels_every_service(
    tmp_path, tls_sandbox, clock, bundle, proxy, log_lines
):
    network = (
        f'ca_bundle = "{bundle}"\nproxy = "{proxy.url}"\n'
        f'proxy_user = "{PROXY_USER}"\nproxy_password = "{PROXY_PASSWORD}"\n'
    )
    config = config_for(tmp_path, tls_sandbox, network)
    assert run_pass(config, clock).exit_code == 0
    assert len(tls_sandbox.totalexpert.insights()) == 3
    services = {hostport(url) for url in (tls_sandbox.flexperto_url, tls_sandbox.s3_url)}
    services.add(hostport(tls_sandbox.totalexpert_url))
    assert proxy.wait_for_upstreams(services) == services
    seen = proxy._wait_for(lambda: len(proxy.requests()) >= 3 and proxy.requests())
    assert {line.split()[0] for line in seen} == {"CONNECT"}  # nothing forwarded in clear
    assert tls_sandbox.api_key not in proxy.log()
    assert tls_sandbox.client_secret not in proxy.log()
    assert tls_sandbox.s3.api_key_rejections == 0
    served = tls_sandbox.requests()
    assert served and not [r for r in served if "proxy-authorization" in map(str.lower, r.headers)]
    assert PROXY_PASSWORD not in json.dumps(log_lines())


def test_the_proxy_wants_its_credentials(tmp_path, tls_sandbox, clock, bundle, proxy):
    config = config_for(tmp_path, tls_sandbox, f'ca_bundle = "{bundle}"\nproxy = "{proxy.url}"\n')
    listing = finding(run_checks(config, clock), "flexperto listing")
    assert listing.detail == (
        f"flexperto {hostport(tls_sandbox.flexperto_url)}: proxy 127.0.0.1:{proxy.port} "
        "refused the tunnel: 407 Proxy Authentication Required"
    )
    assert "ProxyAuthenticationFailed" in proxy.log()
    assert tls_sandbox.flexperto.requests == []


def test_an_unreachable_proxy_is_named(tmp_path, tls_sandbox, clock, bundle):
    port = free_port()
    network = f'ca_bundle = "{bundle}"\nproxy = "http://127.0.0.1:{port}"\n'
    listing = finding(
        run_checks(config_for(tmp_path, tls_sandbox, network), clock), "flexperto listing"
    )
    assert listing.detail == (
        f"flexperto {hostport(tls_sandbox.flexperto_url)}: proxy 127.0.0.1:{port} "
        "unreachable: connection refused"
    )


# --- other causes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "cause"),
    [
        ("https://nonexistent.invalid", "nonexistent.invalid: DNS lookup failed: "),
        ("https://127.0.0.1:{port}", "127.0.0.1:{port}: connection refused"),
    ],
)
def test_connection_failures_name_host_and_cause(tmp_path, clock, base_url, cause):
    port = free_port()
    path = tmp_path / "config.toml"
    path.write_text(
        f'[flexperto]\nbase_url = "{base_url.format(port=port)}"\napi_key = "k-123456"\n'
        '[totalexpert]\nclient_id = "i"\nclient_secret = "s"\n' + TEST_SETTINGS
    )
    config = load_config(path, env={})
    client = FlexpertoClient(config.flexperto, config.http, clock, config.network)
    with pytest.raises(TransientError) as failed:
        client.negotiate_listing()
    client.close()
    assert str(failed.value).startswith("flexperto " + cause.format(port=port))


# --- S3 -----------------------------------------------------------------------------------


@pytest.fixture
def tls_s3_sandbox(tmp_path, clock, ca, bundle) -> Iterator[Sandbox]:
    """The sandbox over TLS, storing in a bucket of an S3 server over TLS."""
    server = S3Server(tls=server_context(ca, "127.0.0.1"), ca_bundle=str(bundle))
    tls = server_context(ca, "127.0.0.1", "127.0.0.2", "localhost")
    try:
        with Sandbox(
            tmp_path / "sandbox", clock=clock, tls=tls, storage="s3", s3_server=server
        ) as running:
            yield running
    finally:
        server.stop()


def test_s3_over_tls_refuses_an_unknown_ca(tmp_path, tls_s3_sandbox, clock, bundle):
    network = f'flexperto_ca_bundle = "{bundle}"\n'
    store = finding(
        run_checks(config_for(tmp_path, tls_s3_sandbox, network), clock), "archive store"
    )
    assert store.status == FAIL
    assert store.detail == (
        f"s3 {hostport(tls_s3_sandbox.bucket.server.url)} (bucket {tls_s3_sandbox.bucket.name}): "
        "TLS verification failed: certificate verify failed: unable to get local issuer "
        "certificate"
    )


def test_s3_over_tls_through_the_proxy(tmp_path, tls_s3_sandbox, clock, bundle, proxy):
    network = (
        f'ca_bundle = "{bundle}"\nproxy = "{proxy.url}"\n'
        f'proxy_user = "{PROXY_USER}"\nproxy_password = "{PROXY_PASSWORD}"\n'
    )
    config = config_for(tmp_path, tls_s3_sandbox, network)
    assert run_pass(config, clock).exit_code == 0
    listed = tls_s3_sandbox.bucket.keys()
    stored = [key for key in listed if key.endswith(".zip")]
    assert len(stored) == 3
    s3 = hostport(tls_s3_sandbox.bucket.server.url)
    assert s3 in proxy.wait_for_upstreams({s3})
    assert tls_s3_sandbox.bucket.server.url.startswith("https://")


def test_s3_through_an_unreachable_proxy_is_named(tmp_path, tls_s3_sandbox, clock, bundle):
    port = free_port()
    network = f'ca_bundle = "{bundle}"\ns3_proxy = "http://127.0.0.1:{port}"\n'
    findings = run_checks(config_for(tmp_path, tls_s3_sandbox, network), clock)
    bucket = tls_s3_sandbox.bucket
    assert finding(findings, "archive store").detail == (
        f"S3 at {hostport(bucket.server.url)}: "
        f"s3 {bucket.name}: proxy 127.0.0.1:{port} unreachable: connection refused"
    )
    assert finding(findings, "flexperto listing").status == OK  # the others go direct


class TlsPings:
    """A healthcheck monitor speaking HTTPS on loopback; ``paths`` it was pinged at."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.paths: list[str] = []
        pings = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                pings.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}/ping/abc"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_the_healthcheck_ping_goes_through_the_proxy_too(
    tmp_path, tls_sandbox, clock, ca, bundle, proxy
):
    pings = TlsPings(server_context(ca, "127.0.0.1"))
    try:
        network = (
            f'ca_bundle = "{bundle}"\nproxy = "{proxy.url}"\n'
            f'proxy_user = "{PROXY_USER}"\nproxy_password = "{PROXY_PASSWORD}"\n'
        )
        config = config_for(tmp_path, tls_sandbox, network)
        config = replace(config, monitoring=replace(config.monitoring, healthcheck_url=pings.url))
        assert run_pass(config, clock).exit_code == 0
        assert pings.paths == ["/ping/abc/start", "/ping/abc"]
        assert hostport(pings.url) in proxy.wait_for_upstreams({hostport(pings.url)})
        route = finding(run_checks(config, clock), "network healthcheck")
        assert (
            route.detail
            == f"through proxy {proxy.url} as user {PROXY_USER}; trusts CA bundle {bundle}"
        )
    finally:
        pings.stop()
