"""Loading and validating the worker's TOML configuration.

Values come, highest priority first, from ``SYNC_WORKER_<SECTION>_<KEY>`` environment
variables, the config file, the secret environment variables (``FLEXPERTO_API_KEY``,
``TOTALEXPERT_CLIENT_ID``, ``TOTALEXPERT_CLIENT_SECRET``), systemd credentials in
``$CREDENTIALS_DIRECTORY`` and finally the defaults below. Every error names the key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CONFIG_ENV = "SYNC_WORKER_CONFIG"


class ConfigError(Exception):
    """The configuration is unusable; the message names the offending key."""


@dataclass(frozen=True)
class FlexpertoConfig:
    base_url: str
    api_key: str
    page_size: int
    max_parallel_downloads: int


@dataclass(frozen=True)
class TotalExpertConfig:
    base_url: str
    client_id: str
    client_secret: str
    insight_type: str
    requests_per_minute: int
    token_requests_per_hour: int


@dataclass(frozen=True)
class StorageConfig:
    archive_dir: Path


@dataclass(frozen=True)
class StateConfig:
    database: Path
    busy_timeout_seconds: float


@dataclass(frozen=True)
class ScheduleConfig:
    interval_seconds: int


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int
    backoff_seconds: float
    max_backoff_seconds: float


@dataclass(frozen=True)
class HttpConfig:
    timeout_seconds: float
    retries: int
    retry_wait_seconds: float
    retry_max_wait_seconds: float


@dataclass(frozen=True)
class MonitoringConfig:
    healthcheck_url: str


@dataclass(frozen=True)
class Config:
    flexperto: FlexpertoConfig
    totalexpert: TotalExpertConfig
    storage: StorageConfig
    state: StateConfig
    schedule: ScheduleConfig
    retry: RetryConfig
    http: HttpConfig
    monitoring: MonitoringConfig

    def secrets(self) -> list[str]:
        """Every secret value, for log redaction."""
        return [
            self.flexperto.api_key,
            self.totalexpert.client_id,
            self.totalexpert.client_secret,
        ]


REQUIRED = object()

# section -> key -> (type, default). REQUIRED marks keys without a default.
SCHEMA: dict[str, dict[str, tuple[type, Any]]] = {
    "flexperto": {
        "base_url": (str, REQUIRED),
        "api_key": (str, REQUIRED),
        "page_size": (int, 100),
        "max_parallel_downloads": (int, 4),
    },
    "totalexpert": {
        "base_url": (str, "https://public.totalexpert.net/v1"),
        "client_id": (str, REQUIRED),
        "client_secret": (str, REQUIRED),
        "insight_type": (str, "flexperto_conference_archived"),
        "requests_per_minute": (int, 1000),
        "token_requests_per_hour": (int, 2),
    },
    "storage": {"archive_dir": (str, "archives")},
    "state": {"database": (str, "state.db"), "busy_timeout_seconds": (float, 30.0)},
    "schedule": {"interval_seconds": (int, 300)},
    "retry": {
        "max_attempts": (int, 10),
        "backoff_seconds": (float, 60.0),
        "max_backoff_seconds": (float, 3600.0),
    },
    "http": {
        "timeout_seconds": (float, 30.0),
        "retries": (int, 4),
        "retry_wait_seconds": (float, 1.0),
        "retry_max_wait_seconds": (float, 30.0),
    },
    "monitoring": {"healthcheck_url": (str, "")},
}

# Secrets that may come from the environment or a systemd credential instead of the file.
SECRET_SOURCES: dict[tuple[str, str], tuple[str, str]] = {
    ("flexperto", "api_key"): ("FLEXPERTO_API_KEY", "flexperto_api_key"),
    ("totalexpert", "client_id"): ("TOTALEXPERT_CLIENT_ID", "totalexpert_client_id"),
    ("totalexpert", "client_secret"): ("TOTALEXPERT_CLIENT_SECRET", "totalexpert_client_secret"),
}

POSITIVE_KEYS = {
    "page_size",
    "max_parallel_downloads",
    "requests_per_minute",
    "token_requests_per_hour",
    "interval_seconds",
    "max_attempts",
    "timeout_seconds",
    "busy_timeout_seconds",
}


OPTIONAL_STRINGS = {"healthcheck_url"}


def config_path(cli_value: str | None, env: Mapping[str, str]) -> Path | None:
    """The config file named by ``--config`` or ``SYNC_WORKER_CONFIG``, if any."""
    value = cli_value or env.get(CONFIG_ENV)
    return Path(value) if value else None


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate the configuration. Raises ConfigError."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        raw = _read_toml(path)
        base_dir = path.resolve().parent
    _reject_unknown(raw)
    values = {
        section: {key: _resolve(raw, env, section, key) for key in keys}
        for section, keys in SCHEMA.items()
    }
    return _build(values, base_dir)


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


def _reject_unknown(raw: dict[str, Any]) -> None:
    for section, body in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"unknown config section [{section}]")
        if not isinstance(body, dict):
            raise ConfigError(f"config key {section} must be a table [{section}]")
        for key in body:
            if key not in SCHEMA[section]:
                raise ConfigError(f"unknown config key {section}.{key}")


def env_override_name(section: str, key: str) -> str:
    return f"SYNC_WORKER_{section.upper()}_{key.upper()}"


def _resolve(raw: dict[str, Any], env: Mapping[str, str], section: str, key: str) -> Any:
    kind, default = SCHEMA[section][key]
    name = f"{section}.{key}"
    override = env.get(env_override_name(section, key))
    if override is not None:
        return _coerce(override, kind, name)
    if key in raw.get(section, {}):
        return _check_type(raw[section][key], kind, name)
    secret = _secret_from_environment(section, key, env)
    if secret is not None:
        return secret
    if default is REQUIRED:
        raise ConfigError(f"missing required config key {name}")
    return default


def _secret_from_environment(section: str, key: str, env: Mapping[str, str]) -> str | None:
    sources = SECRET_SOURCES.get((section, key))
    if sources is None:
        return None
    env_name, credential = sources
    if env.get(env_name):
        return env[env_name]
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        candidate = Path(directory) / credential
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8").strip()
    return None


def _coerce(text: str, kind: type, name: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"config key {name} must be {kind.__name__}, got {text!r}") from None


def _check_type(value: Any, kind: type, name: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"config key {name} must be {kind.__name__}")
    return value


def _build(values: dict[str, dict[str, Any]], base_dir: Path) -> Config:
    for section, keys in values.items():
        for key, value in keys.items():
            if key in POSITIVE_KEYS and value <= 0:
                raise ConfigError(f"config key {section}.{key} must be positive")
            if isinstance(value, str) and not value.strip() and key not in OPTIONAL_STRINGS:
                raise ConfigError(f"config key {section}.{key} must not be empty")
    flexperto, te = values["flexperto"], values["totalexpert"]
    return Config(
        flexperto=FlexpertoConfig(
            base_url=validate_base_url(flexperto["base_url"], "flexperto.base_url"),
            api_key=flexperto["api_key"],
            page_size=flexperto["page_size"],
            max_parallel_downloads=flexperto["max_parallel_downloads"],
        ),
        totalexpert=TotalExpertConfig(
            base_url=validate_base_url(te["base_url"], "totalexpert.base_url"),
            client_id=te["client_id"],
            client_secret=te["client_secret"],
            insight_type=te["insight_type"],
            requests_per_minute=te["requests_per_minute"],
            token_requests_per_hour=te["token_requests_per_hour"],
        ),
        storage=StorageConfig(archive_dir=_path(values["storage"]["archive_dir"], base_dir)),
        state=StateConfig(
            database=_path(values["state"]["database"], base_dir),
            busy_timeout_seconds=values["state"]["busy_timeout_seconds"],
        ),
        schedule=ScheduleConfig(**values["schedule"]),
        retry=RetryConfig(**values["retry"]),
        http=HttpConfig(**values["http"]),
        monitoring=MonitoringConfig(
            healthcheck_url=_optional_url(
                values["monitoring"]["healthcheck_url"], "monitoring.healthcheck_url"
            )
        ),
    )


def _optional_url(value: str, name: str) -> str:
    return validate_base_url(value, name) if value.strip() else ""


def _path(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


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
