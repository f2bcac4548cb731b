"""Years of history cost a pass nothing: every statement a pass runs on the archives,
insights, participants and passes tables finds its rows through an index, never by reading the
table (or a whole index) through. Statements are recorded as the worker runs them, over a
state file that already holds claimed archives, and each one's query plan is checked.
"""

from __future__ import annotations

import re
import sqlite3

import pytest

from sync_worker.app.cli import main
from sync_worker.state import db as state_db

# The tables that grow with history, and the aliases the worker's queries give them.
LEDGER = re.compile(r"\bSCAN (archives|insights|participants|passes|a|i|p)\b")


@pytest.fixture
def statements(monkeypatch):
    """Every SQL statement run on a connection the worker opens from now on."""
    seen: list[str] = []
    connect = sqlite3.connect

    def traced(*args, **kwargs):
        connection = connect(*args, **kwargs)
        connection.set_trace_callback(seen.append)
        return connection

    monkeypatch.setattr(state_db.sqlite3, "connect", traced)
    return seen


def full_scans(database, statements: list[str], allow_index_scans: bool = False) -> list[str]:
    """The statements whose plan reads a history table through, with their plans."""
    explain = sqlite3.connect(database)
    found = []
    for sql in statements:
        if not re.match(r"\s*(select|insert|update|delete|with)\b", sql, re.I):
            continue
        try:
            plan = [row[3] for row in explain.execute(f"explain query plan {sql}")]
        except sqlite3.OperationalError as exc:  # sqlite-utils' temporary tables are gone
            assert "no such table: t" in str(exc), exc
            continue
        scans = [step for step in plan if LEDGER.search(step)]
        if allow_index_scans:
            scans = [step for step in scans if "USING" not in step]
        if scans:
            found.append(f"{sql}\n    {scans}")
    explain.close()
    return found


def test_a_pass_finds_everything_through_indexes(sandbox, config, run, statements):
    run()
    run()  # the archive that was PACKING: history has claimed archives and sent insights
    sandbox.flexperto.add_archive(
        status="AVAILABLE",
        moderator={"account_id": "e-1", "email": "anna.expert@bank.example", "name": "Anna"},
        participants=[{"account_id": "p", "email": "lena.lang@example.org", "name": "Lena"}],
    )
    statements.clear()
    assert run().exit_code == 0
    assert len(statements) > 50  # the pass's statements were recorded
    assert full_scans(config.state.database, statements) == []


def test_status_retry_and_history_read_the_history_only_through_indexes(
    sandbox, config, run, statements, tmp_path, capsys
):
    run()
    statements.clear()
    config_file = str(tmp_path / "config.toml")
    assert main(["--config", config_file, "status"]) == 0
    assert main(["--config", config_file, "retry", "--all-failed"]) == 0
    assert main(["--config", config_file, "status", "--json", "--limit", "2"]) == 0
    assert main(["--config", config_file, "history", "--since", "2026-01-01"]) == 0
    assert main(["--config", config_file, "history", "--limit", "3", "--json"]) == 0
    capsys.readouterr()
    # Counting by state reads the state index through, not the table: allowed here.
    assert full_scans(config.state.database, statements, allow_index_scans=True) == []


def sorted_pages(database, statements: list[str]) -> list[str]:
    """The statements over the archives that sort what they read (a temporary B-tree for
    ORDER BY): a page query that sorts reads every matching row again for every page."""
    explain = sqlite3.connect(database)
    found = []
    for sql in statements:
        if not re.match(r"\s*select\b.*\bfrom archives\b.*\border by\b", sql, re.I | re.S):
            continue
        plan = [row[3] for row in explain.execute(f"explain query plan {sql}")]
        if any("TEMP B-TREE FOR ORDER BY" in step for step in plan):
            found.append(f"{sql}\n    {plan}")
    explain.close()
    return found


def test_export_and_status_json_page_along_an_index_without_sorting(
    sandbox, config, run, statements, tmp_path, capsys
):
    run()
    run()  # history has claimed archives
    statements.clear()
    config_file = str(tmp_path / "config.toml")
    assert main(["--config", config_file, "export"]) == 0
    assert main(["--config", config_file, "export", "--since", "2026-01-01"]) == 0
    assert main(["--config", config_file, "status", "--json"]) == 0
    assert main(["--config", config_file, "status", "--json", "--state", "claimed"]) == 0
    capsys.readouterr()
    assert len([sql for sql in statements if "from archives" in sql]) >= 4
    assert sorted_pages(config.state.database, statements) == []
    assert full_scans(config.state.database, statements, allow_index_scans=True) == []
