"""Every fault the sandbox can inject, one test each: the worker says so in its logs, loses
nothing, abandons nothing it has not stored, carries on with the other archives, and
finishes the work on a later pass once the fault is gone.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from sync_worker.app.runner import run_pass
from sync_worker.config import load_config
from sync_worker.sandbox import Fault, Sandbox
from sync_worker.state.db import open_database
from tests.conftest import write_config
from tests.lifecycle_moves import record_moves, undeclared_moves
from tests.system.invariants import stored_bytes

pytestmark = pytest.mark.both_stores

LIST = "/communication/conferences/archives"
DOWNLOAD = "/download"
ABANDON = "/archive/abandon"
FAST_TIMEOUT = "timeout_seconds = 1"
HUGE_LIST = b'{"items": ["' + b"x" * (17 * 1024 * 1024) + b'"]}'  # past the 16 MiB limit


@dataclass
class Case:
    arm: Callable[[Sandbox], None]
    expect_event: str
    heal: Callable[[Sandbox], None] | None = None
    fast_timeout: bool = False
    page_size: int = 100
    faulted_passes: int = 1  # for faults that only a later pass runs into
    env: dict[str, str] = field(default_factory=dict)  # config overrides
    reached: Callable[[Sandbox], bool] = lambda _sandbox: True  # the fault was run into


def faults(*arms: Callable[[Sandbox], None]) -> Callable[[Sandbox], None]:
    def arm_all(sandbox: Sandbox) -> None:
        for arm in arms:
            arm(sandbox)

    return arm_all


def fault(server: str, **options) -> Callable[[Sandbox], None]:
    return lambda sandbox: sandbox.add_fault(server, Fault(**options))


def first(sandbox: Sandbox) -> dict:
    return next(r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE")


def corrupt_first(sandbox: Sandbox) -> None:
    sandbox.flexperto.corrupt_blob(first(sandbox)["id"])


def fix_checksums(sandbox: Sandbox) -> None:
    for record in sandbox.flexperto.records():
        sandbox.flexperto.set_checksum(record["id"], sandbox.flexperto.blob_sha256(record["id"]))


def listing_page(sandbox: Sandbox, extra: list) -> bytes:
    items = [r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE"]
    return json.dumps({"items": items + extra, "total": len(items) + len(extra)}).encode()


def unknown_status(sandbox: Sandbox) -> None:
    odd = {**first(sandbox), "id": "odd-1", "status": "QUARANTINED"}
    body = listing_page(sandbox, [odd])
    sandbox.add_fault("flexperto", Fault(path=LIST, status=200, body=body, times=1))


def missing_fields(sandbox: Sandbox) -> None:
    record = first(sandbox)
    sandbox.flexperto.add_raw_record({"id": "no-subject", "status": "AVAILABLE"})
    sandbox.flexperto.add_raw_record({**record, "id": "no-sum", "sha256CheckSum": None})
    sandbox.flexperto.add_raw_record({k: v for k, v in record.items() if k != "id"})


def duplicates_across_pages(sandbox: Sandbox) -> None:
    sandbox.flexperto.duplicate_in_listing(first(sandbox)["id"])


def status_changes_before_download(sandbox: Sandbox) -> None:
    target = first(sandbox)["id"]
    sandbox.add_fault(
        "flexperto",
        Fault(
            path=f"{target}{DOWNLOAD}",
            action="call",
            callback=lambda flexperto: flexperto.set_status(target, "PACKING"),
        ),
    )


def repack_done(sandbox: Sandbox) -> None:
    for record in sandbox.flexperto.records():
        if record["status"] == "PACKING":
            sandbox.flexperto.set_status(record["id"], "AVAILABLE")


CASES = {
    "flexperto 429 with Retry-After": Case(
        fault("flexperto", path=LIST, status=429, headers={"Retry-After": "2"}), "archive.listed"
    ),
    "flexperto 429 without Retry-After": Case(
        fault("flexperto", path=LIST, status=429, times=2), "archive.listed"
    ),
    "flexperto 500 on the list": Case(
        fault("flexperto", path=LIST, status=500, times=None), "archive.list_failed"
    ),
    "flexperto 502 on download": Case(
        fault("flexperto", path=DOWNLOAD, status=502, times=None), "item.failed"
    ),
    "flexperto 503 on download": Case(
        fault("flexperto", path=DOWNLOAD, status=503, times=None), "item.failed"
    ),
    "flexperto 504 on abandon": Case(
        fault("flexperto", path=ABANDON, status=504, times=None), "item.failed"
    ),
    "flexperto connection reset": Case(
        fault("flexperto", path=DOWNLOAD, action="reset", times=None), "item.failed"
    ),
    "flexperto slow list": Case(
        fault("flexperto", path=LIST, action="delay", delay=2, times=4),
        "archive.list_failed",
        fast_timeout=True,
    ),
    "s3 truncated download": Case(fault("s3", action="truncate", times=None), "item.failed"),
    "s3 connection reset": Case(fault("s3", action="reset", times=None), "item.failed"),
    "s3 expired URL": Case(
        fault("s3", status=403, body="<Error><Code>AccessDenied</Code></Error>", times=None),
        "item.failed",
    ),
    "checksum mismatch": Case(corrupt_first, "archive.hash_mismatch", heal=fix_checksums),
    "malformed JSON list": Case(
        fault("flexperto", path=LIST, action="malformed_json"), "archive.list_failed"
    ),
    "list page without items": Case(
        fault("flexperto", path=LIST, status=200, body='{"total": 3}'), "archive.list_failed"
    ),
    # Each bad record holds its conference back (one with no subject: every conference),
    # until Flexperto lists it no more.
    "record missing fields": Case(
        missing_fields, "archive.rejected", heal=lambda s: s.flexperto.remove_raw_records()
    ),
    "unknown status": Case(unknown_status, "archive.rejected"),
    "duplicate records across pages": Case(duplicates_across_pages, "archive.listed", page_size=2),
    "status changes between list and download": Case(
        status_changes_before_download, "item.failed", heal=repack_done
    ),
    "te 401 on a valid-looking token": Case(
        fault("te", path="/contacts", status=401, times=1), "te.token_rejected"
    ),
    "te 422 unknown owner": Case(
        fault(
            "te",
            method="POST",
            path="/insights",
            status=422,
            body='{"error": "Unable to find target for relationship: \'owner\'"}',
        ),
        "item.given_up",
    ),
    "te 503": Case(fault("te", path="/insights", status=503, times=None), "item.failed"),
    "te 429 with Retry-After": Case(
        fault("te", path="/contacts", status=429, headers={"Retry-After": "1"}), "te.rate_limited"
    ),
    "te connection reset": Case(
        fault("te", path="/insights", action="reset", times=None), "item.failed"
    ),
    # A plain 500 (documented by neither vendor) on every endpoint a pass uses.
    "flexperto 500 on download": Case(
        fault("flexperto", path=DOWNLOAD, status=500, times=None), "item.failed"
    ),
    "flexperto 500 on abandon and on the record": Case(
        faults(
            fault("flexperto", path=ABANDON, status=500, times=None),
            fault(
                "flexperto", method="GET", path="/archives/archives/[^/]+$", status=500, times=None
            ),
        ),
        "item.failed",
    ),
    "s3 500": Case(fault("s3", status=500, times=None), "item.failed"),
    "te 500 on POST /token": Case(
        fault("te", path="/token$", status=500, times=None), "item.failed"
    ),
    "te 500 on GET /insight-types": Case(
        fault("te", path="/insight-types$", status=500, times=None), "item.failed"
    ),
    "te 500 on GET /contacts": Case(
        fault("te", path="/contacts$", status=500, times=None), "te.directory_unavailable"
    ),
    "te 500 on GET /users": Case(
        fault("te", path="/users$", status=500, times=None), "te.directory_unavailable"
    ),
    "te 500 on POST /insights": Case(
        fault("te", method="POST", path="/insights$", status=500, times=None), "item.failed"
    ),
    # Oversized answers: stopped, refused, never read whole.
    "s3 endless body": Case(
        fault("s3", action="endless", times=None),
        "archive.too_large",
        env={"SYNC_WORKER_FLEXPERTO_MAX_ARCHIVE_GIB": "0.01"},  # for records without a size
    ),
    "s3 gzip-encoded body": Case(fault("s3", action="gzip", times=None), "archive.hash_mismatch"),
    "flexperto huge JSON list": Case(
        fault("flexperto", path=LIST, status=200, body=HUGE_LIST, times=None),
        "archive.list_failed",
    ),
    "te 500 on GET /insights": Case(  # the look-up of an insight whose POST went unanswered
        faults(
            fault("te", method="POST", path="/insights$", status=502, times=1),
            fault("te", method="GET", path="/insights$", status=500, times=None),
        ),
        "item.failed",
        faulted_passes=2,
        reached=lambda sandbox: any(
            r.method == "GET" and r.path.endswith("/insights") and r.status == 500
            for r in sandbox.totalexpert.requests
        ),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fault(name, sandbox, tmp_path, clock, log_lines):
    case = CASES[name]
    path = write_config(tmp_path, sandbox)
    text = path.read_text().replace("page_size = 100", f"page_size = {case.page_size}")
    if case.fast_timeout:
        text = text.replace("timeout_seconds = 5", FAST_TIMEOUT)
    path.write_text(text)
    config = load_config(path, env=case.env)
    record_moves(config.state.database)
    expected = {r["id"]: r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE"}

    case.arm(sandbox)
    for _ in range(case.faulted_passes):
        clock.advance(config.retry.max_backoff_seconds)
        run_pass(config, clock)
    events = log_lines()
    assert any(e["event"] == case.expect_event for e in events), [e["event"] for e in events]
    assert case.reached(sandbox)
    assert_nothing_abandoned_unstored(sandbox, config)

    sandbox.flexperto.faults.clear()
    sandbox.s3.faults.clear()
    sandbox.totalexpert.faults.clear()
    if case.heal:
        case.heal(sandbox)
    retry_parked(config)
    for _ in range(4):
        clock.advance(config.retry.max_backoff_seconds)
        run_pass(config, clock)
    assert_all_done(sandbox, config, expected)
    assert undeclared_moves(config.state.database) == []


def retry_parked(config) -> None:
    from sync_worker.state import archives, insights

    db = open_database(config.state.database)
    archives.retry_failed(db)
    insights.retry_failed(db)
    db.close()


def assert_nothing_abandoned_unstored(sandbox: Sandbox, config) -> None:
    db = open_database(config.state.database)
    for record in sandbox.flexperto.records():
        if record["status"] != "ABANDONED":
            continue
        row = db["archives"].get(record["id"])
        assert row["stored_at"] is not None and row["path"], record["id"]
    db.close()


def assert_all_done(sandbox: Sandbox, config, expected: dict[str, dict]) -> None:
    root = config.storage.archive_dir
    for archive_id in expected:
        digest = hashlib.sha256(stored_bytes(config, archive_id)).hexdigest()
        assert digest == sandbox.flexperto.record(archive_id)["sha256CheckSum"]
        assert sandbox.flexperto.record(archive_id)["status"] == "ABANDONED"
    abandons = Counter(
        r.path for r in sandbox.flexperto.requests if r.path.endswith(ABANDON) and r.status == 200
    )
    assert set(abandons.values()) <= {1}
    keys = Counter(
        (i["data"]["flexperto_archive_id"], i["contact_id"]) for i in sandbox.totalexpert.insights()
    )
    assert set(keys.values()) == {1}
    db = open_database(config.state.database)
    assert set(keys) == {(r["archive_id"], r["contact_id"]) for r in db["insights"].rows}
    assert all(r["state"] == "sent" for r in db["insights"].rows)
    assert not list(root.glob("*/.*.part"))
    if sandbox.bucket is not None:
        assert sandbox.bucket.incomplete_uploads() == []
    assert sandbox.s3.api_key_rejections == 0
    assert sandbox.totalexpert.rate_limited_count <= 1  # only the injected 429s
    db.close()
