"""The worker's configuration: every key declared once, below, as a dataclass field.

Each field carries its default (none: required), its help text, and what makes a value
valid. From these declarations come the loading and validation here, the commented example
that ``sync-worker init-config`` writes (:func:`example_toml`), and the manual's table of
keys (:func:`markdown_table`, held equal to docs/configuration.md by a test).

Values come, highest priority first, from ``SYNC_WORKER_<SECTION>_<KEY>`` environment
variables, the config file, a secret's own environment variable, a systemd credential in
``$CREDENTIALS_DIRECTORY``, and finally the default. Every error names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import textwrap
import tomllib
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from sync_worker.flexperto.download_targets import DownloadTargets
from sync_worker.network import DIRECT, SERVICES, Route, check_ca_bundle, check_proxy

ENV_PREFIX = "SYNC_WORKER_"
CONFIG_ENV = "SYNC_WORKER_CONFIG"
QUOTE = '"'
COMMENT_WIDTH = 90
MIB = 1024 * 1024
GIB = 1024 * MIB
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
OTHERS_READ = 0o044  # the group's and everyone's read bits
REMOTE_METRICS = "metrics.allow_remote"  # the key that lets metrics.listen leave loopback
MAX_UPLOAD_CONCURRENCY = 32  # parts in flight per upload: threads and connections each

log = structlog.get_logger()


class ConfigError(Exception):
    """The configuration is unusable; the message names the offending key."""


@dataclass(frozen=True)
class Rules:
    """What a key's declaration says beyond its type and default."""

    help: str
    example: Any = None  # shown in the example file instead of the default
    positive: bool = False
    optional: bool = False  # a string that may be empty
    choices: tuple[str, ...] = ()
    url: bool = False  # https://, or http:// to loopback
    secret_env: str | None = None  # a secret may also come from this variable...
    credential: str | None = None  # ... or from this systemd credential


