"""Paste the generated config example and key table into docs/configuration.md.

Run from the repository root (``make docs-config``) after changing a declaration in
sync_worker/config/schema.py; tests/sync_worker/config/test_config.py fails while the page is stale.
"""

from pathlib import Path

from sync_worker.config import example_toml, markdown_table

PAGE = Path("docs/configuration.md")


def put(text: str, name: str, body: str) -> str:
    """``text`` with what stands between the ``name`` markers replaced by ``body``."""
    before, rest = text.split(f"<!-- {name}:start -->\n")
    _, after = rest.split(f"<!-- {name}:end -->")
    return f"{before}<!-- {name}:start -->\n{body}<!-- {name}:end -->{after}"


def main() -> None:
    text = put(PAGE.read_text(), "config-example", f"```toml\n{example_toml()}```\n")
    PAGE.write_text(put(text, "config-table", markdown_table()))


if __name__ == "__main__":
    main()
