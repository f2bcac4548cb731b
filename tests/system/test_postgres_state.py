"""Passes whose state is in PostgreSQL, shared as by workers on several hosts: a job another
worker holds is left to it, workers that start together do the work once, and a database
that is unreachable, or lost in the middle of a pass, stops the pass with nothing abandoned
that is not stored."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import psycopg
import pytest
import structlog

from sync_worker.app.runner import run_pass
from sync_worker.state.job_locks import job_locks
from tests.system.invariants import assert_claimed_once, assert_consistent

pytestmark = pytest.mark.postgresql_only


def available(sandbox) -> dict[str, dict]:
    return {r["id"]: r for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE"}


def test_a_job_another_worker_holds_is_left_to_it(sandbox, config, run):
    with job_locks(config.state.dsn, ["archives"], 5.0):
        result = run()
    assert result.locked_out and sandbox.flexperto.requests == []
    expected = available(sandbox)
    assert run().exit_code == 0
    assert_claimed_once(sandbox, config, expected)


def test_workers_that_start_together_do_the_work_once(sandbox, config, clock):
    expected = available(sandbox)
    gate = threading.Barrier(3)
    results = []

    def worker():
        gate.wait()
        results.append(run_pass(config, clock))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result.exit_code == 0 or result.locked_out for result in results), results
    assert run_pass(config, clock).exit_code == 0  # whatever a locked-out job left
    assert_claimed_once(sandbox, config, expected)


def test_an_unreachable_database_fails_the_pass_before_any_request(
    sandbox, config, run, tmp_path, log_lines
):
    gone = f"host={tmp_path / 'no-server'} dbname=sync user=sync password=hunter2"
    result = run_pass(replace(config, state=replace(config.state, dsn=gone)), sandbox.clock)
    assert result.exit_code == 1
    assert sandbox.flexperto.requests == [] and sandbox.totalexpert.requests == []
    [failed] = [e for e in log_lines() if e["event"] == "run.failed"]
    assert "no-server" in failed["error"] and "hunter2" not in json.dumps(log_lines())


def test_a_database_lost_in_the_middle_of_a_pass_abandons_nothing_unstored(
    sandbox, config, run, postgres_cluster, log_lines
):
    """The worker's sessions are ended by the server (as when it restarts or fails over)
    right after the first archive is verified: the pass stops, and the next completes."""
    expected = available(sandbox)
    cut = DatabaseCut(postgres_cluster.dsn(), "archive.verified")
    assert run().exit_code == 1
    assert cut.done
    assert_consistent(sandbox, config)
    assert not [e for e in log_lines() if "Traceback" in json.dumps(e)]
    assert run().exit_code == 0
    assert_claimed_once(sandbox, config, expected)


class DatabaseCut:
    """Ends every session of the worker at PostgreSQL when the worker first logs ``event``
    (from the admin database ``admin_dsn``)."""

    def __init__(self, admin_dsn: str, event: str) -> None:
        self._admin_dsn, self._event = admin_dsn, event
        self.done = False
        processors = structlog.get_config()["processors"]
        structlog.configure(processors=[self._processor, *processors])

    def _processor(self, _logger, _method, event_dict):
        if not self.done and event_dict.get("event") == self._event:
            self.done = True
            with psycopg.connect(self._admin_dsn, autocommit=True) as admin:
                admin.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity "
                    "where application_name = 'sync-worker'"
                )
        return event_dict
