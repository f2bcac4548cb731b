import threading

import pytest

from sync_worker.state import rate_limit

pytestmark = pytest.mark.fast


def test_spends_up_to_the_limit_then_says_when_a_token_returns(open_state):
    db = open_state()
    for i in range(3):
        assert rate_limit.try_spend(db, "b", 3, 60.0, 100.0 + i) is None
    assert rate_limit.try_spend(db, "b", 3, 60.0, 130.0) == 160.0
    assert rate_limit.try_spend(db, "b", 3, 60.0, 160.0) is None  # first token came back
    assert rate_limit.used(db, "b", 60.0, 160.0) == 3


def test_never_more_than_limit_in_any_window(open_state):
    db = open_state()
    spent = []
    now = 0.0
    while now < 600:
        if rate_limit.try_spend(db, "b", 10, 60.0, now) is None:
            spent.append(now)
        now += 0.7
    for start in spent:
        assert sum(1 for t in spent if start <= t < start + 60.0) <= 10
    assert len(spent) >= 90


def test_buckets_are_independent(open_state):
    db = open_state()
    assert rate_limit.try_spend(db, "a", 1, 60.0, 0.0) is None
    assert rate_limit.try_spend(db, "b", 1, 60.0, 0.0) is None
    assert rate_limit.try_spend(db, "a", 1, 60.0, 1.0) == 60.0


def test_shared_between_connections_under_contention(open_state):
    open_state()
    granted = []
    lock = threading.Lock()

    def worker():
        db = open_state()
        for _ in range(20):
            if rate_limit.try_spend(db, "b", 25, 60.0, 1000.0) is None:
                with lock:
                    granted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 25
