"""The command line, run as a real process where the process boundary matters."""

import csv
import io
import json
import re
import signal
import subprocess
import sys
import tomllib
from dataclasses import replace

import pytest
import requests

from sync_worker.app.cli import main
from sync_worker.config import load_config
from sync_worker.sandbox import STRICT, Sandbox, tenants_toml
from sync_worker.sandbox.bucket import SandboxBucket
from sync_worker.sandbox.seed import ANNA, LENA
from sync_worker.sandbox.worker_process import run_worker, start_worker
from sync_worker.state.configured import open_state
from sync_worker.state.reports import MANIFEST_FIELDS
from tests.conftest import write_config


def sync_worker(*args, env=None, timeout=60):
    return run_worker(*args, timeout=timeout, env=env)


def test_config_error_exits_2_naming_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[flexperto]\nbase_url = "https://x.example"\napi_key = "k"\nbogus = 1\n')
    result = sync_worker("--config", str(path), "run-once")
    assert result.returncode == 2
    assert "unknown config key flexperto.bogus" in result.stderr


def test_http_base_url_to_a_remote_host_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[flexperto]\nbase_url = "http://flexperto.example"\napi_key = "k"\n'
        '[totalexpert]\nclient_id = "i"\nclient_secret = "s"\n'
    )
    assert main(["--config", str(path), "status"]) == 2


def test_usage_error_exits_2():
    assert sync_worker("no-such-command").returncode == 2


@pytest.mark.both_states
def test_run_once_then_status_json(sandbox, tmp_path, config):
    config_file = str(tmp_path / "config.toml")
    result = sync_worker("--config", config_file, "run-once")
    assert result.returncode == 0, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert events[0]["event"] == "run.started" and events[-1]["event"] == "run.finished"
    status = sync_worker("--config", config_file, "status", "--json")
    report = json.loads(status.stdout)
    claimed = [a for a in report["archives"] if a["state"] == "claimed"]
    assert len(claimed) == 3
    for archive in claimed:
        assert {
            "archive_id",
            "conference_id",
            "state",
            "path",
            "sha256",
            "attempts",
            "last_error",
            "insights",
        } <= archive.keys()
    sent = [i for a in claimed for i in a["insights"] if i["state"] == "sent"]
    assert len(sent) == 3 and all(i["te_insight_id"] for i in sent)


