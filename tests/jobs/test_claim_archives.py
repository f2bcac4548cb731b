"""The archive job against the sandbox: what is abandoned, when, and what never is."""

import stat
import threading

from state.db import open_database
from sync_worker.sandbox import Fault


def abandon_requests(sandbox):
    return [r for r in sandbox.flexperto.requests if r.path.endswith("/archive/abandon")]


def downloads(sandbox, archive_id):
    return [r for r in sandbox.s3.requests if archive_id in r.path and r.status in (200, 206)]


def first_available(sandbox):
    return next(r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE")


def test_corrupted_archive_is_kept_aside_and_not_abandoned(sandbox, config, run, clock, log_lines):
    bad = first_available(sandbox)
    conference = bad["subject"]["conference_id"]
    sandbox.flexperto.corrupt_blob(bad["id"])
    result = run()
    assert result.exit_code == 1
    assert sandbox.flexperto.record(bad["id"])["status"] == "AVAILABLE"
    assert not any(conference in r.path for r in abandon_requests(sandbox))
    assert not (config.storage.archive_dir / conference / f"{bad['id']}.zip").exists()
    assert (config.storage.archive_dir / ".quarantine" / f"{bad['id']}.zip").exists()
    row = open_database(config.state.database)["archives"].get(bad["id"])
    assert row["state"] == "failed" and "sha256" in row["last_error"]
    assert [e for e in log_lines() if e["event"] == "archive.hash_mismatch"]
    # the others went through
    assert len(abandon_requests(sandbox)) == 2

    sandbox.flexperto.set_checksum(bad["id"], sandbox.flexperto.blob_sha256(bad["id"]))
    assert run().exit_code == 0  # still backing off: nothing tried
    assert sandbox.flexperto.record(bad["id"])["status"] == "AVAILABLE"
    clock.advance(config.retry.backoff_seconds)
    assert run().exit_code == 0
    assert sandbox.flexperto.record(bad["id"])["status"] == "ABANDONED"


def test_api_key_never_reaches_the_download_host(sandbox, run):
    run()
    assert sandbox.s3.requests
    assert all("api-key" not in r.headers for r in sandbox.s3.requests)
    assert sandbox.s3.api_key_rejections == 0
    assert all(r.headers.get("api-key") == sandbox.api_key for r in sandbox.flexperto.requests)


def test_abandoned_but_never_stored_archive_is_downloaded(sandbox, config, run):
    record = sandbox.flexperto.add_archive(
        status="ABANDONED",
        moderator={"account_id": "e-1", "email": "anna.expert@bank.example", "name": "Anna"},
        participants=[],
    )
    run()
    row = open_database(config.state.database)["archives"].get(record["id"])
    assert row["state"] == "claimed"
    assert downloads(sandbox, record["id"])
    assert not any(record["subject"]["conference_id"] in r.path for r in abandon_requests(sandbox))


def test_conference_is_abandoned_only_when_all_its_archives_are_stored(sandbox, config, run, clock):
    first = first_available(sandbox)
    conference = first["subject"]["conference_id"]
    second = sandbox.flexperto.add_archive(conference_id=conference, status="AVAILABLE")
    sandbox.flexperto.corrupt_blob(second["id"])
    run()
    assert sandbox.flexperto.record(first["id"])["status"] == "AVAILABLE"
    assert not any(conference in r.path for r in abandon_requests(sandbox))
    sandbox.flexperto.set_checksum(second["id"], sandbox.flexperto.blob_sha256(second["id"]))
    clock.advance(config.retry.backoff_seconds)
    run()
    db = open_database(config.state.database)
    assert db["archives"].get(first["id"])["state"] == "claimed"
    assert db["archives"].get(second["id"])["state"] == "claimed"
    assert len([r for r in abandon_requests(sandbox) if conference in r.path]) == 1


def test_hostile_records_are_skipped_and_the_rest_claimed(sandbox, config, run, log_lines):
    good = first_available(sandbox)
    for hostile_id in ("../../etc/x", ".hidden", "/abs", "a\x00b", "x" * 500):
        sandbox.flexperto.add_raw_record({**good, "id": hostile_id, "status": "AVAILABLE"})
    sandbox.flexperto.add_raw_record({**good, "id": "ok-id", "subject": {"conference_id": "../c"}})
    result = run()
    rejected = [e for e in log_lines() if e["event"] == "archive.rejected"]
    assert len(rejected) == 6
    assert result.stats.counts["stored"] == 3
    root = config.storage.archive_dir
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve())
    assert not (root.parent / "etc").exists()


def test_stored_files_are_private(sandbox, config, run):
    run()
    root = config.storage.archive_dir
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for path in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_interrupted_download_resumes_with_a_range_request(sandbox, config, run, clock):
    record = sandbox.flexperto.add_archive(status="AVAILABLE", size=5 * 1024 * 1024)
    sandbox.add_fault("s3", Fault(path=record["id"], action="truncate", times=1))
    run()
    folder = config.storage.archive_dir / record["subject"]["conference_id"]
    part = folder / f".{record['id']}.zip.part"
    assert part.exists() and part.stat().st_size > 0
    clock.advance(config.retry.backoff_seconds)
    run()
    ranged = [r for r in downloads(sandbox, record["id"]) if "range" in r.headers]
    assert len(ranged) == 1 and ranged[0].status == 206
    assert sandbox.flexperto.record(record["id"])["status"] == "ABANDONED"
    assert not part.exists()


def test_failed_listing_is_reported_and_other_work_continues(sandbox, config, run):
    sandbox.add_fault("flexperto", Fault(path="/conferences/archives", status=500, times=None))
    result = run()
    assert result.exit_code == 1
    assert sandbox.s3.requests == []


def test_archives_download_in_parallel_each_verified_on_its_own(sandbox, config, run):
    # Each download waits at the barrier until all three are in flight at once: a worker
    # that downloaded one at a time would break the barrier and fail them.
    barrier = threading.Barrier(3, timeout=10)
    sandbox.add_fault("s3", Fault(action="call", callback=lambda _state: barrier.wait(), times=3))
    assert config.flexperto.max_parallel_downloads >= 3
    assert run().exit_code == 0
    assert len([r for r in sandbox.flexperto.records() if r["status"] == "ABANDONED"]) == 3
