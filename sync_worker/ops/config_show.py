"""``sync-worker config show``: the effective configuration (file, environment, credentials
and defaults merged) as TOML, every secret masked, each value's source in a comment.

A config with ``[[tenant]]`` tables is shown as one: the whole-process sections at the top,
then each tenant with every other key, as the worker uses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sync_worker.config import PROCESS_SECTIONS, Config, keys

MASK = "[REDACTED]"


def render(configs: list[Config]) -> str:
    """The TOML text of ``configs`` (one per tenant, or the one of a file without)."""
    if len(configs) == 1 and not configs[0].tenant:
        return _sections(configs[0], lambda section: True, "")
    lines = [_sections(configs[0], lambda section: section in PROCESS_SECTIONS, "")]
    for config in configs:
        lines.append(f"[[tenant]]\nname = {_toml(config.tenant)}\n")
        lines.append(_sections(config, lambda section: section not in PROCESS_SECTIONS, "tenant."))
    return "\n".join(lines)


def _sections(config: Config, shown: Any, prefix: str) -> str:
    lines: list[str] = []
    current = None
    for section, key in keys():
        if not shown(section):
            continue
        if section != current:
            lines += ["", f"[{prefix}{section}]"] if lines else [f"[{prefix}{section}]"]
            current = section
        value = getattr(getattr(config, section), key.name)
        if key.metadata["rules"].secret_env and value:
            value = MASK
        origin = config.origins.get(f"{section}.{key.name}", "")
        lines.append(f"{key.name} = {_toml(value)}" + (f"  # {origin}" if origin else ""))
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    """A value as TOML: JSON's strings, numbers and arrays are TOML's too."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, ensure_ascii=False)
