from sync_worker import logs
from sync_worker.state import te_access
from sync_worker.state.db import open_database
from sync_worker.state.te_access import SharedAccess


def access(db, client_id="client", per_minute=2, tokens_per_hour=1):
    return SharedAccess(db, "https://te.example/v1", client_id, per_minute, tokens_per_hour)


def test_request_slots_come_back_a_minute_and_a_second_later(tmp_path):
    shared = access(open_database(tmp_path / "s.db"))
    assert shared.spend_request(100.0) is None
    assert shared.spend_request(100.5) is None
    assert shared.spend_request(101.0) == 100.0 + te_access.REQUEST_WINDOW
    assert shared.spend_request(161.0) is None


def test_token_requests_have_their_own_hourly_budget(tmp_path):
    shared = access(open_database(tmp_path / "s.db"))
    assert shared.spend_token_request(0.0) is None
    assert shared.spend_token_request(10.0) == te_access.TOKEN_WINDOW
    assert shared.spend_request(10.0) is None  # the per-minute budget is apart


def test_a_kept_token_is_shared_used_until_shortly_before_expiry_and_masked(tmp_path):
    until = access(open_database(tmp_path / "s.db")).keep_token("tok-abcdef", 4000.0, 400.0)
    assert until < 4000.0
    other_process = access(open_database(tmp_path / "s.db"))
    assert other_process.cached_token(500.0) == ("tok-abcdef", until)
    assert other_process.cached_token(until) is None
    assert logs.mask("Bearer tok-abcdef") == "Bearer [REDACTED]"


def test_tokens_are_kept_per_client(tmp_path):
    db = open_database(tmp_path / "s.db")
    access(db, "one").keep_token("tok-one", 4000.0, 0.0)
    assert access(db, "two").cached_token(0.0) is None


def test_dropping_a_rejected_token_spares_a_newer_one(tmp_path):
    shared = access(open_database(tmp_path / "s.db"))
    shared.keep_token("tok-new", 4000.0, 0.0)
    shared.drop_token("tok-old")
    assert shared.cached_token(0.0)[0] == "tok-new"
    shared.drop_token("tok-new")
    assert shared.cached_token(0.0) is None
