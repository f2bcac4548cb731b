import pytest

from sync_worker.state import insight_blocks
from sync_worker.state.insight_blocks import CREDENTIALS, INSIGHT_TYPE, TOKEN_BUDGET, Block
from tests.state_rows import count_of

pytestmark = pytest.mark.fast


def test_nothing_blocks_insights_until_a_block_is_noted(open_state):
    db = open_state()
    assert insight_blocks.current(db) is None
    noted = insight_blocks.note(db, TOKEN_BUDGET, "budget spent", now=1.0)
    assert insight_blocks.current(db) == noted == Block(TOKEN_BUDGET, "budget spent", 1.0)


def test_a_block_keeps_its_start_while_its_reason_changes(open_state):
    db = open_state()
    insight_blocks.note(db, TOKEN_BUDGET, "budget spent", now=1.0)
    noted = insight_blocks.note(db, INSIGHT_TYPE, 'insight type "x" not found', now=5.0)
    assert noted == Block(INSIGHT_TYPE, 'insight type "x" not found', 1.0)
    assert insight_blocks.current(db) == noted
    assert count_of(db, "insight_blocks") == 1


def test_a_credentials_block_names_the_credentials_and_when_to_try_again(open_state):
    db = open_state()
    client = insight_blocks.client_fingerprint("https://te", "id", "secret")
    insight_blocks.note(db, CREDENTIALS, "HTTP 401", now=1.0, retry_at=61.0, client=client)
    assert insight_blocks.current(db) == Block(CREDENTIALS, "HTTP 401", 1.0, 61.0, client)
    assert client != insight_blocks.client_fingerprint("https://te", "id", "corrected")
    insight_blocks.note(db, TOKEN_BUDGET, "budget spent", now=2.0)
    assert insight_blocks.current(db) == Block(TOKEN_BUDGET, "budget spent", 1.0)


def test_clearing_forgets_the_block_and_says_which_it_was(open_state):
    db = open_state()
    insight_blocks.note(db, TOKEN_BUDGET, "budget spent", now=1.0)
    assert insight_blocks.clear(db) == Block(TOKEN_BUDGET, "budget spent", 1.0)
    assert (insight_blocks.current(db), insight_blocks.clear(db)) == (None, None)


def test_a_block_noted_after_a_clear_starts_anew(open_state):
    db = open_state()
    insight_blocks.note(db, TOKEN_BUDGET, "budget spent", now=1.0)
    insight_blocks.clear(db)
    assert insight_blocks.note(db, TOKEN_BUDGET, "budget spent", now=9.0).since == 9.0
