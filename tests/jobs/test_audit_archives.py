"""The audit job, against archives stored by a real pass in a folder or a bucket: what it
reads, what it finds, what it records."""

import subprocess
from pathlib import Path

import pytest
import structlog

from sync_worker.adapters.stores import SUMS_NAME
from sync_worker.app.runner import run_pass
from sync_worker.core.clock import FakeClock
from sync_worker.jobs.audit_archives import Throttle
from sync_worker.jobs.context import AuditPlan, Outcome
from sync_worker.state.configured import open_state
from tests.state_rows import rows_of
from tests.tcp_forwarder import behind_a_forwarder

pytestmark = [pytest.mark.both_stores, pytest.mark.both_states]
EVERYTHING = AuditPlan(everything=True)


def audit(run, plan=EVERYTHING):
    return run(jobs=["audit"], audit_plan=plan)


def ledger(config):
    db = open_state(config.state)
    try:
        return {
            row["archive_id"]: row
            for row in rows_of(db, "archives", "archive_id")
            if row["stored_at"] is not None
        }
    finally:
        db.close()


def audit_rows(config):
    db = open_state(config.state)
    try:
        return {row["archive_id"]: row for row in rows_of(db, "audits", "archive_id")}
    finally:
        db.close()


def replace_bytes(sandbox, location, data):
    """Change what the store holds at ``location`` (a new version, in a locked bucket)."""
    if sandbox.bucket is None:
        Path(location).write_bytes(data)
    else:
        sandbox.bucket.client().put_object(
            Bucket=sandbox.bucket.name, Key=_key(sandbox, location), Body=data
        )


def delete(sandbox, location):
    """Make ``location`` disappear (a delete marker, in a locked bucket)."""
    if sandbox.bucket is None:
        Path(location).unlink()
    else:
        sandbox.bucket.client().delete_object(
            Bucket=sandbox.bucket.name, Key=_key(sandbox, location)
        )


def _key(sandbox, location):
    return location.removeprefix(f"s3://{sandbox.bucket.name}/")


def test_every_stored_archive_reads_back_as_recorded(sandbox, config, run, log_lines):
    assert run().exit_code == 0
    stored = ledger(config)
    assert len(stored) == 3
    result = audit(run)
    assert result.exit_code == 0
    assert result.stats.counts[Outcome.AUDITED] == 3
    rows = audit_rows(config)
    assert {rows[a]["result"] for a in stored} == {"ok"}
    assert all(rows[a]["audited_at"] > 0 for a in stored)
    assert sorted(e["archive_id"] for e in log_lines() if e["event"] == "audit.ok") == sorted(
        stored
    )


def test_changed_bytes_are_a_mismatch_and_the_pass_fails(sandbox, config, run, log_lines):
    run()
    archive_id, row = next(iter(ledger(config).items()))
    replace_bytes(sandbox, row["path"], b"not the archive")
    result = audit(run)
    assert result.exit_code == 1
    assert result.stats.counts[Outcome.AUDIT_MISMATCH] == 1
    assert result.stats.counts[Outcome.AUDITED] == 2
    assert audit_rows(config)[archive_id]["result"] == "mismatch"
    (event,) = [e for e in log_lines() if e["event"] == "audit.mismatch"]
    assert event["archive_id"] == archive_id and event["expected"] == row["sha256"]
    assert event["level"] == "error"


def test_a_missing_archive_is_reported_and_recorded(sandbox, config, run, log_lines):
    run()
    archive_id, row = next(iter(ledger(config).items()))
    delete(sandbox, row["path"])
    result = audit(run)
    assert result.exit_code == 1
    assert result.stats.counts[Outcome.AUDIT_MISSING] == 1
    assert audit_rows(config)[archive_id]["result"] == "missing"
    assert [e["archive_id"] for e in log_lines() if e["event"] == "audit.missing"] == [archive_id]


