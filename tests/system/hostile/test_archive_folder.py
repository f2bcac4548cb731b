"""The local archive folder under attack: a filesystem that writes short, a second worker
with another state file on the same folder, and symbolic links planted inside it."""

from __future__ import annotations

import hashlib
import os
import resource
import signal

import pytest

from sync_worker.adapters.stores import VerificationError
from sync_worker.adapters.stores.s3_upload import Uploader
from sync_worker.app.runner import run_pass
from sync_worker.config import load_config
from sync_worker.jobs.context import AuditPlan
from sync_worker.sandbox.bucket import SandboxBucket
from sync_worker.sandbox.worker_process import log_events, run_worker
from tests.conftest import TEST_SETTINGS, write_config

MIB = 1024 * 1024
FILE_SIZE_LIMIT = MIB * 3 // 2


def _limit_file_size() -> None:
    # Past the limit a write returns short, then fails with EFBIG (SIGXFSZ ignored): what a
    # quota, LimitFSIZE= or a network filesystem interrupted mid-write does.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@pytest.mark.both_stores
def test_a_short_write_fails_the_archive_and_nothing_is_abandoned(sandbox, tmp_path):
    big = sandbox.flexperto.add_archive(size=MIB * 18 // 10)  # a full chunk, then a short one
    config_file = write_config(tmp_path, sandbox)

    done = run_worker("run-once", config=config_file, preexec_fn=_limit_file_size)

    assert done.returncode == 1, done.stderr[-2000:]
    events = log_events(done.stderr)
    failed = [e for e in events if e["event"] == "item.failed"]
    assert [e["archive_id"] for e in failed] == [big["id"]]
    assert "File too large" in failed[0]["error"]
    assert not [
        e for e in events if e["event"] == "archive.stored" and e["archive_id"] == big["id"]
    ]
    assert sandbox.flexperto.record(big["id"])["status"] == "AVAILABLE"

    run_worker("retry", big["id"], config=config_file)
    done = run_worker("run-once", config=config_file)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sandbox.flexperto.record(big["id"])["status"] == "ABANDONED"
    stored = [e for e in log_events(done.stderr) if e["event"] == "archive.stored"]
    assert [e["size"] for e in stored if e["archive_id"] == big["id"]] == [big["size"]]


def _second_worker(sandbox, tmp_path, config, spool=None):
    """Another worker with a state file of its own on ``config``'s archive folder (or, for
    a bucket, with its own spool folder ``spool`` on the same bucket and prefix)."""
    folder = tmp_path / "second"
    folder.mkdir()
    archive_dir = spool or config.storage.archive_dir
    path = folder / "config.toml"
    path.write_text(sandbox.config_toml(str(archive_dir), str(folder / "state.db")) + TEST_SETTINGS)
    return load_config(path, env={})


@pytest.mark.both_stores
def test_a_second_state_file_is_refused_the_archive_folder_before_any_download(
    sandbox, tmp_path, config, clock, log_lines
):
    assert run_pass(config, clock).exit_code == 0
    newer = sandbox.flexperto.add_archive()
    other = _second_worker(sandbox, tmp_path, config)
    sandbox.s3.clear_requests()

    result = run_pass(other, clock)

    assert result.exit_code == 1
    refused = [e for e in log_lines() if e["event"] == "storage.foreign_owner"]
    assert len(refused) == 1
    assert str(config.state.database) in refused[0]["owner"]
    assert sandbox.s3.requests == []  # nothing downloaded
    assert sandbox.flexperto.record(newer["id"])["status"] == "AVAILABLE"
    # The owner goes on as before.
    assert run_pass(config, clock).exit_code == 0
    assert sandbox.flexperto.record(newer["id"])["status"] == "ABANDONED"


@pytest.mark.s3_only
def test_a_second_state_file_is_refused_the_bucket_prefix_even_with_its_own_spool(
    sandbox, tmp_path, config, clock, log_lines
):
    assert run_pass(config, clock).exit_code == 0
    sandbox.flexperto.add_archive()
    other = _second_worker(sandbox, tmp_path, config, spool=tmp_path / "other-spool")
    sandbox.s3.clear_requests()

    assert run_pass(other, clock).exit_code == 1

    refused = [e for e in log_lines() if e["event"] == "storage.foreign_owner"]
    assert len(refused) == 1
    assert str(config.state.database) in refused[0]["owner"]
    assert sandbox.s3.requests == []


@pytest.mark.both_stores
def test_a_state_file_made_anew_where_it_was_keeps_its_store(sandbox, config, clock):
    """The state file lost (or restored from an old backup) and made anew in its place is
    the same owner: the store is not refused, and the marker names the new file."""
    assert run_pass(config, clock).exit_code == 0
    for path in config.state.database.parent.glob(config.state.database.name + "*"):
        path.unlink()
    newer = sandbox.flexperto.add_archive()
    assert run_pass(config, clock).exit_code == 0
    assert sandbox.flexperto.record(newer["id"])["status"] == "ABANDONED"
    assert run_pass(config, clock).exit_code == 0


def test_processes_of_one_state_file_share_the_archive_folder(sandbox, tmp_path, config, clock):
    assert run_pass(config, clock).exit_code == 0
    newer = sandbox.flexperto.add_archive()
    config_file = tmp_path / "config.toml"
    # Other processes of the same state file: a cron pass, an audit, status.
    for command in ("run-once", "audit", "status"):
        done = run_worker(command, config=config_file)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        assert "storage.foreign_owner" not in done.stderr
    assert sandbox.flexperto.record(newer["id"])["status"] == "ABANDONED"


def test_the_files_the_worker_keeps_at_the_root_are_hidden_but_sha256sums(sandbox, config, clock):
    assert run_pass(config, clock).exit_code == 0
    assert run_pass(config, clock, jobs=("audit",)).exit_code == 0
    root = config.storage.archive_dir
    kept = [p.name for p in root.iterdir() if p.is_file()]
    assert "SHA256SUMS" in kept
    assert all(name.startswith(".") for name in kept if name != "SHA256SUMS")


def _outside(tmp_path):
    """A folder outside the archive folder, with a file in it, and how it looks now."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"not the worker's\n")
    return outside


def _snapshot(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _planted(sandbox, config, name, target):
    """An archive to come, and a link at ``name`` (formatted with its ids) pointing at
    ``target``; returns the archive and the link."""
    archive = sandbox.flexperto.add_archive()
    ids = {"c": archive["subject"]["conference_id"], "a": archive["id"]}
    link = config.storage.archive_dir / name.format(**ids)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return archive, link


def _refused(log_lines, archive, link):
    failed = [e for e in log_lines() if e["event"] == "item.failed"]
    assert [e["archive_id"] for e in failed] == [archive["id"]]
    assert str(link) in failed[0]["error"]
    assert "symbolic link" in failed[0]["error"]


PLANTED_IN_A_FOLDER = {
    "conference folder": "{c}",
    "partial file": "{c}/.{a}.zip.part",
    "record's temporary file": "{c}/.{a}.json.tmp",
    "record": "{c}/{a}.json",
}


@pytest.mark.parametrize("name", PLANTED_IN_A_FOLDER.values(), ids=PLANTED_IN_A_FOLDER.keys())
def test_a_link_planted_in_a_conference_is_refused_and_nothing_outside_is_touched(
    sandbox, tmp_path, config, clock, log_lines, name
):
    outside = _outside(tmp_path)
    before = _snapshot(outside)
    target = outside if name == "{c}" else outside / "precious"
    archive, link = _planted(sandbox, config, name, target)
    config.storage.archive_dir.mkdir(exist_ok=True)

    result = run_pass(config, clock)

    assert result.exit_code == 1
    _refused(log_lines, archive, link)
    assert _snapshot(outside) == before
    assert sandbox.flexperto.record(archive["id"])["status"] == "AVAILABLE"
    others = [r for r in sandbox.flexperto.records() if r["id"] != archive["id"]]
    assert [r for r in others if r["status"] == "ABANDONED"]  # the pass went on


@pytest.mark.parametrize("name", ["{c}/.{a}.zip.part", "{c}/{a}.zip"], ids=["partial", "final"])
def test_a_fifo_planted_in_a_conference_fails_its_archive_and_blocks_nothing(
    sandbox, config, clock, log_lines, name
):
    """A named pipe where a file is awaited would block the first open for reading for
    ever (nobody writes to it): the pass must go on, the archive fail naming it."""
    archive = sandbox.flexperto.add_archive()
    ids = {"c": archive["subject"]["conference_id"], "a": archive["id"]}
    planted = config.storage.archive_dir / name.format(**ids)
    planted.parent.mkdir(parents=True)
    os.mkfifo(planted)

    result = run_pass(config, clock)

    assert result.exit_code == 1
    failed = [e for e in log_lines() if e["event"] == "item.failed"]
    assert [e["archive_id"] for e in failed] == [archive["id"]]
    assert str(planted) in failed[0]["error"] and "not a regular file" in failed[0]["error"]
    assert sandbox.flexperto.record(archive["id"])["status"] == "AVAILABLE"


def test_a_linked_archive_in_place_is_not_taken_for_a_stored_one(
    sandbox, tmp_path, config, clock, log_lines
):
    # The link points at the right bytes: trusted, the archive would be abandoned while
    # its only copy is outside the folder, where anyone may delete it.
    outside = _outside(tmp_path)
    archive = sandbox.flexperto.add_archive()
    copy = outside / "copy.zip"
    copy.write_bytes(sandbox.flexperto.blob(archive["id"]).path.read_bytes())
    before = _snapshot(outside)
    archive, link = (
        archive,
        config.storage.archive_dir / archive["subject"]["conference_id"] / f"{archive['id']}.zip",
    )
    link.parent.mkdir(parents=True)
    link.symlink_to(copy)

    assert run_pass(config, clock).exit_code == 1

    _refused(log_lines, archive, link)
    assert _snapshot(outside) == before
    assert sandbox.flexperto.record(archive["id"])["status"] == "AVAILABLE"


def test_a_linked_quarantine_is_refused_and_the_bad_copy_stays_inside(
    sandbox, tmp_path, config, clock, log_lines
):
    outside = _outside(tmp_path)
    before = _snapshot(outside)
    archive, link = _planted(sandbox, config, ".quarantine", outside)
    sandbox.flexperto.corrupt_blob(archive["id"])

    assert run_pass(config, clock).exit_code == 1

    failed = [e for e in log_lines() if e["event"] == "item.failed"]
    assert [e["archive_id"] for e in failed] == [archive["id"]]
    assert str(link) in failed[0]["error"] and "symbolic link" in failed[0]["error"]
    assert _snapshot(outside) == before
    assert sandbox.flexperto.record(archive["id"])["status"] == "AVAILABLE"


@pytest.mark.parametrize("name", ["SHA256SUMS", ".SHA256SUMS.tmp"])
def test_a_linked_sums_file_is_refused_and_not_written_through(
    sandbox, tmp_path, config, clock, log_lines, name
):
    outside = _outside(tmp_path)
    before = _snapshot(outside)
    root = config.storage.archive_dir
    root.mkdir()
    link = root / name
    link.symlink_to(outside / "precious")

    run_pass(config, clock)
    run_pass(config, clock, jobs=("audit",))

    assert _snapshot(outside) == before
    assert link.is_symlink()
    complaints = [e for e in log_lines() if e["event"] in ("item.failed", "storage.sums_failed")]
    assert complaints
    assert all(str(link) in e["error"] and "symbolic link" in e["error"] for e in complaints)
    if name == "SHA256SUMS":  # every archive waits for it: none is abandoned
        assert not [r for r in sandbox.flexperto.records() if r["status"] == "ABANDONED"]


def test_an_archive_folder_that_is_itself_a_link_is_configuration(sandbox, tmp_path, config, clock):
    real = tmp_path / "real-archives"
    real.mkdir()
    config.storage.archive_dir.symlink_to(real)

    assert run_pass(config, clock).exit_code == 0
    claimed = [r for r in sandbox.flexperto.records() if r["status"] == "ABANDONED"]
    assert claimed
    assert len(list(real.glob("*/*.zip"))) == len(claimed)


@pytest.mark.parametrize("name", [".owner", ".owner.lock"])
def test_a_linked_owner_file_stops_the_job_before_any_download(
    sandbox, tmp_path, config, clock, log_lines, name
):
    outside = _outside(tmp_path)
    before = _snapshot(outside)
    root = config.storage.archive_dir
    root.mkdir()
    link = root / name
    link.symlink_to(outside / "precious")

    assert run_pass(config, clock).exit_code == 1

    stopped = [e for e in log_lines() if e["event"] == "storage.unavailable"]
    assert len(stopped) == 1
    assert str(link) in stopped[0]["error"] and "symbolic link" in stopped[0]["error"]
    assert not sandbox.s3.requests
    assert _snapshot(outside) == before


def test_the_audit_does_not_read_an_archive_through_a_planted_folder_link(
    sandbox, tmp_path, config, clock, log_lines
):
    # The folder moved outside and linked back: it still hashes right, but the copy is no
    # longer where the worker keeps it. The audit says so instead of reporting it sound.
    assert run_pass(config, clock).exit_code == 0
    folder = next(p for p in config.storage.archive_dir.iterdir() if not p.name.startswith("."))
    moved = tmp_path / "moved"
    folder.rename(moved)
    folder.symlink_to(moved)

    run_pass(config, clock, jobs=("audit",), audit_plan=AuditPlan(everything=True))

    events = log_lines()
    complaints = [e for e in events if e["event"] == "audit.failed"]
    assert complaints
    assert all(str(folder) in e["error"] and "symbolic link" in e["error"] for e in complaints)
    ok = [e["location"] for e in events if e["event"] == "audit.ok"]
    assert not [location for location in ok if location.startswith(str(folder))]


@pytest.mark.parametrize("data", [b"small archive " * 1000, bytes(range(256)) * (80 * 1024)])
def test_a_spool_file_changed_after_its_verification_never_counts_as_uploaded(
    s3_server, tmp_path, data
):
    # Another process writes into the verified spool file before it is uploaded (the same
    # size, one byte changed): the bucket must not be taken to hold the verified archive.
    bucket = SandboxBucket(s3_server)  # removed with the server, if it outlives the tests
    verified = hashlib.sha256(data).hexdigest()
    changed = bytearray(data)
    changed[len(data) // 2] ^= 1
    spooled = tmp_path / "a1.zip"
    spooled.write_bytes(bytes(changed))
    uploader = Uploader(bucket.client(), bucket.name, concurrency=2)
    with pytest.raises(VerificationError, match="changed after it was verified"):
        uploader.upload(spooled, "archives/c1/a1.zip", verified, len(data))
    assert bucket.incomplete_uploads() == []
