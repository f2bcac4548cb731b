"""Reading a state database's rows in a test, on either engine (state.db.Database)."""

from __future__ import annotations

import json
from typing import Any

from sync_worker.config import StateConfig
from sync_worker.state.db import Database


def row_of(db: Database, table: str, **key: Any) -> dict[str, Any] | None:
    """The row of ``table`` with the given key columns, if there is one."""
    where = " and ".join(f"{column} = ?" for column in key)
    return next(db.query(f"select * from {table} where {where}", list(key.values())), None)


def rows_of(db: Database, table: str, order_by: str) -> list[dict[str, Any]]:
    return list(db.query(f"select * from {table} order by {order_by}"))


def count_of(db: Database, table: str) -> int:
    return int(db.execute(f"select count(*) from {table}").fetchone()[0])


def state_keys(state: StateConfig) -> str:
    """The keys of ``[state]`` (tests.conftest.write_config's ``state``) that name the same
    state as ``state``: none for the SQLite file, the backend and dsn of a database."""
    return f'backend = "postgresql"\ndsn = {json.dumps(state.dsn)}\n' if state.shared else ""
