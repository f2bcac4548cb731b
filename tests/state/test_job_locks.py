"""Job locks of a state in PostgreSQL: one holder per job across workers, freed as soon as
the holder's connection ends, and per database."""

from __future__ import annotations

import pytest

from sync_worker.core.locks import LockHeld
from sync_worker.state.job_locks import job_locks, lock_key
from sync_worker.state.postgres import connect

pytestmark = pytest.mark.fast


@pytest.fixture
def dsn(postgres_cluster):
    return postgres_cluster.new_database()


def test_a_job_has_one_holder_at_a_time(dsn):
    held = pytest.raises(LockHeld, match="another worker holds the claim-archives job's lock")
    with job_locks(dsn, ["claim-archives"], 5.0):
        with held, job_locks(dsn, ["push-insights", "claim-archives"], 5.0):
            pass
        with job_locks(dsn, ["push-insights"], 5.0):  # another job is free
            pass
    with job_locks(dsn, ["claim-archives"], 5.0):  # free again once the holder is done
        pass


def test_the_refusal_says_where_the_holder_connects_from(dsn):
    held = pytest.raises(LockHeld, match="a local socket")
    with job_locks(dsn, ["audit"], 5.0), held, job_locks(dsn, ["audit"], 5.0):
        pass


def test_locks_taken_before_a_refusal_are_released(dsn):
    with job_locks(dsn, ["b"], 5.0):
        with pytest.raises(LockHeld), job_locks(dsn, ["a", "b"], 5.0):
            pass
        with job_locks(dsn, ["a"], 5.0):
            pass


def test_two_state_databases_on_one_server_do_not_exclude_each_other(postgres_cluster):
    first, second = postgres_cluster.new_database(), postgres_cluster.new_database()
    with job_locks(first, ["claim-archives"], 5.0), job_locks(second, ["claim-archives"], 5.0):
        pass


def test_keys_are_stable_signed_64_bit_numbers():
    assert lock_key("claim-archives") == lock_key("claim-archives")
    assert lock_key("claim-archives") != lock_key("push-insights")
    keys = [lock_key(f"job-{n}") for n in range(200)]
    assert all(-(2**63) <= key < 2**63 for key in keys) and min(keys) < 0 < max(keys)


def test_a_released_job_lock_is_free_at_once(dsn):
    """Freed before job_locks returns, not only once the server has ended the session: a
    pass that starts right after another ends finds the job free."""
    other = connect(dsn, 5.0)
    key = lock_key("archives")
    refused = 0
    for _ in range(100):
        with job_locks(dsn, ["archives"], 5.0):
            pass
        if other.execute("select pg_try_advisory_lock(?)", [key]).fetchone()[0]:
            other.execute("select pg_advisory_unlock(?)", [key])
        else:
            refused += 1
    other.close()
    assert refused == 0
