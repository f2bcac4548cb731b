"""The commented example configuration that ``sync-worker init-config`` writes, and the
manual's table of keys (held equal to docs/configuration.md by a test), from the keys'
declarations (config.schema)."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from sync_worker.config.schema import keys, rules_of

QUOTE = '"'
COMMENT_WIDTH = 90


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
        rules = rules_of(key)
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
        rules = rules_of(key)
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


def _shown_value(key: dataclasses.Field[Any]) -> Any:
    rules = rules_of(key)
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
