"""Every state an item is created in and every move it makes, as the state file saw them:
triggers record them in a table of the test's own, to be checked against the declared
lifecycles (state.lifecycles.STARTS and MOVES)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sync_worker.state.db import open_database
from sync_worker.state.lifecycles import MOVES, STARTS, TABLES

RECORDED = "test_moves"


def record_moves(database: Path) -> None:
    """Make the state file (as a pass would) with triggers recording every creation and move."""
    open_database(database).close()
    conn = sqlite3.connect(database)
    conn.execute(f"create table if not exists {RECORDED} (item text, old text, new text)")
    for table in TABLES.values():
        conn.execute(
            f"create trigger if not exists {RECORDED}_{table}_new after insert on {table} "
            f"begin insert into {RECORDED} values ('{table}', null, new.state); end"
        )
        conn.execute(
            f"create trigger if not exists {RECORDED}_{table}_move after update of state on "
            f"{table} when old.state != new.state "
            f"begin insert into {RECORDED} values ('{table}', old.state, new.state); end"
        )
    conn.commit()
    conn.close()


def undeclared_moves(database: Path) -> list[tuple[str, str | None, str]]:
    """The creations and moves recorded that the lifecycles do not declare."""
    conn = sqlite3.connect(database)
    seen = conn.execute(f"select distinct item, old, new from {RECORDED}").fetchall()
    conn.close()
    return undeclared_among(seen)


def undeclared_among(
    seen: list[tuple[str, str | None, str]],
) -> list[tuple[str, str | None, str]]:
    """Of the (table, old state, new state) recorded, those the lifecycles do not declare."""
    lifecycle = {table: kind for kind, table in TABLES.items()}
    found = []
    for item, old, new in seen:
        kind = lifecycle[item]
        allowed = STARTS[kind] if old is None else MOVES[kind].get(kind(old), frozenset())
        if new not in allowed:
            found.append((item, old, new))
    return found
