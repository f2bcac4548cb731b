"""Which state file this is, so that an archive store can belong to one: a random id made
once in the state file (stores.StoreOwner adds the host and the file's path, for people).

The archive job claims the store with it before it stores anything (Store.claim): a worker
with another state file on the same folder or bucket prefix is refused, and several
processes of one state file (the daemon, a cron pass, ``status``) share it.
"""

from __future__ import annotations

import uuid

from sync_worker.state.db import Database, transaction


def state_id(db: Database) -> str:
    """The state file's id, made on first use."""
    found = _state_id(db)
    if found is None:
        with transaction(db):
            db.execute(
                "insert into state_identity (id, state_id) values (1, ?) on conflict do nothing",
                [uuid.uuid4().hex],
            )
        found = _state_id(db)
    assert found is not None  # inserted just now, or by another process meanwhile
    return found


def _state_id(db: Database) -> str | None:
    row = next(db.query("select state_id from state_identity where id = 1"), None)
    return None if row is None else row["state_id"]
