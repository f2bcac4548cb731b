"""Reading a state database's rows in a test, on either engine (state.db.Database), and
setting what another process would have left there."""

from __future__ import annotations

import json
from typing import Any

from sync_worker.config import Config, StateConfig
from sync_worker.state import rate_limit, te_access
from sync_worker.state.configured import open_state
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


def rows_in(state: StateConfig, table: str, order_by: str) -> list[dict[str, Any]]:
    """:func:`rows_of` the configured state, on a connection of its own."""
    db = open_state(state)
    try:
        return rows_of(db, table, order_by)
    finally:
        db.close()


def spend_token_requests(config: Config, at: float) -> None:
    """Spend TE's two token requests of the hour at ``at``, as another process would."""
    db = open_state(config.state)
    try:
        for _ in range(2):
            rate_limit.try_spend(
                db, te_access.token_bucket(config.totalexpert.base_url), 2, 3601.0, at
            )
    finally:
        db.close()
