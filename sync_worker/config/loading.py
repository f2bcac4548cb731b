"""Loading the configuration: values come, highest priority first, from
``SYNC_WORKER_<SECTION>_<KEY>`` environment variables, the config file, a secret's own
environment variable, a systemd credential in ``$CREDENTIALS_DIRECTORY``, and finally the
default; ``[[tenant]]`` tables give one Config each. Every error names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from sync_worker.config.schema import (
    ENV_PREFIX,
    Config,
    ConfigError,
    Rules,
    StorageConfig,
    env_override_name,
    keys,
    kind_of,
    rules_of,
    section_class,
    section_fields,
    validate_base_url,
)

CONFIG_ENV = "SYNC_WORKER_CONFIG"
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
OTHERS_READ = 0o044  # the group's and everyone's read bits
TENANT_TABLE = "tenant"
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# One of each per process: a [[tenant]] table cannot have its own.
PROCESS_SECTIONS = ("schedule", "metrics", "webhook")


log = structlog.get_logger()


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
    for section in section_fields():
        cls = section_class(section)
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
    if len(configs) > 1 and any(config.state.shared for config in configs):
        raise ConfigError(
            "[[tenant]] tables with state.backend postgresql are not supported yet: "
            "run a worker per tenant, each with its own config"
        )
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
        if rules_of(key).secret_env
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
    name, kind, rules = f"{section}.{key.name}", kind_of(section, key), rules_of(key)
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
