"""Where the download redirect may lead: the policy, checked before and after connecting.

Flexperto's download endpoint redirects to a pre-signed URL on its storage host. That one
redirect is followed, by a session that carries no api-key, and only to a target this
policy allows:

- ``https://`` only; ``http://`` only to a loopback host listed in
  ``flexperto.download_hosts_allowed`` (a stand-in on this machine, such as the sandbox's
  storage host);
- never to a cloud metadata name (``metadata.google.internal``, ``metadata``,
  ``instance-data``...) nor to an address that is not global: loopback, link-local
  (169.254/16, fe80::/10, where metadata services answer), private (10/8, 172.16/12,
  192.168/16, fc00::/7), shared (100.64/10), multicast, reserved or unspecified; unless
  it is listed in ``download_hosts_allowed``, as ``host:port`` (that host at that port) or
  as an address or CIDR (any port). An IPv4 address carried in IPv6 (``::ffff:a.b.c.d``,
  6to4, NAT64's ``64:ff9b::/96``) is judged as the IPv4 address.

The URL is checked before anything is sent (:meth:`DownloadTargets.check_url`); the
address actually connected to is checked again once connected, before TLS or any byte of
the request (:meth:`DownloadTargets.check_peer`), so that a name that resolves (or
rebinds) to an internal address, or an address in a form only the resolver reads
(``127.1``), is refused as well.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix (RFC 6052)
DEFAULT_PORTS = {"https": 443, "http": 80}
HTTP_RULE = "https only; http only to a loopback host listed in download_hosts_allowed"


class Refused(Exception):
    """A download target the policy does not allow; the message names it and says why.

    Not an OSError, so that raised while connecting it passes through urllib3 and requests
    as it is."""


@dataclass(frozen=True)
class DownloadTargets:
    """The policy, with the operator's allowlist (see the module docstring)."""

    hosts: frozenset[tuple[str, int]] = frozenset()  # (lower-case name or address, port)
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> DownloadTargets:
        """The policy allowing ``entries``; ValueError names a bad one."""
        hosts: set[tuple[str, int]] = set()
        networks: list[Network] = []
        for entry in entries:
            network = _network(entry)
            if network is not None:
                networks.append(network)
            else:
                hosts.add(_host_port(entry))
        return cls(frozenset(hosts), tuple(networks))

    def check_url(self, url: str) -> None:
        """Refuse ``url`` unless the policy allows it, as far as the URL tells."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
        except ValueError:
            raise Refused(f"{host or url[:100]} refused: the URL has no valid port") from None
        where = _where(host, port)
        if not host:
            raise Refused(f"{url[:100]} refused: the URL names no host")
        if parts.scheme not in DEFAULT_PORTS:
            raise Refused(f"{where}: refused URL scheme {parts.scheme!r} ({HTTP_RULE})")
        address = _address(host)
        listed = self._listed(host, port, address)
        if parts.scheme == "http" and not (listed and _loopback(host, address)):
            raise Refused(f"{where}: refused URL scheme 'http' ({HTTP_RULE})")
        if listed:
            return
        if host.rstrip(".") in METADATA_NAMES:
            raise Refused(f"{where} refused: a cloud metadata name")
        if address is not None and (reason := _internal(address)):
            raise Refused(f"{where} refused: {reason}")

    def check_peer(self, scheme: str, host: str, port: int, peer: str) -> None:
        """Refuse a connection to ``host``:``port`` that reached the address ``peer``."""
        address = _plain(ipaddress.ip_address(peer))
        where = _where(host.lower(), port)
        listed = self._listed(host.lower(), port, address)
        if scheme != "https" and not (listed and address.is_loopback):
            raise Refused(f"{where}: refused URL scheme {scheme!r} ({HTTP_RULE})")
        if not listed and (reason := _internal(address)):
            raise Refused(f"{where} refused: connected to {address}, {reason}")

    def _listed(self, host: str, port: int, address: Address | None) -> bool:
        if (host, port) in self.hosts:
            return True
        if address is None:
            return False
        return (str(address), port) in self.hosts or any(address in n for n in self.networks)


def _internal(address: Address) -> str | None:
    """Why ``address`` is no target for a download, if it is not."""
    address = _plain(address)
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if address.is_private:
        return "a private address"
    if address.is_multicast or not address.is_global:
        return "not a global address"
    return None


def _plain(address: Address) -> Address:
    """An IPv4 address carried in IPv6 (mapped ``::ffff:a.b.c.d``, 6to4, NAT64) as the
    IPv4 address, which is where a gateway would take it."""
    if not isinstance(address, ipaddress.IPv6Address):
        return address
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.ipv4_mapped or address.sixtofour or address


def _address(host: str) -> Address | None:
    try:
        return _plain(ipaddress.ip_address(host))
    except ValueError:
        return None


def _loopback(host: str, address: Address | None) -> bool:
    return host == "localhost" or (address is not None and address.is_loopback)


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _network(entry: str) -> Network | None:
    """``entry`` as an address or CIDR, if it is one (ValueError if a malformed CIDR)."""
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        if "/" in entry:
            raise ValueError(f"{entry!r} is not an address range") from None
        return None


def _host_port(entry: str) -> tuple[str, int]:
    host, _, port = entry.rpartition(":")
    host = host.strip("[]").lower()
    valid_host = host.isascii() and all(char.isalnum() or char in "-._:" for char in host)
    valid_port = port.isascii() and port.isdigit() and 0 < int(port) < 65536
    if not (host and valid_host and valid_port):
        raise ValueError(f"{entry!r} is neither HOST:PORT nor an address or CIDR")
    address = _address(host)
    return (str(address) if address is not None else host), int(port)
