"""tests/lifecycle_moves on the state a config names, whichever its engine: on SQLite its
triggers, on PostgreSQL the same recording by a trigger function of the database's own; the
moves seen are checked against the declared lifecycles as there."""

from __future__ import annotations

from contextlib import closing

import psycopg

from sync_worker.config import StateConfig
from sync_worker.state.configured import open_state
from sync_worker.state.lifecycles import TABLES
from tests.lifecycle_moves import RECORDED, record_moves, undeclared_among, undeclared_moves

RECORD = f"""
create table if not exists {RECORDED} (item text, old text, new text);
create or replace function {RECORDED}_record() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        insert into {RECORDED} values (tg_table_name, null, new.state);
    else
        insert into {RECORDED} values (tg_table_name, old.state, new.state);
    end if;
    return null;
end $$;
"""
TRIGGERS = """
create or replace trigger {recorded}_{table}_new after insert on {table}
    for each row execute function {recorded}_record();
create or replace trigger {recorded}_{table}_move after update of state on {table}
    for each row when (old.state != new.state) execute function {recorded}_record();
"""


def record_state_moves(state: StateConfig) -> None:
    """Make the state (as a pass would) with triggers recording every creation and move."""
    if not state.shared:
        record_moves(state.database)
        return
    open_state(state).close()
    with closing(psycopg.connect(state.dsn, autocommit=True)) as conn:
        conn.execute(RECORD)
        for table in TABLES.values():
            conn.execute(TRIGGERS.format(recorded=RECORDED, table=table))


def undeclared_state_moves(state: StateConfig) -> list[tuple[str, str | None, str]]:
    """The creations and moves recorded that the lifecycles do not declare."""
    if not state.shared:
        return undeclared_moves(state.database)
    with closing(psycopg.connect(state.dsn, autocommit=True)) as conn:
        seen = conn.execute(f"select distinct item, old, new from {RECORDED}").fetchall()
    return undeclared_among(seen)
