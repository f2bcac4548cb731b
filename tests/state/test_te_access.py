import pytest

from sync_worker.config import TotalExpertConfig
from sync_worker.core import logs
from sync_worker.state import te_access
from sync_worker.state.db import open_database
from sync_worker.state.te_access import SharedAccess
from tests.state_rows import count_of, rows_of

pytestmark = pytest.mark.fast


def access(db, client_id="client", per_minute=2, tokens_per_hour=1):
    return SharedAccess(db, "https://te.example/v1", client_id, per_minute, tokens_per_hour)


@pytest.fixture
def te_config():
    def make(budget, requests_per_minute):
        return TotalExpertConfig(
            base_url="https://te.example/v1",
            client_id="client",
            client_secret="secret",
            requests_per_minute=requests_per_minute,
            shared_budget=budget or "",
        )

    return make


def test_request_slots_come_back_a_minute_and_a_second_later(open_state):
    shared = access(open_state())
    assert shared.spend_request(100.0) is None
    assert shared.spend_request(100.5) is None
    assert shared.spend_request(101.0) == 100.0 + te_access.REQUEST_WINDOW
    assert shared.spend_request(161.0) is None


def test_token_requests_have_their_own_hourly_budget(open_state):
    shared = access(open_state())
    assert shared.spend_token_request(0.0) is None
    assert shared.spend_token_request(10.0) == te_access.TOKEN_WINDOW
    assert shared.spend_request(10.0) is None  # the per-minute budget is apart


def test_a_kept_token_is_shared_used_until_shortly_before_expiry_and_masked(open_state):
    until = access(open_state()).keep_token("tok-abcdef", 4000.0, 400.0)
    assert until < 4000.0
    other_process = access(open_state())
    assert other_process.cached_token(500.0) == ("tok-abcdef", until)
    assert other_process.cached_token(until) is None
    assert logs.mask("Bearer tok-abcdef") == "Bearer [REDACTED]"


def test_tokens_are_kept_per_client(open_state):
    db = open_state()
    access(db, "one").keep_token("tok-one", 4000.0, 0.0)
    assert access(db, "two").cached_token(0.0) is None


def test_dropping_a_rejected_token_spares_a_newer_one(open_state):
    shared = access(open_state())
    shared.keep_token("tok-new", 4000.0, 0.0)
    shared.drop_token("tok-old")
    assert shared.cached_token(0.0)[0] == "tok-new"
    shared.drop_token("tok-new")
    assert shared.cached_token(0.0) is None


def test_buckets_follow_the_host_not_the_path_or_the_client(open_state):
    db = open_state()
    one = SharedAccess(db, "https://te.example/v1", "one", 1, 1)
    other_client = SharedAccess(db, "https://TE.example/v2", "two", 1, 1)
    other_host = SharedAccess(db, "https://te2.example/v1", "one", 1, 1)
    assert one.spend_request(0.0) is None
    assert other_client.spend_request(0.0) is not None  # same host: one budget
    assert other_host.spend_request(0.0) is None


def test_a_shared_budget_file_is_one_budget_for_every_state_file(tmp_path, te_config):
    te = te_config(tmp_path / "te-budget.db", requests_per_minute=2)
    workers = [
        SharedAccess.for_config(open_database(tmp_path / f"state-{n}.db"), te, 5.0)
        for n in range(3)
    ]
    assert workers[0].spend_request(0.0) is None
    assert workers[1].spend_request(0.0) is None
    assert workers[2].spend_request(0.0) is not None
    workers[0].keep_token("tok-shared", 4000.0, 0.0)
    assert workers[2].cached_token(1.0)[0] == "tok-shared"
    assert workers[2].requests_left(1.0) == 0
    for worker in workers:
        worker.close()
    assert not count_of(open_database(tmp_path / "state-0.db"), "rate_events")