@pytest.mark.both_states
def test_status_table_shows_failing_items(sandbox, tmp_path, config, capsys):
    bad = next(r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE")
    sandbox.flexperto.corrupt_blob(bad["id"])
    config_file = str(tmp_path / "config.toml")
    assert main(["--config", config_file, "run-once"]) == 1
    capsys.readouterr()
    assert main(["--config", config_file, "status"]) == 0
    table = capsys.readouterr().out
    assert "Archives: claimed 2, failed 1" in table
    assert bad["id"] in table and "sha256" in table


@pytest.mark.both_states
def test_retry_puts_a_parked_archive_back(sandbox, tmp_path, config, capsys):
    bad = next(r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE")
    sandbox.flexperto.corrupt_blob(bad["id"])
    path = tmp_path / "config.toml"
    path.write_text(path.read_text().replace("max_attempts = 5", "max_attempts = 1"))
    assert main(["--config", str(path), "run-once"]) == 1
    report_before = capsys.readouterr()
    assert "item.given_up" in report_before.err
    sandbox.flexperto.set_checksum(bad["id"], sandbox.flexperto.blob_sha256(bad["id"]))
    assert main(["--config", str(path), "run-once"]) == 0  # parked: not tried
    assert sandbox.flexperto.record(bad["id"])["status"] == "AVAILABLE"
    assert main(["--config", str(path), "retry", bad["id"]]) == 0
    assert main(["--config", str(path), "run-once"]) == 0
    assert sandbox.flexperto.record(bad["id"])["status"] == "ABANDONED"


@pytest.mark.both_states
def test_retry_of_an_unknown_archive_is_a_usage_error(sandbox, tmp_path, config):
    open_state(config.state).close()
    assert main(["--config", str(tmp_path / "config.toml"), "retry", "nope"]) == 2


def findings(out: str) -> dict[str, tuple[str, str]]:
    """The lines `check` printed (not the log events), by name: (status, detail); what is
    remembered by the name of the capability."""
    found = {}
    for line in out.splitlines():
        if line.startswith("{"):
            continue
        status, name, detail = line[:8].strip(), line[10:33].strip(), line[33:]
        if name == "remembered":
            name, _, detail = detail.partition(": ")
        found[name] = (status, detail)
    return found


@pytest.mark.both_states
@pytest.mark.both_stores
def test_check_reaches_both_services_and_caches_the_token(sandbox, tmp_path, config, capsys):
    open_state(config.state).close()  # as a first pass leaves it
    assert main(["--config", str(tmp_path / "config.toml"), "check", "--token"]) == 0
    found = findings(capsys.readouterr().out)
    routes = {"network flexperto", "network storage_host", "network totalexpert"}
    routes |= {"network s3"} if sandbox.bucket is not None else set()
    for name in routes:
        assert found.pop(name) == ("ok", "direct (no proxy); trusts the default CAs (certifi)")
    assert set(found) == {
        "state database",
        "archive store",
        "flexperto listing",
        "flexperto records",
        "totalexpert",
        "totalexpert token",
        "insight type",
        "contacts changed since",
        "insight search",
    }
    assert "new access token obtained" in found["totalexpert token"][1]
    if sandbox.bucket is not None:  # locked, but without a default retention: a warning
        assert found.pop("archive store")[0] == "warning"
    assert all(status in ("ok", "fallback") for status, _ in found.values())
    assert main(["--config", str(tmp_path / "config.toml"), "check"]) == 0
    assert "cached access token reused" in findings(capsys.readouterr().out)["totalexpert token"][1]
    assert sandbox.totalexpert.tokens_issued == 1
    assert {r.method for r in sandbox.flexperto.requests + sandbox.totalexpert.requests} <= {
        "GET",
        "POST",
    }
    assert [r.path for r in sandbox.totalexpert.requests if r.method == "POST"] == ["/v1/token"]
    assert all(r.method == "GET" for r in sandbox.flexperto.requests)


def test_check_names_the_fallbacks_in_use(tmp_path, clock, capsys):
    dialect = replace(STRICT, flexperto_record_people=False, te_insight_data_listed=False)
    with Sandbox(tmp_path / "sandbox", clock=clock, dialect=dialect) as strict:
        config_file = write_config(tmp_path, strict)
        for _ in range(2):  # insights to list; the second pass tries the TE filter
            strict.flexperto.add_archive(moderator=ANNA, participants=[ANNA, LENA])
            assert main(["--config", str(config_file), "run-once"]) == 0
        strict.flexperto.add_archive()  # a record to look at
        capsys.readouterr()
        assert main(["--config", str(config_file), "check"]) == 0
    found = findings(capsys.readouterr().out)
    fallbacks = {name: detail for name, (status, detail) in found.items() if status == "fallback"}
    assert set(fallbacks) == {
        "flexperto listing",
        "flexperto records",
        "contacts changed since",
        "insight search",
    }
    assert "no status filter" in fallbacks["flexperto listing"]
    assert "no paging" in fallbacks["flexperto listing"]
    assert "no 'size'" in fallbacks["flexperto records"]
    assert "participants" in fallbacks["flexperto records"]
    assert "rejected" in fallbacks["contacts changed since"]
    assert "parked as unverified" in fallbacks["insight search"]
    # what the passes before learnt, and use
    assert found["flexperto.listing_form"][1].startswith("prefix /api/v2, no status filter")
    assert found["te.updated_since_filter"][1].startswith("rejected")


def test_check_reports_a_wrong_api_key(sandbox, tmp_path, config, capsys):
    path = tmp_path / "config.toml"
    path.write_text(path.read_text().replace(sandbox.api_key, "wrong-key"))
    assert main(["--config", str(path), "check"]) == 1
    status, detail = findings(capsys.readouterr().out)["flexperto listing"]
    assert status == "FAIL" and "401" in detail


def test_init_config_writes_a_loadable_private_example(tmp_path):
    path = tmp_path / "etc" / "config.toml"
    assert main(["init-config", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    config = load_config(
        path,
        env={
            "FLEXPERTO_API_KEY": "k",
            "TOTALEXPERT_CLIENT_ID": "i",
            "TOTALEXPERT_CLIENT_SECRET": "s",
        },
    )
    assert config.schedule.interval_seconds == 300
    assert main(["init-config", str(path)]) == 2


@pytest.mark.parametrize("command", ["run-once", "status"])
def test_missing_config_file_is_a_clear_error(tmp_path, command, capsys):
    assert main(["--config", str(tmp_path / "missing.toml"), command]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_demo_runs_end_to_end_and_explains(tmp_path):
    result = sync_worker("demo", "--dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("; Flexperto now says ABANDONED") == 3
    assert "Insights in the sandbox Total Expert: 3" in result.stdout
    assert result.stdout.count(" verified") == 3
    assert re.search(
        r"Webhook: archive \S+ became available; .* stored and ABANDONED", result.stdout
    )


def printed_config(process) -> dict:
    """The config the sandbox command prints (its last line names the state file)."""
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.startswith("database"):
            break
    return tomllib.loads("".join(lines))


def test_sandbox_command_prints_a_working_config(tmp_path):

    process = start_worker(
        "sandbox", "--dir", str(tmp_path / "sb"), "--fault", "te:path=/heartbeat,status=503"
    )
    config = printed_config(process)
    assert config["flexperto"]["base_url"].startswith("http://127.0.0.1:")
    heartbeat = requests.get(config["totalexpert"]["base_url"] + "/heartbeat", timeout=5)
    assert heartbeat.status_code == 503  # the fault given on the command line
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_sandbox_command_with_s3_storage_serves_a_bucket(tmp_path):

    import boto3

    process = start_worker("sandbox", "--dir", str(tmp_path / "sb"), "--storage", "s3")
    try:
        storage = printed_config(process)["storage"]
        assert storage["backend"] == "s3"
        s3 = boto3.client(
            "s3",
            endpoint_url=storage["endpoint_url"],
            region_name=storage["region"],
            aws_access_key_id=storage["access_key_id"],
            aws_secret_access_key=storage["secret_access_key"],
        )
        lock = s3.get_object_lock_configuration(Bucket=storage["bucket"])
        assert lock["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_a_state_file_that_is_not_a_database_is_an_error_not_a_traceback(sandbox, tmp_path, config):
    config.state.database.write_bytes(b"this is not a SQLite database, " * 100)
    config_file = str(tmp_path / "config.toml")
    result = sync_worker("--config", config_file, "run-once")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    [failed] = [e for e in events if e["event"] == "run.failed"]
    assert failed["error_class"] == "DatabaseError" and failed["level"] == "error"
    assert events[-1]["event"] == "run.finished"
    assert sandbox.flexperto.requests == []  # nothing was done without a state file

    status = sync_worker("--config", config_file, "status")
    assert status.returncode == 1
    assert "Traceback" not in status.stdout + status.stderr
    assert status.stderr.strip().splitlines()[-1] == (
        f"sync-worker: cannot read the state file {config.state.database}: file is not a database"
    )


def test_check_reaches_te_even_when_the_state_file_is_broken(sandbox, tmp_path, config, capsys):
    config.state.database.write_bytes(b"not a database " * 100)
    assert main(["--config", str(tmp_path / "config.toml"), "check", "--token"]) == 1
    found = findings(capsys.readouterr().out)
    assert found["state database"] == (
        "FAIL",
        f"cannot read the state file {config.state.database}: file is not a database",
    )
    assert found["totalexpert"] == ("ok", "heartbeat answered")
    assert found["totalexpert token"][0] == "ok"


@pytest.mark.s3_only
def test_check_fails_a_bucket_without_object_lock(sandbox, tmp_path, config, capsys):
    plain = SandboxBucket(sandbox.bucket.server, locked=False).name
    path = tmp_path / "config.toml"
    path.write_text(path.read_text().replace(sandbox.bucket.name, plain))
    assert main(["--config", str(path), "check"]) == 1
    status, detail = findings(capsys.readouterr().out)["archive store"]
    assert status == "FAIL" and "no Object Lock" in detail


@pytest.mark.s3_only
def test_check_warns_of_a_locked_bucket_without_default_retention(
    sandbox, tmp_path, config, capsys
):
    config_file = str(tmp_path / "config.toml")
    assert main(["--config", config_file, "check"]) == 0  # a warning is no failure
    status, detail = findings(capsys.readouterr().out)["archive store"]
    assert status == "warning"
    assert detail.startswith(f"bucket {sandbox.bucket.name} reachable, Object Lock for 1 days")
    assert "no default retention" in detail and "Ceph RGW" in detail
    assert "CompleteMultipartUpload" in detail and "PutObjectRetention" in detail
    sandbox.bucket.client().put_object_lock_configuration(
        Bucket=sandbox.bucket.name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    assert main(["--config", config_file, "check"]) == 0
    status, detail = findings(capsys.readouterr().out)["archive store"]
    assert status == "ok" and "Object Lock for 1 days" in detail


def test_audit_reads_everything_and_fails_on_a_changed_archive(sandbox, tmp_path, config, capsys):
    config_file = str(tmp_path / "config.toml")
    assert main(["--config", config_file, "run-once"]) == 0
    assert main(["--config", config_file, "audit", "--all"]) == 0
    assert capsys.readouterr().err.count('"audit.ok"') == 3
    stored = next((config.storage.archive_dir).glob("*/*.zip"))
    stored.write_bytes(b"changed")
    assert main(["--config", config_file, "audit", "--sample", "3"]) == 1
    assert '"audit.mismatch"' in capsys.readouterr().err


def test_audit_options_are_checked(sandbox, tmp_path, config):
    config_file = str(tmp_path / "config.toml")
    assert sync_worker("--config", config_file, "audit", "--sample", "0").returncode == 2
    both = sync_worker("--config", config_file, "audit", "--all", "--sample", "2")
    assert both.returncode == 2


@pytest.mark.both_states
def test_export_writes_the_manifest_as_csv_or_json_lines(sandbox, tmp_path, config, capsys):
    config_file = str(tmp_path / "config.toml")
    assert main(["--config", config_file, "run-once"]) == 0
    capsys.readouterr()
    assert main(["--config", config_file, "export", "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3
    assert all(list(row) == list(MANIFEST_FIELDS) for row in rows)
    by_id = {row["archive_id"]: row for row in rows}
    posted = {i["data"]["flexperto_archive_id"] for i in sandbox.totalexpert.insights()}
    assert posted == set(by_id)
    assert all(row["te_insight_ids"] and row["participants"] >= 1 for row in rows)
    assert all(row["stored_at"].endswith("+00:00") and row["location"] for row in rows)
    assert main(["--config", config_file, "export"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["archive_id"] for r in table] == [r["archive_id"] for r in rows]
    assert all(r["last_audit_result"] == "" for r in table)
    assert [r["te_insight_ids"] for r in table] == [
        " ".join(map(str, r["te_insight_ids"])) for r in rows
    ]
    assert main(["--config", config_file, "export", "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out.splitlines() == [",".join(MANIFEST_FIELDS)]


def test_export_without_a_state_file_fails_and_makes_none(tmp_path, sandbox, config, capsys):
    assert main(["--config", str(tmp_path / "config.toml"), "export", "--format", "jsonl"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        err == f"sync-worker: no state file at {config.state.database}: no pass has run "
        "with this config, or state.database is mistyped\n"
    )
    assert not config.state.database.exists()


def test_commands_with_several_tenants(sandbox, tmp_path, capsys):
    other = Sandbox(tmp_path / "sandbox-b", seed=False).start()
    try:
        other.flexperto.add_archive(moderator=ANNA, participants=[LENA])
        path = tmp_path / "tenants.toml"
        path.write_text(tenants_toml(sandbox, {"a": sandbox, "b": other}))
        config = ["--config", str(path), "--log-format", "json"]
        assert main([*config, "--tenant", "b", "run-once"]) == 0
        assert not (tmp_path / "a" / "state.db").exists()  # only b ran
        capsys.readouterr()
        assert main([*config, "status"]) == 2
        assert "several tenants (a, b): name one with --tenant" in capsys.readouterr().err
        assert main([*config, "--tenant", "b", "status"]) == 0
        assert "claimed" in capsys.readouterr().out
        assert main([*config, "--tenant", "c", "status"]) == 2
        assert main([*config, "run-once"]) == 0  # both
        assert (tmp_path / "a" / "state.db").exists()
        assert main([*config, "check"]) == 0
        out = capsys.readouterr().out
        assert "tenant a" in out and "tenant b" in out
    finally:
        other.stop()


def test_only_demo_and_sandbox_load_the_sandbox():
    """A production start (run, run-once, check...) imports no sandbox server code."""
    probe = (
        "import sys; from sync_worker.app import cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('sync_worker.sandbox', "
        "'sync_worker.app.demo', 'moto'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def ledger_counts(table: str) -> list[str]:
    """The counts per state of ``status``'s table."""
    return [line for line in table.splitlines() if line.startswith(("Archives:", "Insights:"))]


@pytest.mark.s3_only
def test_migrate_state_moves_the_checkpoints_into_postgresql(
    sandbox, tmp_path, config, postgres_cluster, capsys
):
    config_file = str(tmp_path / "config.toml")
    for _ in range(2):  # the second stores the archive that was still packing
        assert main(["--config", config_file, "run-once"]) == 0
    assert main(["--config", config_file, "migrate-state"]) == 2  # the config's state: a file
    assert "set state.backend" in capsys.readouterr().err
    assert main(["--config", config_file, "status"]) == 0
    counts = ledger_counts(capsys.readouterr().out)
    assert counts == ["Archives: claimed 4", "Insights: no_match 1, sent 4"]
    downloads, posted = len(sandbox.s3.requests), len(sandbox.totalexpert.insights())
    assert downloads == 4 and posted == 4
    assert main(["--config", config_file, "export", "--format", "jsonl"]) == 0
    manifest = capsys.readouterr().out
    dsn = postgres_cluster.new_database()
    write_config(tmp_path, sandbox, state=f'backend = "postgresql"\ndsn = {json.dumps(dsn)}\n')

    assert main(["--config", config_file, "migrate-state"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "archives                 4 rows" in printed
    assert printed[-1].startswith(f"the state of {config.state.database} is now in the database")
    assert printed[-1].endswith("the file is left as it was")
    assert main(["--config", config_file, "export", "--format", "jsonl"]) == 0
    assert capsys.readouterr().out == manifest  # every archive as it was, read from the database
    assert main(["--config", config_file, "run-once"]) == 0
    assert len(sandbox.s3.requests) == downloads  # nothing downloaded again
    assert len(sandbox.totalexpert.insights()) == posted  # nothing posted again
    capsys.readouterr()
    assert main(["--config", config_file, "export", "--format", "jsonl"]) == 0
    assert capsys.readouterr().out == manifest
    assert main(["--config", config_file, "status"]) == 0
    assert ledger_counts(capsys.readouterr().out) == counts
    assert main(["--config", config_file, "history", "--json"]) == 0
    passes = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(passes) == 3  # the file's two, and the one on the database
    assert main(["--config", config_file, "migrate-state"]) == 1  # never into a filled one
    assert "holds a state already" in capsys.readouterr().err


def test_a_pass_on_a_state_file_loads_no_postgresql_driver(sandbox, tmp_path, config):
    """psycopg (and libpq) are loaded only for a state in PostgreSQL: a worker on the
    embedded defaults pays neither their start-up time nor their memory."""
    probe = (
        "import sys; from sync_worker.app import cli; "
        f"code = cli.main(['--config', {str(tmp_path / 'config.toml')!r}, 'run-once']); "
        "code = code or cli.main(['--config', "
        f"{str(tmp_path / 'config.toml')!r}, 'status']); "
        "print(code, sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'boto3')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip().splitlines()[-1] == "0 []"