def setting(default: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """Declare a config key: its default (leave it out for a required key) and its
    :class:`Rules`."""
    return field(default=default, metadata={"rules": Rules(**rules)})


# kw_only: required keys may follow keys with defaults, in the order they read best.
@dataclass(frozen=True, kw_only=True)
class FlexpertoConfig:
    base_url: str = setting(
        help="tenant base URL, `https://{tenant}.{test,live}.flexperto.com`; the worker "
        "adds `/api/v2`",
        example="https://demo.test.flexperto.com",
        url=True,
    )
    api_key: str = setting(
        help="admin api-key (JWT); sent to Flexperto only, never to the download host",
        secret_env="FLEXPERTO_API_KEY",
        credential="flexperto_api_key",
    )
    page_size: int = setting(100, help="records per list request", positive=True)
    max_list_pages: int = setting(
        1000,
        help="list requests per status in a pass; past it the listing ends with what it has "
        "(stored this pass, the rest in later ones), with a warning",
        positive=True,
    )
    max_parallel_downloads: int = setting(
        4,
        help="archives downloaded at the same time, each verified and stored on its own",
        positive=True,
    )
    max_archive_gib: float = setting(
        64.0,
        help="a download is stopped past the record's size, or past this when the record "
        "gives none",
        positive=True,
    )
    download_hosts_allowed: tuple[str, ...] = setting(
        (),
        help="internal hosts the download redirect may lead to, each `HOST:PORT` or an "
        "address or CIDR (any port); any other loopback, link-local, private or cloud "
        "metadata target is refused, and `http://` is taken only to a listed loopback host",
    )

    def __post_init__(self) -> None:
        try:
            DownloadTargets.parse(self.download_hosts_allowed)
        except ValueError as exc:
            raise ConfigError(f"config key flexperto.download_hosts_allowed: {exc}") from None

    @property
    def max_archive_bytes(self) -> int:
        return int(self.max_archive_gib * GIB)

    @property
    def download_targets(self) -> DownloadTargets:
        return DownloadTargets.parse(self.download_hosts_allowed)


@dataclass(frozen=True, kw_only=True)
class TotalExpertConfig:
    base_url: str = setting(
        "https://public.totalexpert.net/v1", help="Total Expert API base URL", url=True
    )
    client_id: str = setting(
        help="OAuth client id",
        secret_env="TOTALEXPERT_CLIENT_ID",
        credential="totalexpert_client_id",
    )
    client_secret: str = setting(
        help="OAuth client secret",
        secret_env="TOTALEXPERT_CLIENT_SECRET",
        credential="totalexpert_client_secret",
    )
    insight_type: str = setting(
        "flexperto_conference_archived",
        help="system name of the insight type TE created for this integration",
    )
    requests_per_minute: int = setting(
        1000,
        help="requests allowed in any 60 s (TE's limit per source IP: lower it if other "
        "programs share the IP)",
        positive=True,
    )
    token_requests_per_hour: int = setting(
        2, help="token requests allowed in any hour (TE's limit per source IP)", positive=True
    )
    max_contacts_per_address: int = setting(
        20,
        help="a participant whose address more TE contacts share is not matched but parked "
        "as `ambiguous` for an operator (`sync-worker retry` releases it)",
        positive=True,
    )
    max_list_pages: int = setting(
        2000,
        help="pages of contacts or users read to copy TE's directory (100 each; raise it "
        "for more than 200,000 contacts); past it this pass looks addresses up one by one",
        positive=True,
    )
    shared_budget: Path = setting(
        "",
        help="a SQLite file that every worker on this host shares for TE's budgets and "
        "tokens, per TE host (TE limits per source IP); empty: kept in the state file",
        optional=True,
        example="/var/lib/sync-worker/te-budget.db",
    )

    @property
    def shared_budget_file(self) -> Path | None:
        return self.shared_budget or None


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    backend: str = setting(
        "local",
        help="where verified archives are kept: `local` (archive_dir) or `s3` (a bucket of "
        "S3 or a compatible store; archive_dir is then only the download spool)",
        choices=("local", "s3"),
    )
    archive_dir: Path = setting(
        "archives",  # a path, relative to the config file's folder
        help="where archives are stored (local), or spooled while downloaded (s3)",
        example="/var/lib/sync-worker/archives",
    )
    bucket: str = setting("", help="s3: the bucket", optional=True)
    prefix: str = setting(
        "",
        help="s3: put before every key, e.g. `flexperto/` (keys: prefix + "
        "`{conference_id}/{archive_id}.zip`)",
        optional=True,
    )
    endpoint_url: str = setting(
        "",
        help="s3: the endpoint of an S3-compatible store (MinIO, Ceph...); empty for AWS",
        optional=True,
        url=True,
    )
    region: str = setting("", help="s3: the bucket's region; empty: the AWS default", optional=True)
    access_key_id: str = setting(
        "",
        help="s3: access key id; empty: the standard AWS chain (profile, instance role...)",
        optional=True,
        secret_env="AWS_ACCESS_KEY_ID",
        credential="s3_access_key_id",
    )
    secret_access_key: str = setting(
        "",
        help="s3: secret access key; empty: the standard AWS chain",
        optional=True,
        secret_env="AWS_SECRET_ACCESS_KEY",
        credential="s3_secret_access_key",
    )
    retention_days: int = setting(
        0,
        help="s3: Object Lock retention for every object, in days (0: none; the bucket must "
        "have Object Lock enabled)",
    )
    retention_mode: str = setting(
        "COMPLIANCE",
        help="s3: `COMPLIANCE` (nobody can shorten it) or `GOVERNANCE`",
        choices=("COMPLIANCE", "GOVERNANCE"),
    )
    read_back: bool = setting(
        False,
        help="s3: read every uploaded archive back and hash it before it is abandoned, even "
        "when the store reports its checksum (doubles the traffic)",
    )
    upload_concurrency: int = setting(
        4,
        help="s3: parts of one archive's upload sent at the same time (at most "
        f"{MAX_UPLOAD_CONCURRENCY}), each read from the spool file and hashed as it goes",
        positive=True,
    )

    def __post_init__(self) -> None:
        if self.backend == "s3" and not self.bucket:
            raise ConfigError("config key storage.bucket is required with backend s3")
        if self.retention_days < 0:
            raise ConfigError("config key storage.retention_days must not be negative")
        if self.upload_concurrency > MAX_UPLOAD_CONCURRENCY:
            raise ConfigError(
                f"config key storage.upload_concurrency must be at most {MAX_UPLOAD_CONCURRENCY}"
            )


@dataclass(frozen=True, kw_only=True)
class StateConfig:
    database: Path = setting(
        "state.db",
        help="the SQLite state file",
        example="/var/lib/sync-worker/state.db",
    )
    busy_timeout_seconds: float = setting(
        30.0,
        help="wait at most this long for another process's lock on the state file, then "
        "report `state.busy`",
        positive=True,
    )
    history_days: int = setting(
        90,
        help="every pass is kept this many days (`sync-worker history`); older ones are "
        "deleted as passes end",
        positive=True,
    )


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    interval_seconds: int = setting(
        300, help="seconds between passes of the daemon (`sync-worker run`)", positive=True
    )


@dataclass(frozen=True, kw_only=True)
class RetryConfig:
    max_attempts: int = setting(
        10, help="a failing item is parked as `given_up` after this many tries", positive=True
    )
    backoff_seconds: float = setting(
        60.0, help="wait before retrying a failed item on a later pass, doubled each time ..."
    )
    max_backoff_seconds: float = setting(3600.0, help="... up to this")


@dataclass(frozen=True, kw_only=True)
class HttpConfig:
    timeout_seconds: float = setting(
        30.0, help="seconds to wait for a connection or an answer", positive=True
    )
    retries: int = setting(
        4,
        help="extra tries within a pass for connection errors, timeouts, 429 and 500/502/503/504",
    )
    retry_wait_seconds: float = setting(
        1.0, help="first wait between tries (exponential, with jitter; `Retry-After` honoured)"
    )
    retry_max_wait_seconds: float = setting(30.0, help="longest wait between tries")
    max_answer_mib: float = setting(
        16.0,
        help="a JSON answer larger than this is refused, not read into memory",
        positive=True,
    )
    deadline_seconds: float = setting(
        120.0,
        help="an API answer must be complete, body included, this long after the request; "
        "else it fails as a timeout (a peer trickling its answer holds nothing for long)",
        positive=True,
    )
    min_download_kib_per_second: float = setting(
        16.0,
        help="a download slower than this on average over `download_rate_window_seconds` "
        "is cut; a later try resumes it",
        positive=True,
    )
    download_rate_window_seconds: float = setting(
        60.0, help="... measured over this many seconds", positive=True
    )

    @property
    def max_answer_bytes(self) -> int:
        return int(self.max_answer_mib * MIB)

    @property
    def min_download_bytes_per_second(self) -> float:
        return self.min_download_kib_per_second * 1024


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    interval_hours: float = setting(
        24.0, help="the daemon audits stored archives this often", positive=True
    )
    period_days: float = setting(
        30.0,
        help="... reading enough each time that every archive is read at least once in this "
        "many days",
        positive=True,
    )
    max_mib_per_second: float = setting(
        20.0, help="read no faster than this, so that the sync is not slowed", positive=True
    )


@dataclass(frozen=True, kw_only=True)
class MonitoringConfig:
    healthcheck_url: str = setting(
        "",
        help="pinged after each pass: the URL on success, URL`/fail` otherwise "
        "(healthchecks.io style; `https://`, or `http://` to loopback)",
        optional=True,
        url=True,
    )


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    listen: str = setting(
        "",
        help="the daemon serves Prometheus metrics at `http://HOST:PORT/metrics` (loopback "
        "unless `allow_remote`); empty: no server",
        optional=True,
        example="127.0.0.1:9464",
    )
    allow_remote: bool = setting(
        False,
        help="let `listen` be any address, e.g. `0.0.0.0:9464`, for a Prometheus on another "
        "host (plain HTTP, no authentication; the metrics hold counts and times, no secrets)",
    )
    textfile: Path = setting(
        "",
        help="after each pass, write the metrics here for node_exporter's textfile collector "
        "(atomically; for timer and cron runs); empty: none",
        optional=True,
    )

    def __post_init__(self) -> None:
        if self.listen:
            parse_listen(self.listen, "metrics.listen", REMOTE_METRICS, self.allow_remote)

    @property
    def textfile_path(self) -> Path | None:
        return self.textfile or None


@dataclass(frozen=True, kw_only=True)
class WebhookConfig:
    listen: str = setting(
        "",
        help="the daemon takes Flexperto's webhook calls at this loopback `HOST:PORT`, behind "
        "your TLS reverse proxy; empty: no webhook, polling only",
        optional=True,
    )
    public_url: str = setting(
        "",
        help="the https URL at which the proxy passes calls on to `listen`; the worker adds a "
        "secret path and registers it with Flexperto",
        optional=True,
        url=True,
    )
    topic: str = setting(
        "archive.available",
        help="the subscription's topic, as your tenant's API spec names it (an assumption)",
    )
    rotate_days: float = setting(
        30.0, help="register a new secret path this often, and drop the old", positive=True
    )

    def __post_init__(self) -> None:
        if self.listen:
            parse_listen(self.listen, "webhook.listen")
            if not self.public_url:
                raise ConfigError("config key webhook.public_url is required with listen")


def _own_proxy(service: str) -> Any:
    return setting(
        "",
        help=f"{service}: its own proxy, over `proxy` (`direct`: none for it); empty: `proxy`",
        optional=True,
    )


def _own_ca_bundle(service: str) -> Any:
    return setting(
        "",
        help=f"{service}: its own CA bundle, over `ca_bundle`; empty: `ca_bundle`",
        optional=True,
    )


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    proxy: str = setting(
        "",
        help="an HTTP proxy, `http://HOST:PORT`, that every service is reached through "
        "(https is tunnelled with CONNECT: the proxy sees host and port only; plain http, "
        "loopback only, never goes through it); empty: none",
        optional=True,
    )
    proxy_user: str = setting(
        "", help="the proxy's user name (Basic auth, sent to the proxy only)", optional=True
    )
    proxy_password: str = setting(
        "",
        help="the proxy's password",
        optional=True,
        secret_env="PROXY_PASSWORD",
        credential="proxy_password",
    )
    ca_bundle: Path = setting(
        "",
        help="a PEM file of the CAs to trust in place of the default ones (certifi), e.g. "
        "with your TLS-inspecting proxy's CA; TLS is always verified; empty: the defaults",
        optional=True,
    )
    flexperto_proxy: str = _own_proxy("the Flexperto API")
    flexperto_ca_bundle: Path = _own_ca_bundle("the Flexperto API")
    storage_host_proxy: str = _own_proxy("Flexperto's storage host (downloads)")
    storage_host_ca_bundle: Path = _own_ca_bundle("Flexperto's storage host")
    totalexpert_proxy: str = _own_proxy("Total Expert")
    totalexpert_ca_bundle: Path = _own_ca_bundle("Total Expert")
    s3_proxy: str = _own_proxy("the S3 store")
    s3_ca_bundle: Path = _own_ca_bundle("the S3 store")

    def __post_init__(self) -> None:
        if self.proxy_password and not self.proxy_user:
            raise ConfigError("config key network.proxy_user is required with proxy_password")
        for key in ("proxy", *(f"{service}_proxy" for service in SERVICES)):
            value = getattr(self, key)
            if not value:
                continue
            try:
                checked = check_proxy(value)
            except ValueError as exc:
                raise ConfigError(f"config key network.{key} {exc}") from None
            if key == "proxy" and checked == DIRECT:
                raise ConfigError("config key network.proxy must be http://HOST:PORT")
            object.__setattr__(self, key, checked)
        for key in ("ca_bundle", *(f"{service}_ca_bundle" for service in SERVICES)):
            if path := getattr(self, key):
                try:
                    check_ca_bundle(path)
                except ValueError as exc:
                    raise ConfigError(f"config key network.{key}: {exc}") from None

    def route(self, service: str) -> Route:
        """How ``service`` (one of network.SERVICES) is reached."""
        proxy = getattr(self, f"{service}_proxy") or self.proxy
        bundle = getattr(self, f"{service}_ca_bundle") or self.ca_bundle
        return self._route(proxy, bundle)

    def common_route(self) -> Route:
        """How what has no keys of its own (the healthcheck ping) is reached: the common
        ``proxy`` and ``ca_bundle``."""
        return self._route(self.proxy, self.ca_bundle)

    def _route(self, proxy: str, bundle: Path) -> Route:
        if proxy == DIRECT:
            proxy = ""
        return Route(
            proxy=proxy,
            user=self.proxy_user if proxy else "",
            password=self.proxy_password if proxy else "",
            ca_bundle=bundle or None,
        )


@dataclass(frozen=True)
class Config:
    flexperto: FlexpertoConfig
    totalexpert: TotalExpertConfig
    storage: StorageConfig
    state: StateConfig
    schedule: ScheduleConfig
    retry: RetryConfig
    http: HttpConfig
    audit: AuditConfig
    monitoring: MonitoringConfig
    metrics: MetricsConfig
    webhook: WebhookConfig
    network: NetworkConfig
    # The [[tenant]] this is ("" for a file without tenants); not a section.
    tenant: str = ""
    # Where each key's value came from, by "section.key" (for `config show`); not a section.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def log_fields(self) -> dict[str, str]:
        """The ``tenant`` field for this tenant's events: none for a file without tenants,
        so that a single-tenant worker logs as it always has."""
        return {"tenant": self.tenant} if self.tenant else {}

    def secrets(self) -> list[str]:
        """Every secret value, for log redaction."""
        return [
            getattr(getattr(self, section), key.name)
            for section, key in keys()
            if _rules(key).secret_env
        ]


def keys() -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    """Every config key as (section name, its field), in declaration order."""
    for section in _sections():
        for key in dataclasses.fields(_section_class(section)):
            yield section.name, key


def _sections() -> list[dataclasses.Field[Any]]:
    return [s for s in dataclasses.fields(Config) if s.name not in ("tenant", "origins")]


def parse_listen(value: str, name: str, opt_in: str = "", remote: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port): on a loopback address unless ``remote`` (the value of
    the key ``opt_in``, which the error names) allows any."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"config key {name} must be HOST:PORT, got {value!r}")
    if not (remote or is_loopback(host)):
        or_else = f", or set {opt_in} = true" if opt_in else ""
        raise ConfigError(
            f"config key {name} must be a loopback address (put a TLS proxy in front{or_else})"
        )
    return host, int(port)


def config_path(cli_value: str | None, env: Mapping[str, str]) -> Path | None:
    """The config file named by ``--config`` or ``SYNC_WORKER_CONFIG``, if any."""
    value = cli_value or env.get(CONFIG_ENV)
    return Path(value) if value else None


def load_config(
    path: Path | None, env: Mapping[str, str] | None = None, tenant: str | None = None
) -> Config:
    """The configuration of ``tenant``, or of the only one. Raises ConfigError."""
    configs = load_tenants(path, env)
    if tenant is None:
        if len(configs) > 1:
            names = ", ".join(config.tenant for config in configs)
            raise ConfigError(f"the config has several tenants ({names}): name one with --tenant")
        return configs[0]
    for config in configs:
        if config.tenant == tenant:
            return config
    raise ConfigError(f"no [[tenant]] named {tenant!r} in the config")


def load_tenants(path: Path | None, env: Mapping[str, str] | None = None) -> list[Config]:
    """Read, merge and validate the configuration: one Config per ``[[tenant]]`` table (its
    keys over the top-level ones), or just the top level. Raises ConfigError."""
    env = os.environ if env is None else env
    _reject_unknown_environment(env)
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        raw = _read_toml(path)
        base_dir = path.resolve().parent
        _warn_if_others_can_read(path, raw)
    tables = raw.pop(TENANT_TABLE, None)
    _reject_unknown(raw)
    if tables is None:
        return [_build(raw, env, base_dir)]
    if not isinstance(tables, list) or not tables:
        raise ConfigError("config key tenant must be [[tenant]] tables")
    configs = [_tenant(raw, env, base_dir, table) for table in tables]
    _check_tenants_apart(configs)
    return configs


def _build(
    raw: dict[str, Any], env: Mapping[str, str], base_dir: Path, own: Tenant | None = None
) -> Config:
    sections: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for section in _sections():
        cls = _section_class(section)
        values = {}
        for key in dataclasses.fields(cls):
            values[key.name], origin = _value(raw, env, section.name, key, base_dir, own)
            origins[f"{section.name}.{key.name}"] = origin
        sections[section.name] = cls(**values)
    return Config(**sections, tenant=own.name if own else "", origins=origins)


@dataclass(frozen=True)
class Tenant:
    """A ``[[tenant]]`` table: its name and its own sections."""

    name: str
    raw: dict[str, Any]


def _tenant(raw: dict[str, Any], env: Mapping[str, str], base_dir: Path, table: Any) -> Config:
    if not isinstance(table, dict):
        raise ConfigError("config key tenant must be [[tenant]] tables")
    body = dict(table)
    name = body.pop("name", None)
    if not isinstance(name, str) or not TENANT_NAME.fullmatch(name):
        raise ConfigError(
            "every [[tenant]] needs a name of 1 to 32 lowercase letters, digits, - and _"
        )
    for section in body:
        if section in PROCESS_SECTIONS:
            raise ConfigError(f"[{section}] is for the whole process: not in tenant {name}")
    _reject_unknown(body, f"tenant.{name}.")
    try:
        return _build(raw, env, base_dir, Tenant(name, body))
    except ConfigError as exc:
        if f"tenant.{name}." in str(exc):
            raise
        raise ConfigError(f"tenant {name}: {exc}") from None


def _check_tenants_apart(configs: list[Config]) -> None:
    """Tenants keep their own state file and store, and share TE's budget per host."""
    for what, place in (
        ("name", lambda c: c.tenant),
        ("state.database", lambda c: c.state.database),
        ("storage.archive_dir", lambda c: c.storage.archive_dir),
        ("storage.bucket and prefix", lambda c: _bucket_place(c.storage)),
    ):
        seen: dict[Any, str] = {}
        for config in configs:
            key = place(config)
            if key is not None and key in seen:
                raise ConfigError(
                    f"tenants {seen[key]} and {config.tenant} have the same {what}: give each "
                    "its own"
                )
            seen[key] = config.tenant
    by_host: dict[str, list[Config]] = {}
    for config in configs:
        by_host.setdefault(urlsplit(config.totalexpert.base_url).netloc.lower(), []).append(config)
    for host, sharing in by_host.items():
        budgets = {config.totalexpert.shared_budget_file for config in sharing}
        if len(sharing) > 1 and (len(budgets) > 1 or None in budgets):
            raise ConfigError(
                f"tenants {', '.join(c.tenant for c in sharing)} use Total Expert at {host}: "
                "give them one totalexpert.shared_budget, so that they share its limits"
            )


def _bucket_place(storage: StorageConfig) -> tuple[str, str, str] | None:
    if storage.backend != "s3":
        return None
    return storage.endpoint_url, storage.bucket, storage.prefix


def env_override_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def validate_base_url(url: str, name: str) -> str:
    """Accept ``https://`` URLs, and ``http://`` only to a loopback host."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigError(f"config key {name} must be an absolute URL, got {url!r}")
    if parts.username or parts.password:
        raise ConfigError(f"config key {name} must not carry credentials in the URL")
    if parts.scheme == "https":
        return url.rstrip("/")
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return url.rstrip("/")
    raise ConfigError(f"config key {name} must use https:// (http:// only for loopback hosts)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def example_toml() -> str:
    """The commented example configuration that ``sync-worker init-config`` writes."""
    lines = [
        "# sync-worker configuration. Relative paths resolve against this file's folder.",
        "# Every key can be overridden from the environment as SYNC_WORKER_<SECTION>_<KEY>.",
    ]
    section_name = None
    for section, key in keys():
        if section != section_name:
            lines += ["", f"[{section}]"]
            section_name = section
        rules = _rules(key)
        comment = _plain(rules.help[0].upper() + rules.help[1:]) + "."
        if rules.secret_env:
            comment += (
                f" Better left out here: give it as env {rules.secret_env} or as the systemd "
                f'credential "{rules.credential}".'
            )
        lines += textwrap.wrap(comment, COMMENT_WIDTH, initial_indent="# ", subsequent_indent="# ")
        if rules.secret_env:
            lines.append(f'# {key.name} = ""')
        else:
            lines.append(f"{key.name} = {_toml_value(_shown_value(key))}")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """The manual's table of config keys (docs/configuration.md)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for section, key in keys():
        rules = _rules(key)
        if key.default is dataclasses.MISSING:
            default = "required"
        elif key.default == "":
            default = "empty"
        else:
            default = f"`{_toml_value(key.default).strip(QUOTE)}`"
        meaning = rules.help
        if rules.secret_env:
            meaning += f"; or env `{rules.secret_env}`, or credential `{rules.credential}`"
        rows.append(f"| `{section}.{key.name}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


# --- loading ------------------------------------------------------------------------------


TENANT_TABLE = "tenant"
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# One of each per process: a [[tenant]] table cannot have its own.
PROCESS_SECTIONS = ("schedule", "metrics", "webhook")


def _section_class(section: dataclasses.Field[Any]) -> type:
    return typing.get_type_hints(Config)[section.name]


def _rules(key: dataclasses.Field[Any]) -> Rules:
    return key.metadata["rules"]


def _kind(section: str, key: dataclasses.Field[Any]) -> type:
    cls = typing.get_type_hints(Config)[section]
    return typing.get_type_hints(cls)[key.name]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def _warn_if_others_can_read(path: Path, raw: dict[str, Any]) -> None:
    """Warn (naming the keys, never their values) when the file holds secrets and its group
    or everyone may read it. Not refused: the secrets are out already, and a refusal would
    stop a running service at its next restart instead of telling whoever reads the log."""
    mode = path.stat().st_mode & 0o777
    held = _secrets_in(raw) if mode & OTHERS_READ else []
    if held:
        log.warning(
            "config.readable_by_others",
            path=str(path),
            mode=oct(mode),
            keys=held,
            fix="chmod 600 the file, or give the secrets as credentials or environment",
        )


def _secrets_in(raw: dict[str, Any]) -> list[str]:
    """The secret keys that have a value in the file, at the top or in a [[tenant]]."""
    tables = [("", raw)]
    tenants = raw.get(TENANT_TABLE)
    if isinstance(tenants, list):
        tables += [(f"tenant.{t.get('name')}.", t) for t in tenants if isinstance(t, dict)]
    return [
        f"{where}{section}.{key.name}"
        for where, table in tables
        for section, key in keys()
        if _rules(key).secret_env
        and isinstance(table.get(section), dict)
        and table[section].get(key.name)
    ]


def _reject_unknown(raw: dict[str, Any], where: str = "") -> None:
    known: dict[str, set[str]] = {}
    for section, key in keys():
        known.setdefault(section, set()).add(key.name)
    for section, body in raw.items():
        if section not in known:
            hint = _did_you_mean(section, known, "[{}]")
            raise ConfigError(f"unknown config section [{where}{section}]{hint}")
        if not isinstance(body, dict):
            raise ConfigError(f"config key {where}{section} must be a table [{where}{section}]")
        for key in body:
            if key not in known[section]:
                hint = _did_you_mean(key, known[section])
                raise ConfigError(f"unknown config key {where}{section}.{key}{hint}")


def _reject_unknown_environment(env: Mapping[str, str]) -> None:
    """A ``SYNC_WORKER_*`` variable that names no key is a typo, not something to ignore."""
    known = {CONFIG_ENV, *(env_override_name(section, key.name) for section, key in keys())}
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known:
            tails = {known_name.removeprefix(ENV_PREFIX) for known_name in known}
            hint = _did_you_mean(name.removeprefix(ENV_PREFIX), tails, ENV_PREFIX + "{}")
            raise ConfigError(f"unknown environment variable {name}{hint}")


def _did_you_mean(name: str, known: Iterable[str], form: str = "{}") -> str:
    """`` (did you mean X?)`` for the closest known name, if one is close."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {form.format(close[0])}?)" if close else ""


def _value(
    raw: dict[str, Any],
    env: Mapping[str, str],
    section: str,
    key: dataclasses.Field[Any],
    base_dir: Path,
    tenant: Tenant | None = None,
) -> tuple[Any, str]:
    """The key's value from the highest-priority source, validated, and that source: a
    tenant's own table and credential come first."""
    name, kind, rules = f"{section}.{key.name}", _kind(section, key), _rules(key)
    override_name = env_override_name(section, key.name)
    override = env.get(override_name)
    own = tenant.raw.get(section, {}) if tenant else {}
    if key.name in own:
        name = f"tenant.{tenant.name}.{name}" if tenant else name
        value, origin = _check_type(own[key.name], kind, name), "file, [[tenant]]"
    elif tenant and (secret := _credential(rules, env, f"{tenant.name}.")) is not None:
        value, origin = secret, f"credential {tenant.name}.{rules.credential}"
    elif override is not None:
        value, origin = _coerce(override, kind, name), f"env {override_name}"
    elif key.name in raw.get(section, {}):
        value, origin = _check_type(raw[section][key.name], kind, name), "file"
    elif (secret := _secret_from_environment(rules, env)) is not None:
        from_env = bool(env.get(rules.secret_env or ""))
        value = secret
        origin = f"env {rules.secret_env}" if from_env else f"credential {rules.credential}"
    elif key.default is not dataclasses.MISSING:
        value, origin = key.default, "default"
    else:
        raise ConfigError(f"missing required config key {name}")
    return _validated(value, kind, rules, name, base_dir), origin


def _secret_from_environment(rules: Rules, env: Mapping[str, str]) -> str | None:
    if rules.secret_env is None:
        return None
    if env.get(rules.secret_env):
        return env[rules.secret_env]
    return _credential(rules, env)


def _credential(rules: Rules, env: Mapping[str, str], prefix: str = "") -> str | None:
    """The secret's systemd credential (``prefix``: a tenant's, e.g. ``bank-a.``), if any."""
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory and rules.credential:
        candidate = Path(directory) / f"{prefix}{rules.credential}"
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8").strip()
    return None


def _coerce(text: str, kind: type, name: str) -> Any:
    if typing.get_origin(kind) is tuple:  # a list: comma-separated
        return tuple(part.strip() for part in text.split(",")) if text.strip() else ()
    if kind is Path:
        return text  # made a path once validated
    if kind is bool:
        if text.lower() not in BOOLEANS:
            raise ConfigError(f"config key {name} must be true or false, got {text!r}")
        return BOOLEANS[text.lower()]
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"config key {name} must be {_type_name(kind)}, got {text!r}") from None


def _check_type(value: Any, kind: type, name: str) -> Any:
    if typing.get_origin(kind) is tuple:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ConfigError(f"config key {name} must be a list of strings")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is Path and isinstance(value, str):
        return value  # made a path once validated
    if kind is bool and isinstance(value, bool):
        return value
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"config key {name} must be {_type_name(kind)}")
    return value


def _type_name(kind: type) -> str:
    return "str" if kind is Path else kind.__name__


def _validated(value: Any, kind: type, rules: Rules, name: str, base_dir: Path) -> Any:
    if rules.positive and value <= 0:
        raise ConfigError(f"config key {name} must be positive")
    if rules.choices and value not in rules.choices:
        raise ConfigError(f"config key {name} must be one of {', '.join(rules.choices)}")
    if isinstance(value, str) and not value.strip():
        if not rules.optional:
            raise ConfigError(f"config key {name} must not be empty")
        return ""
    if rules.url:
        return validate_base_url(value, name)
    if kind is Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    return value


# --- the example file ---------------------------------------------------------------------


def _shown_value(key: dataclasses.Field[Any]) -> Any:
    rules = _rules(key)
    return rules.example if rules.example is not None else key.default


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _plain(text: str) -> str:
    """Help text as a comment: without Markdown's backticks."""
    return text.replace("`", "")
