"""The archive job against the sandbox: what is abandoned, when, and what never is."""

import hashlib
import json
import stat
import threading
from collections import Counter
from dataclasses import replace

import pytest

from sync_worker.adapters.flexperto.client import ListingForm
from sync_worker.app.runner import run_pass
from sync_worker.config import load_config
from sync_worker.jobs.claim_archives import LISTED_STATUSES
from sync_worker.sandbox import LENIENT, STRICT, Fault
from sync_worker.sandbox.bucket import SandboxBucket
from sync_worker.state import capabilities
from sync_worker.state.configured import open_state
from sync_worker.state.db import open_database
from tests.conftest import SimulatedCrash
from tests.jobs.declared_moves import record_state_moves, undeclared_state_moves
from tests.state_rows import count_of, row_of, rows_in
from tests.tcp_forwarder import behind_a_forwarder


def abandon_requests(sandbox):
    return [r for r in sandbox.flexperto.requests if r.path.endswith("/archive/abandon")]


def downloads(sandbox, archive_id):
    return [r for r in sandbox.s3.requests if archive_id in r.path and r.status in (200, 206)]


def first_available(sandbox):
    return next(r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE")


def archive_row(config, archive_id):
    db = open_state(config.state)
    try:
        return row_of(db, "archives", archive_id=archive_id)
    finally:
        db.close()


def archive_rows(config):
    return rows_in(config.state, "archives", "archive_id")


def in_the_store(sandbox, config, conference, archive_id):
    """Whether the store holds the archive under the name a stored one has (in the folder,
    or the bucket; an S3 store's spool in archive_dir holds none once uploaded)."""
    name = f"{conference}/{archive_id}.zip"
    if sandbox.bucket is None:
        return (config.storage.archive_dir / name).exists()
    keys = sandbox.bucket.keys()
    return config.storage.prefix + name in keys


@pytest.mark.both_states
def test_corrupted_archive_is_kept_aside_and_not_abandoned(sandbox, config, run, clock, log_lines):
    bad = first_available(sandbox)
    conference = bad["subject"]["conference_id"]
    sandbox.flexperto.corrupt_blob(bad["id"])
    result = run()
    assert result.exit_code == 1
    assert sandbox.flexperto.record(bad["id"])["status"] == "AVAILABLE"
    assert not any(conference in r.path for r in abandon_requests(sandbox))
    assert not (config.storage.archive_dir / conference / f"{bad['id']}.zip").exists()
    assert not in_the_store(sandbox, config, conference, bad["id"])
    assert (config.storage.archive_dir / ".quarantine" / f"{bad['id']}.zip").exists()
    row = archive_row(config, bad["id"])
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


@pytest.mark.both_states
def test_api_key_never_reaches_the_download_host(sandbox, run):
    run()
    assert sandbox.s3.requests
    assert all("api-key" not in r.headers for r in sandbox.s3.requests)
    assert sandbox.s3.api_key_rejections == 0
    assert all(r.headers.get("api-key") == sandbox.api_key for r in sandbox.flexperto.requests)


@pytest.mark.both_states
@pytest.mark.lenient_only  # the documents do not say the list shows ABANDONED records
def test_abandoned_but_never_stored_archive_is_downloaded(sandbox, config, run):
    record = sandbox.flexperto.add_archive(
        status="ABANDONED",
        moderator={"account_id": "e-1", "email": "anna.expert@bank.example", "name": "Anna"},
        participants=[],
    )
    run()
    row = archive_row(config, record["id"])
    assert row["state"] == "claimed"
    assert downloads(sandbox, record["id"])
    assert not any(record["subject"]["conference_id"] in r.path for r in abandon_requests(sandbox))


@pytest.mark.both_states
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
    assert archive_row(config, first["id"])["state"] == "claimed"
    assert archive_row(config, second["id"])["state"] == "claimed"
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


@pytest.mark.both_states
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


@pytest.mark.both_states
def test_failed_listing_is_reported_and_other_work_continues(sandbox, config, run):
    sandbox.add_fault("flexperto", Fault(path="/conferences/archives", status=500, times=None))
    result = run()
    assert result.exit_code == 1
    assert sandbox.s3.requests == []


@pytest.mark.both_states
def test_archives_download_in_parallel_each_verified_on_its_own(sandbox, config, run):
    # Each download waits at the barrier until all three are in flight at once: a worker
    # that downloaded one at a time would break the barrier and fail them.
    barrier = threading.Barrier(3, timeout=10)
    sandbox.add_fault("s3", Fault(action="call", callback=lambda _service: barrier.wait(), times=3))
    assert config.flexperto.max_parallel_downloads >= 3
    assert run().exit_code == 0
    assert len([r for r in sandbox.flexperto.records() if r["status"] == "ABANDONED"]) == 3


def claimed_everything(sandbox, config):
    db = open_database(config.state.database)
    available = [r for r in sandbox.flexperto.records() if r["status"] != "FAILED"]
    return all(
        db["archives"].get(r["id"])["state"] == "claimed" and r["status"] == "ABANDONED"
        for r in available
    )


@pytest.mark.parametrize(
    "dialect",
    [
        replace(LENIENT, flexperto_list_params=False),
        replace(LENIENT, flexperto_prefix=""),
        replace(STRICT, flexperto_prefix=""),
    ],
    ids=["no query parameters", "no /api/v2 prefix", "neither"],
)
def test_a_refused_listing_form_is_replaced_and_remembered(sandbox_in, clock, log_lines, dialect):
    sandbox, config = sandbox_in(dialect)
    run_pass(config, clock)
    run_pass(config, clock)  # the archive that was PACKING
    assert claimed_everything(sandbox, config)
    assert len([e for e in log_lines() if e["event"] == "flexperto.capability_missing"]) == 1
    db = open_database(config.state.database)
    form = ListingForm.from_text(capabilities.get(db, capabilities.LISTING_FORM).value)
    assert form.prefix == dialect.flexperto_prefix
    assert form.status_filter == form.paging == dialect.flexperto_list_params
    sandbox.flexperto.clear_requests()
    run_pass(config, clock)  # the remembered form is used at once
    statuses = [r.status for r in sandbox.flexperto.requests]
    # one listing per status asked for, or one for all
    assert statuses == ([200] * len(LISTED_STATUSES) if form.status_filter else [200])


@pytest.mark.both_states
@pytest.mark.parametrize("page_size", [2, 3])
def test_a_listing_that_ignores_paging_is_read_once(sandbox, config, tmp_path, clock, page_size):
    records = [r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE"]
    everything = json.dumps({"items": records}).encode()
    sandbox.add_fault(
        "flexperto", Fault(path="/conferences/archives$", status=200, body=everything, times=None)
    )
    path = tmp_path / "config.toml"  # config's, naming its state
    path.write_text(path.read_text().replace("page_size = 100", f"page_size = {page_size}"))
    run_pass(load_config(path, env={}), clock)
    lists = [r for r in sandbox.flexperto.requests if r.path.endswith("/conferences/archives")]
    # at most two pages per status asked for and one request for everything, never a loop
    assert len(lists) <= 3 * len(LISTED_STATUSES)
    assert all(r["status"] == "ABANDONED" for r in map(sandbox.flexperto.record, ids(records)))


def ids(records):
    return [r["id"] for r in records]


def test_participants_missing_from_records_are_read_from_the_archive(sandbox_in, clock, log_lines):
    sandbox, config = sandbox_in(replace(STRICT, flexperto_record_people=False))
    run_pass(config, clock)
    run_pass(config, clock)  # the archive that was PACKING
    assert [e["participants"] for e in log_lines() if e["event"] == "archive.people_from_metadata"]
    created = sandbox.totalexpert.insights()
    assert len(created) == 4  # as with full records: the moderators are not participants
    max_contacts = [c["id"] for c in sandbox.totalexpert.contacts() if c["email"].startswith("max")]
    anna = next(u for u in sandbox.totalexpert.users() if u["email"].startswith("anna"))
    assert {i["owner_id"] for i in created if i["contact_id"] in max_contacts} == {anna["id"]}


@pytest.mark.both_states
def test_a_stored_archive_the_listing_did_not_show_is_looked_up_before_abandoning(
    sandbox, config, run, clock, crash
):
    crash.arm("archive.abandoned", 1)  # Flexperto has it abandoned; the ledger says stored
    with pytest.raises(SimulatedCrash):
        run()
    crash.disarm()
    sandbox.add_fault("flexperto", Fault(path="/conferences/archives$", status=503, times=None))
    clock.advance(3600)
    before = len(abandon_requests(sandbox))
    run()  # the listing fails: every stored archive is asked about on its own
    looked_up = [r for r in sandbox.flexperto.requests if "/archives/archives/" in r.path]
    assert looked_up and all(r.method == "GET" for r in looked_up)
    # ... and none is abandoned: what the listing did not read may hold a sibling
    assert len(abandon_requests(sandbox)) == before
    sandbox.service("flexperto").faults.clear()
    clock.advance(3600)
    run()
    abandons = Counter(r.path for r in abandon_requests(sandbox))
    assert set(abandons.values()) == {1}
    assert {row["state"] for row in archive_rows(config)} == {"claimed"}


def test_a_storage_host_without_ranges_starts_over(sandbox_in, clock):
    sandbox, config = sandbox_in(replace(LENIENT, s3_ranges=False))
    record = sandbox.flexperto.add_archive(status="AVAILABLE", size=5 * 1024 * 1024)
    sandbox.add_fault("s3", Fault(path=record["id"], action="truncate", times=1))
    run_pass(config, clock)
    part = config.storage.archive_dir / record["subject"]["conference_id"]
    assert (part / f".{record['id']}.zip.part").stat().st_size > 0
    clock.advance(config.retry.backoff_seconds)
    run_pass(config, clock)
    answers = [r.status for r in downloads(sandbox, record["id"])]
    assert answers == [200, 200]  # the Range was ignored: the whole file again
    stored = part / f"{record['id']}.zip"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == record["sha256CheckSum"]
    assert sandbox.flexperto.record(record["id"])["status"] == "ABANDONED"


@pytest.mark.both_states
def test_an_endless_download_is_stopped_at_the_archives_size(
    sandbox, config, tmp_path, clock, log_lines
):
    record = sandbox.flexperto.add_archive(status="AVAILABLE", size=3 * 1024 * 1024)
    sandbox.add_fault("s3", Fault(path=record["id"], action="endless", times=None))
    ceiling = 8 * 1024 * 1024  # what records without a size (strict) may have
    env = {"SYNC_WORKER_FLEXPERTO_MAX_ARCHIVE_GIB": str(ceiling / 1024**3)}
    config = load_config(tmp_path / "config.toml", env=env)  # config's, naming its state
    assert run_pass(config, clock).exit_code == 1
    [stopped] = [e for e in log_lines() if e["event"] == "archive.too_large"]
    assert stopped["archive_id"] == record["id"] and "stopped" in stopped["error"]
    limit = record["size"] if sandbox.dialect.flexperto_record_size else ceiling
    kept = config.storage.archive_dir / ".quarantine" / f"{record['id']}.zip"
    assert kept.stat().st_size <= limit  # never more than the archive may have
    folder = config.storage.archive_dir / record["subject"]["conference_id"]
    assert not list(folder.glob(f"*{record['id']}*"))  # no partial file, nothing stored
    assert not in_the_store(sandbox, config, record["subject"]["conference_id"], record["id"])
    assert sandbox.flexperto.record(record["id"])["status"] == "AVAILABLE"  # not abandoned


@pytest.mark.both_states
def test_a_gzip_encoded_download_is_hashed_as_sent_and_refused(sandbox, config, run, log_lines):
    record = sandbox.flexperto.add_archive(status="AVAILABLE")
    sandbox.add_fault("s3", Fault(path=record["id"], action="gzip", times=None))
    run()
    [refused] = [
        e for e in log_lines() if e["event"] == "archive.hash_mismatch"
    ]  # the gzip bytes are not the archive's: they are not decoded into it silently
    assert refused["archive_id"] == record["id"]
    assert sandbox.flexperto.record(record["id"])["status"] == "AVAILABLE"
    downloads = [r for r in sandbox.s3.requests if record["id"] in r.path]
    assert downloads and all(r.headers.get("accept-encoding") == "identity" for r in downloads)


@pytest.mark.both_states
@pytest.mark.s3_only
def test_uploads_left_in_the_bucket_are_aborted_when_a_pass_starts(sandbox, config, run, log_lines):
    key = f"{config.storage.prefix}c-left/left.zip"
    sandbox.bucket.client().create_multipart_upload(Bucket=sandbox.bucket.name, Key=key)
    assert run().exit_code == 0
    assert sandbox.bucket.incomplete_uploads() == []
    assert [e["key"] for e in log_lines() if e["event"] == "storage.upload_aborted"] == [key]


@pytest.mark.both_states
@pytest.mark.s3_only
def test_an_unreachable_bucket_fails_the_pass_and_abandons_nothing(
    sandbox, tmp_path, run, log_lines
):
    path = tmp_path / "config.toml"
    path.write_text(path.read_text().replace(sandbox.bucket.name, sandbox.bucket.name + "-gone"))
    result = run_pass(load_config(path, env={}), sandbox.clock, jobs=["archives"])
    assert result.exit_code == 1
    assert abandon_requests(sandbox) == []
    assert not sandbox.s3.requests  # nothing downloaded either
    (event,) = [e for e in log_lines() if e["event"] == "storage.unavailable"]
    assert "-gone" in event["error"]


@pytest.mark.both_states
@pytest.mark.both_stores
def test_sha256sums_names_every_stored_archive_after_a_pass(sandbox, config, run):
    run()
    stored = [r for r in sandbox.flexperto.records() if r["status"] == "ABANDONED"]
    expected = sorted(
        f"{r['sha256CheckSum']}  {r['subject']['conference_id']}/{r['id']}.zip" for r in stored
    )
    if sandbox.bucket is None:
        text = (config.storage.archive_dir / "SHA256SUMS").read_text()
    else:
        text = sandbox.bucket.read(config.storage.prefix + "SHA256SUMS").decode()
    assert sorted(text.splitlines()) == expected


@pytest.mark.both_states
@pytest.mark.s3_only
def test_a_bucket_without_object_lock_stops_the_job_once_before_any_download(
    sandbox, config, tmp_path, log_lines
):
    plain = SandboxBucket(sandbox.bucket.server, locked=False)
    path = tmp_path / "config.toml"
    path.write_text(path.read_text().replace(sandbox.bucket.name, plain.name))
    for _ in range(2):  # every pass says so once, and tries nothing
        result = run_pass(load_config(path, env={}), sandbox.clock, jobs=["archives"])
        assert result.exit_code == 1
    assert not sandbox.s3.requests and abandon_requests(sandbox) == []
    assert plain.keys() == []  # not even the owner marker
    events = [e for e in log_lines() if e["level"] in ("warning", "error")]
    assert [e["event"] for e in events] == ["storage.misconfigured"] * 2
    assert events[0]["bucket"] == plain.name
    assert f"s3 {plain.name}: the bucket has no Object Lock" in events[0]["error"]
    assert "storage.retention_days = 0" in events[0]["error"]
    db = open_state(config.state)
    try:
        assert count_of(db, "archives") == 0  # none listed or charged
    finally:
        db.close()


@pytest.mark.both_states
@pytest.mark.s3_only
def test_a_store_lost_mid_pass_stops_the_job_at_once_and_the_next_pass_resumes(
    sandbox, config, tmp_path, log_lines
):
    forwarder, lost = behind_a_forwarder(sandbox, tmp_path, "max_parallel_downloads = 1\n")
    served = []

    def lose_the_store(_service):  # the store goes as the second archive is downloaded
        served.append(1)
        if len(served) == 2:
            forwarder.stop()

    sandbox.add_fault("s3", Fault(action="call", callback=lose_the_store, times=None))
    try:
        result = run_pass(lost, sandbox.clock, jobs=["archives"])
        events = [e for e in log_lines() if e["event"].startswith(("storage.", "item.", "job."))]
        rows = {r["archive_id"]: r for r in archive_rows(lost)}
        fetched = [r.path for r in sandbox.s3.requests if r.status in (200, 206)]
        in_spool = [p.stem for p in lost.storage.archive_dir.glob("*/*.zip")]
        forwarder.start()
        again = run_pass(lost, sandbox.clock, jobs=["archives"])
    finally:
        forwarder.stop()
    assert result.exit_code == 1
    assert [e["event"] for e in events] == ["storage.unavailable"]  # at once, no item.failed
    assert events[0]["path"] == f"s3://{sandbox.bucket.name}/"
    assert f"127.0.0.1:{forwarder.port}" in events[0]["error"]
    assert sorted(r["state"] for r in rows.values()) == ["claimed", "pending", "pending"]
    assert all(r["attempts"] == 0 for r in rows.values())  # none charged
    claimed, uploading = ([a for a in rows if a in path] for path in fetched)  # the third: not
    assert rows[claimed[0]]["state"] == "claimed"
    assert in_spool == uploading  # verified, kept for the next pass to upload
    assert again.exit_code == 0
    assert all(len(downloads(sandbox, archive_id)) == 1 for archive_id in rows)
    assert {r["id"]: r["status"] for r in sandbox.flexperto.records() if r["id"] in rows} == {
        archive_id: "ABANDONED" for archive_id in rows
    }
    listed = sandbox.bucket.keys()
    stored = {key.rpartition("/")[2] for key in listed}
    assert {f"{archive_id}.zip" for archive_id in rows} <= stored
    assert not list(lost.storage.archive_dir.glob("*/*.zip"))  # the spool emptied


@pytest.mark.both_states
@pytest.mark.s3_only
def test_a_store_lost_under_parallel_downloads_stops_every_thread_with_one_event(
    sandbox, config, tmp_path, log_lines
):
    forwarder, lost = behind_a_forwarder(sandbox, tmp_path)  # 4 downloads at a time
    added = [sandbox.flexperto.add_archive(status="AVAILABLE")["id"] for _ in range(5)]
    sandbox.add_fault("s3", Fault(action="call", callback=lambda _s: forwarder.stop()))
    try:
        result = run_pass(lost, sandbox.clock, jobs=["archives"])
        events = [e for e in log_lines() if e["event"].startswith(("storage.", "item.", "job."))]
        rows = archive_rows(lost)
        forwarder.start()
        listed = sandbox.bucket.keys()
        again = run_pass(lost, sandbox.clock, jobs=["archives"])
    finally:
        forwarder.stop()
    assert result.exit_code == 1
    assert [e["event"] for e in events] == ["storage.unavailable"]
    assert all(row["attempts"] == 0 for row in rows)
    stored = {key.rpartition("/")[2] for key in listed if key.endswith(".zip")}
    claimed = [row["archive_id"] for row in rows if row["state"] == "claimed"]
    assert {f"{archive_id}.zip" for archive_id in claimed} <= stored  # abandoned: stored
    assert again.exit_code == 0
    for archive_id in [row["archive_id"] for row in rows] + added:
        assert len(downloads(sandbox, archive_id)) == 1, archive_id
        assert sandbox.flexperto.record(archive_id)["status"] == "ABANDONED"


@pytest.fixture(autouse=True)
def _declared_moves(config):
    """Every creation and move of an item in these tests is one its lifecycle declares."""
    record_state_moves(config.state)
    yield
    assert undeclared_state_moves(config.state) == []
