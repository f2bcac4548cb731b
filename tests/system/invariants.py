"""What must hold once the work is done, however the passes before were cut short: every
archive that was AVAILABLE is stored with the bytes Flexperto hashed and abandoned, no
temporary file is left, nothing was downloaded, abandoned or posted twice."""

from __future__ import annotations

import hashlib
from collections import Counter

from sync_worker.config import Config
from sync_worker.sandbox import Sandbox
from tests.state_rows import row_of, rows_of


def stored_bytes(config: Config, archive_id: str) -> bytes:
    """The bytes of a stored archive, from wherever the ledger says the store keeps it."""
    from sync_worker.adapters.stores import open_store
    from sync_worker.state.configured import open_state

    db = open_state(config.state)
    try:
        location = row_of(db, "archives", archive_id=archive_id)["path"]
    finally:
        db.close()
    return b"".join(open_store(config.storage, config.http).read(location))


def assert_claimed_once(sandbox: Sandbox, config: Config, expected: dict[str, dict]) -> None:
    root = config.storage.archive_dir
    for archive_id, record in expected.items():
        digest = hashlib.sha256(stored_bytes(config, archive_id)).hexdigest()
        assert digest == record["sha256CheckSum"]
        assert sandbox.flexperto.record(archive_id)["status"] == "ABANDONED"
    assert not list(root.glob("*/.*.part"))
    if sandbox.bucket is not None:
        assert sandbox.bucket.incomplete_uploads() == []
    full_downloads = Counter(
        r.path for r in sandbox.s3.requests if r.status == 200 and "range" not in r.headers
    )
    assert all(count == 1 for count in full_downloads.values()), full_downloads
    abandons = Counter(r.path for r in sandbox.flexperto.requests if r.method == "POST")
    assert all(count == 1 for count in abandons.values()), abandons
    keys = Counter(
        (i["data"]["flexperto_archive_id"], i["contact_id"]) for i in sandbox.totalexpert.insights()
    )
    assert len(keys) >= 3 and set(keys.values()) == {1}


def assert_consistent(sandbox: Sandbox, config: Config) -> None:
    """What must hold after any pass, finished or not: nothing is abandoned at Flexperto
    that is not stored here with the right bytes, and the ledger agrees with TE."""
    from sync_worker.state.configured import open_state

    db = open_state(config.state)
    try:
        rows = {row["archive_id"]: row for row in rows_of(db, "archives", "archive_id")}
        for record in sandbox.flexperto.records():
            if record["status"] != "ABANDONED":
                continue
            row = rows[record["id"]]
            assert row["stored_at"] is not None, record["id"]
            digest = hashlib.sha256(stored_bytes(config, record["id"])).hexdigest()
            assert digest == record["sha256CheckSum"]
        in_te = Counter(
            (i["data"]["flexperto_archive_id"], i["contact_id"])
            for i in sandbox.totalexpert.insights()
        )
        assert set(in_te.values()) <= {1}, in_te
        ledger = {
            (r["archive_id"], r["contact_id"]): r["state"]
            for r in rows_of(db, "insights", "archive_id, contact_id")
        }
        for key in in_te:  # posted: known to the ledger, as sent or as possibly sent
            assert ledger.get(key) in ("sent", "sending"), (key, ledger.get(key))
        for key, state in ledger.items():
            assert state != "sent" or key in in_te, key
    finally:
        db.close()
