"""How the worker reaches each service: through which proxy, trusting which CAs.

A :class:`Route` is what ``[network]`` says for one service (``flexperto``, its
``storage_host`` that downloads are redirected to, ``totalexpert``, ``s3``): an HTTP proxy
that ``https://`` traffic is tunnelled through with ``CONNECT`` (the proxy sees the host and
port, never a header or a byte of the request), with its credentials; and a PEM bundle of
the CAs to trust in place of the default ones. TLS certificates are always verified.

Plain ``http://``, which the worker speaks only to loopback, never goes through the proxy:
a proxy forwards such a request as it is, headers (the api-key) included.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

SERVICES = ("flexperto", "storage_host", "totalexpert", "s3")
# A service's own proxy key set to this: no proxy for it, whatever [network] proxy says.
DIRECT = "direct"
DEFAULT_CAS = "the default CAs (certifi)"


@dataclass(frozen=True)
class Route:
    """One service's way out: ``proxy`` (``http://HOST:PORT``, empty for none), its
    credentials, and the CA bundle to trust (None: the default CAs)."""

    proxy: str = ""
    user: str = ""
    password: str = ""
    ca_bundle: Path | None = None

    def proxy_url(self) -> str | None:
        """The proxy with its credentials, as requests and botocore take it (never log it)."""
        if not self.proxy:
            return None
        if not self.user:
            return self.proxy
        parts = urlsplit(self.proxy)
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"{parts.scheme}://{credentials}@{parts.netloc}"

    @property
    def verify(self) -> str | bool:
        """requests' and botocore's ``verify``: the bundle, or True (the defaults)."""
        return str(self.ca_bundle) if self.ca_bundle else True

    def describe(self) -> str:
        """In words, without the credentials."""
        way = "direct (no proxy)"
        if self.proxy:
            way = f"through proxy {self.proxy}" + (f" as user {self.user}" if self.user else "")
        trust = f"CA bundle {self.ca_bundle}" if self.ca_bundle else DEFAULT_CAS
        return f"{way}; trusts {trust}"


def check_proxy(value: str) -> str:
    """``value`` as a proxy URL ``http://HOST:PORT`` (or :data:`DIRECT`); ValueError says
    what is wrong with it."""
    if value == DIRECT:
        return value
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise ValueError(f"must be http://HOST:PORT, got {value!r}")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials: give proxy_user and proxy_password")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"must be http://HOST:PORT with nothing after the port, got {value!r}")
    return f"http://{parts.netloc}"


def check_ca_bundle(path: Path) -> None:
    """ValueError unless ``path`` is a readable PEM file of CA certificates."""
    try:
        context = ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{path} is not a readable PEM bundle of CAs: {exc}") from None
    if not context.cert_store_stats()["x509"]:
        raise ValueError(f"{path} holds no certificate")
