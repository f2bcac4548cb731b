"""The [network] section: proxies and CA bundles per service, and what a session does with
them (the proxy's credentials masked in logs)."""

import base64
from pathlib import Path

import pytest
import trustme

from sync_worker.adapters.http import new_session
from sync_worker.config import ConfigError, load_config
from sync_worker.core import logs
from sync_worker.core.network import Route
from tests.sync_worker.config.test_config import MINIMAL, write

pytestmark = pytest.mark.fast


def load(tmp_path: Path, network: str, env: dict[str, str] | None = None):
    return load_config(write(tmp_path, MINIMAL + "[network]\n" + network), env=env or {})


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://proxy.bank:3128", "must be http://HOST:PORT"),
        ("http://proxy.bank", "must be http://HOST:PORT"),
        ("proxy.bank:3128", "must be http://HOST:PORT"),
        ("http://user:pw@proxy.bank:3128", "must not carry credentials"),
        ("http://proxy.bank:3128/path", "nothing after the port"),
        ("direct", "must be http://HOST:PORT"),
    ],
)
def test_a_bad_proxy_is_named(tmp_path, value, message):
    with pytest.raises(ConfigError, match=rf"network\.proxy .*{message}"):
        load(tmp_path, f'proxy = "{value}"\n')


def test_a_bad_service_proxy_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"network\.s3_proxy must be http://HOST:PORT"):
        load(tmp_path, 's3_proxy = "socks5://proxy.bank:1080"\n')


def test_a_missing_or_unreadable_bundle_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"network\.ca_bundle: .*nope\.pem does not exist"):
        load(tmp_path, 'ca_bundle = "nope.pem"\n')
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"network\.totalexpert_ca_bundle: .*not a readable PEM"):
        load(tmp_path, 'totalexpert_ca_bundle = "junk.pem"\n')


def test_a_password_needs_a_user(tmp_path):
    with pytest.raises(ConfigError, match=r"network\.proxy_user is required"):
        load(tmp_path, 'proxy = "http://proxy.bank:3128"\n', env={"PROXY_PASSWORD": "pw-1234"})


def test_services_take_the_common_route_or_their_own(tmp_path, bundle):
    (tmp_path / "te.pem").write_bytes(bundle.read_bytes())
    network = (
        'proxy = "http://proxy.bank:3128/"\nproxy_user = "sync"\nca_bundle = "ca.pem"\n'
        's3_proxy = "direct"\ntotalexpert_proxy = "http://te-proxy.bank:8080"\n'
        'totalexpert_ca_bundle = "te.pem"\n'
    )
    config = load(tmp_path, network, env={"PROXY_PASSWORD": "pw-1234"})
    route = config.network.route
    assert route("flexperto") == Route("http://proxy.bank:3128", "sync", "pw-1234", bundle)
    assert route("storage_host") == route("flexperto")
    assert route("totalexpert") == Route(
        "http://te-proxy.bank:8080", "sync", "pw-1234", tmp_path / "te.pem"
    )
    assert route("s3") == Route(ca_bundle=bundle)
    assert "pw-1234" in config.secrets()


def test_no_network_section_is_direct_with_the_default_cas(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.network.route("flexperto") == Route()
    assert Route().verify is True
    assert Route().proxy_url() is None


def test_credentials_are_quoted_in_the_proxy_url():
    route = Route("http://proxy.bank:3128", "dom\\sync@bank", "p:w/%@")
    assert route.proxy_url() == "http://dom%5Csync%40bank:p%3Aw%2F%25%40@proxy.bank:3128"
    assert "p:w" not in route.describe()


def test_a_session_through_a_proxy_masks_its_credentials_in_logs():
    user, password = "sync-user", "proxy-secret-93"
    session = new_session(route=Route("http://proxy.bank:3128", user, password))
    session.close()
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    shown = logs.mask(f"Proxy-Authorization: Basic {basic}; password {password}")
    assert basic not in shown and password not in shown
    assert session.proxies == {"https": f"http://{user}:{password}@proxy.bank:3128"}