def test_an_archive_the_ledger_does_not_know_is_reported_by_a_full_audit(
    sandbox, config, run, log_lines
):
    run()
    row = next(iter(ledger(config).values()))
    stranger = row["path"].replace(row["archive_id"], "a-stranger")
    replace_bytes(sandbox, stranger, b"who put this here")
    sample = audit(run, AuditPlan(sample=10))
    assert sample.exit_code == 0  # a sample reads the ledger's archives only
    result = audit(run)
    assert result.exit_code == 1
    assert result.stats.counts[Outcome.AUDIT_UNEXPECTED] == 1
    assert [e["location"] for e in log_lines() if e["event"] == "audit.unexpected"] == [stranger]


def test_each_run_reads_its_share_least_recently_audited_first(sandbox, config, run, clock):
    run()
    stored = set(ledger(config))
    seen = []
    for _ in range(3):  # 3 archives, 30 runs a period: one a run
        before = {a: r["audited_at"] for a, r in audit_rows(config).items()}
        result = audit(run, AuditPlan())
        assert result.stats.counts[Outcome.AUDITED] == 1
        after = audit_rows(config)
        (audited,) = [a for a in stored if after[a]["audited_at"] != before[a]]
        seen.append(audited)
        clock.advance(config.audit.interval_hours * 3600)
    assert sorted(seen) == sorted(stored)


def test_a_sample_reads_that_many(sandbox, run):
    run()
    assert audit(run, AuditPlan(sample=2)).stats.counts[Outcome.AUDITED] == 2


def test_sha256sums_is_rewritten_from_the_ledger(sandbox, config, run):
    run()
    if sandbox.bucket is None:
        sums = config.storage.archive_dir / SUMS_NAME
        sums.write_text("")
        audit(run)
        checked = subprocess.run(
            ["sha256sum", "-c", SUMS_NAME],
            cwd=config.storage.archive_dir,
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.count(": OK") == 3
    else:
        audit(run)
        key = config.storage.prefix + SUMS_NAME
        lines = sandbox.bucket.read(key).decode().splitlines()
        assert sorted(lines) == sorted(
            f"{r['sha256']}  {r['conference_id']}/{a}.zip" for a, r in ledger(config).items()
        )


def test_no_stored_archives_is_a_clean_audit(sandbox, run):
    result = audit(run)
    assert result.exit_code == 0 and result.stats.counts[Outcome.AUDITED] == 0


def test_the_throttle_keeps_reads_under_the_rate():
    clock = FakeClock()
    start = clock.now()
    throttle = Throttle(rate=1000, clock=clock)
    throttle.spent(500)
    throttle.spent(2000)
    assert clock.now() - start == pytest.approx(2.5)
    clock.advance(10)  # time spent elsewhere counts: no need to wait now
    throttle.spent(1000)
    assert clock.now() - start == pytest.approx(12.5)


def test_an_audit_reads_no_faster_than_asked(sandbox, config, run, clock):
    run()
    total = sum(r["size"] for r in ledger(config).values())
    start = clock.now()
    audit(run, AuditPlan(everything=True, max_bytes_per_second=total / 4))
    assert clock.now() - start == pytest.approx(4, abs=0.01)


@pytest.mark.s3_only
def test_a_store_lost_mid_audit_stops_it_at_once(sandbox, config, tmp_path, log_lines):
    forwarder, config = behind_a_forwarder(sandbox, tmp_path)  # config's file, its state
    try:
        assert run_pass(config, sandbox.clock).exit_code == 0  # three archives stored
        processors = structlog.get_config()["processors"]

        def lose_the_store(_logger, _method, event):  # after the first archive is read
            if event.get("event") == "audit.ok":
                forwarder.stop()
            return event

        structlog.configure(processors=[lose_the_store, *processors])
        result = run_pass(config, sandbox.clock, jobs=["audit"], audit_plan=EVERYTHING)
    finally:
        forwarder.stop()
    events = [e["event"] for e in log_lines() if e["event"].startswith(("audit.", "storage."))]
    assert result.exit_code == 1
    assert events.count("audit.ok") == 1
    assert "audit.failed" not in events  # not one failure per archive: one stop
    assert events.count("storage.unavailable") == 1
