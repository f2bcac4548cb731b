"""The worker's configuration keys, every one declared once as a dataclass field: its
default (none: required), its help text, and what makes a value valid (:class:`Rules`).
Loading (config.loading) and the example file and the manual's table (config.rendering)
are made from these declarations.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sync_worker.core.download_targets import DownloadTargets
from sync_worker.core.network import DIRECT, SERVICES, Route, check_ca_bundle, check_proxy

ENV_PREFIX = "SYNC_WORKER_"
MIB = 1024 * 1024
GIB = 1024 * MIB
REMOTE_METRICS = "metrics.allow_remote"  # the key that lets metrics.listen leave loopback
MAX_UPLOAD_CONCURRENCY = 32  # parts in flight per upload: threads and connections each


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

    egress: str = setting(
        "",
        help="postgresql state: the name of the source address TE sees this worker's "
        "requests come from; the workers of one state database with the same egress share "
        "one budget (empty: all of them)",
        optional=True,
        example="nat-frankfurt",
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
        8,
        help="s3: parts of one archive's upload sent at the same time (at most "
        f"{MAX_UPLOAD_CONCURRENCY}), each sent from the spool file and hashed as it goes",
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
    backend: str = setting(
        "sqlite",
        help="where the state is kept: `sqlite` (the file `database`, for the workers of one "
        "host) or `postgresql` (the database `dsn`, for workers on several hosts)",
        choices=("sqlite", "postgresql"),
    )
    database: Path = setting(
        "state.db",
        help="sqlite: the state file",
        example="/var/lib/sync-worker/state.db",
    )
    dsn: str = setting(
        "",
        help="postgresql: a libpq connection string or URI, e.g. `host=db.internal "
        "dbname=sync_worker user=sync_worker sslmode=verify-full`; a secret when it holds a "
        "password (or leave the password to ~/.pgpass or PGPASSWORD)",
        optional=True,
        secret_env="SYNC_WORKER_STATE_DSN",
        credential="state_dsn",
    )
    busy_timeout_seconds: float = setting(
        30.0,
        help="wait at most this long for another process's lock on the state, then "
        "report `state.busy`",
        positive=True,
    )
    history_days: int = setting(
        90,
        help="every pass is kept this many days (`sync-worker history`); older ones are "
        "deleted as passes end",
        positive=True,
    )

    def __post_init__(self) -> None:
        if self.backend == "postgresql" and not self.dsn:
            raise ConfigError("config key state.dsn is required with backend postgresql")

    @property
    def shared(self) -> bool:
        """Whether workers on other hosts may share this state (PostgreSQL)."""
        return self.backend == "postgresql"


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

    def __post_init__(self) -> None:
        if self.state.shared and self.storage.backend == "local":
            raise ConfigError(
                "state.backend postgresql lets workers on several hosts share the state, and "
                "a conference must not be split across their disks: use storage.backend s3"
            )
        if self.state.shared and self.totalexpert.shared_budget_file:
            raise ConfigError(
                "totalexpert.shared_budget is a file of one host: with state.backend "
                "postgresql TE's budget is kept in the state database (totalexpert.egress)"
            )

    def log_fields(self) -> dict[str, str]:
        """The ``tenant`` field for this tenant's events: none for a file without tenants,
        so that a single-tenant worker logs as it always has."""
        return {"tenant": self.tenant} if self.tenant else {}

    def secrets(self) -> list[str]:
        """Every secret value, for log redaction."""
        return [
            getattr(getattr(self, section), key.name)
            for section, key in keys()
            if rules_of(key).secret_env
        ]


def keys() -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    """Every config key as (section name, its field), in declaration order."""
    for section in section_fields():
        for key in dataclasses.fields(section_class(section)):
            yield section.name, key


def section_fields() -> list[dataclasses.Field[Any]]:
    return [s for s in dataclasses.fields(Config) if s.name not in ("tenant", "origins")]


def section_class(section: dataclasses.Field[Any]) -> type:
    return typing.get_type_hints(Config)[section.name]


def rules_of(key: dataclasses.Field[Any]) -> Rules:
    return key.metadata["rules"]


def kind_of(section: str, key: dataclasses.Field[Any]) -> type:
    cls = typing.get_type_hints(Config)[section]
    return typing.get_type_hints(cls)[key.name]


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