def test_without_a_shared_budget_the_state_file_keeps_it(open_state, te_config):
    te = te_config(None, requests_per_minute=2)
    db = open_state()
    access = SharedAccess.for_config(db, te, 5.0)
    access.spend_request(0.0)
    access.close()  # leaves the state file, which it does not own, open
    assert count_of(db, "rate_events") == 1


def test_what_is_left_of_the_budgets_and_the_token(open_state):
    shared = access(open_state(), per_minute=3, tokens_per_hour=2)
    assert (shared.requests_left(0.0), shared.token_requests_left(0.0)) == (3, 2)
    shared.spend_request(0.0)
    shared.spend_token_request(0.0)
    assert (shared.requests_left(1.0), shared.token_requests_left(1.0)) == (2, 1)
    assert shared.requests_left(te_access.REQUEST_WINDOW + 1) == 3
    assert shared.token_expiry() is None
    shared.keep_token("tok-x", 3600.0, 0.0)
    assert shared.token_expiry() == 3600.0


def behind(db, egress, per_minute=1, tokens_per_hour=1):
    return SharedAccess(
        db, "https://te.example/v1", "client", per_minute, tokens_per_hour, egress=egress
    )


def test_workers_behind_other_egresses_spend_from_budgets_of_their_own(open_state):
    db = open_state()
    frankfurt, dublin = behind(db, "nat-frankfurt"), behind(open_state(), "nat-dublin")
    assert frankfurt.spend_request(0.0) is None
    assert frankfurt.spend_token_request(0.0) is None
    assert dublin.spend_request(0.0) is None
    assert dublin.spend_token_request(0.0) is None
    assert (frankfurt.requests_left(1.0), frankfurt.token_requests_left(1.0)) == (0, 0)
    assert behind(db, "").requests_left(1.0) == 1  # the state's one budget is apart too


def test_workers_behind_other_egresses_share_the_cached_token(open_state):
    until = behind(open_state(), "nat-frankfurt").keep_token("tok-egress", 4000.0, 0.0)
    assert behind(open_state(), "nat-dublin").cached_token(1.0) == ("tok-egress", until)
    assert behind(open_state(), "").cached_token(1.0) == ("tok-egress", until)


def test_workers_behind_one_egress_share_one_budget(open_state):
    first, second = behind(open_state(), "nat-frankfurt"), behind(open_state(), "nat-frankfurt")
    assert first.spend_request(0.0) is None
    assert second.spend_request(0.0) == te_access.REQUEST_WINDOW
    assert first.spend_token_request(0.0) is None
    assert second.spend_token_request(0.0) == te_access.TOKEN_WINDOW


def test_without_an_egress_the_buckets_keep_their_names(open_state):
    assert te_access.request_bucket("https://TE.example/v1") == "totalexpert:requests:te.example"
    assert te_access.token_bucket("https://TE.example/v1") == "totalexpert:tokens:te.example"
    assert te_access.request_bucket("https://te.example/v1", "") == (
        te_access.request_bucket("https://te.example/v1")
    )
    db = open_state()
    behind(db, "").spend_request(0.0)
    behind(db, "").spend_token_request(0.0)
    assert rows_of(db, "rate_events", "bucket") == [
        {"bucket": "totalexpert:requests:te.example", "at": 0.0},
        {"bucket": "totalexpert:tokens:te.example", "at": 0.0},
    ]


def test_an_egress_is_named_in_its_buckets(open_state):
    db = open_state()
    behind(db, "nat-frankfurt").spend_request(0.0)
    assert rows_of(db, "rate_events", "bucket")[0]["bucket"] == (
        "totalexpert:requests:te.example@nat-frankfurt"
    )


def test_the_configured_egress_picks_the_budget(open_state):
    db = open_state()
    te = TotalExpertConfig(
        client_id="client", client_secret="secret", requests_per_minute=1, egress="nat-dublin"
    )
    SharedAccess.for_config(db, te, 5.0).spend_request(0.0)
    assert rows_of(db, "rate_events", "bucket")[0]["bucket"].endswith("@nat-dublin")
