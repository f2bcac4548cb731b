"""Abandon works per conference: a conference is abandoned only once every archive
Flexperto shows for it is stored, or in a state an abandon cannot harm. A sibling the
record gate rejects, or one still being packed, holds its conference back, and is shown to
the operator; nothing is dropped in silence."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync_worker.app.runner import run_pass
from sync_worker.config import load_config
from sync_worker.ops.status import render_table
from sync_worker.sandbox import Fault
from sync_worker.state import archives
from sync_worker.state.abandon_rule import HARMLESS_STATUSES, Sibling, blockers
from sync_worker.state.db import open_database
from sync_worker.state.lifecycles import ARCHIVE_SAFE, ArchiveState
from tests.conftest import write_config

GOOD = {"account_id": "p", "email": "lena.lang@example.org", "name": "Lena"}


def abandons(sandbox, conference_id: str) -> int:
    return sum(
        1
        for r in sandbox.flexperto.requests
        if r.method == "POST" and r.path.endswith(f"/{conference_id}/archive/abandon")
    )


def poison_checksum(sandbox, archive_id: str) -> None:
    record = sandbox.flexperto.record(archive_id)
    sandbox.flexperto.set_checksum(archive_id, "sha256:" + record["sha256CheckSum"])


def listing_shows(sandbox, monkeypatch, status: str) -> None:
    """The listing shows records in ``status`` whatever its filter asks for (a service that
    lists more than the documents say; the sandbox, in either dialect, would not)."""
    flexperto = sandbox.flexperto
    lists = flexperto._lists
    monkeypatch.setattr(flexperto, "_lists", lambda s, wanted: s == status or lists(s, wanted))


def poison_status(sandbox, archive_id: str) -> None:
    with sandbox.flexperto.lock:  # a status in another spelling
        sandbox.flexperto._records[archive_id]["status"] = "Available"


POISONS = {"checksum": poison_checksum, "status": poison_status}


@pytest.mark.both_stores
@pytest.mark.parametrize("poison", sorted(POISONS))
def test_a_rejected_sibling_holds_its_conference_back_until_it_can_be_stored(
    sandbox, config, run, poison, monkeypatch
):
    listing_shows(sandbox, monkeypatch, "Available")
    good = sandbox.flexperto.add_archive(conference_id="c-1", participants=[GOOD])
    bad = sandbox.flexperto.add_archive(conference_id="c-1", participants=[GOOD])
    checksum = bad["sha256CheckSum"]
    POISONS[poison](sandbox, bad["id"])

    run()
    assert abandons(sandbox, "c-1") == 0
    assert sandbox.flexperto.record(bad["id"])["status"] != "ABANDONED"
    db = open_database(config.state.database)
    assert archives.get(db, good["id"]).state == ArchiveState.STORED
    assert "held back" in render_table(db).lower() and bad["id"] in render_table(db)
    db.close()

    sandbox.flexperto.set_checksum(bad["id"], checksum)  # Flexperto mends the record
    sandbox.flexperto.set_status(bad["id"], "AVAILABLE")
    run()
    assert abandons(sandbox, "c-1") == 1
    db = open_database(config.state.database)
    assert {archives.get(db, a["id"]).state for a in (good, bad)} == {ArchiveState.CLAIMED}
    assert bad["id"] not in render_table(db)
    db.close()


def test_a_sibling_with_an_unsafe_id_holds_its_conference_back(sandbox, config, run):
    sandbox.flexperto.add_archive(conference_id="c-2", participants=[GOOD])
    sandbox.flexperto.add_archive(conference_id="c-2", archive_id="a+b", participants=[GOOD])
    run()
    run()
    assert abandons(sandbox, "c-2") == 0
    assert sandbox.flexperto.record("a+b")["status"] == "AVAILABLE"
    db = open_database(config.state.database)
    assert "a+b" in render_table(db)
    db.close()


def test_a_record_without_a_conference_holds_back_every_conference(sandbox, config, run):
    sandbox.flexperto.add_archive(conference_id="c-3", participants=[GOOD])
    sandbox.flexperto.add_raw_record({"id": "orphan", "status": "AVAILABLE"})
    run()
    assert abandons(sandbox, "c-3") == 0
    db = open_database(config.state.database)
    assert "orphan" in render_table(db)
    db.close()


def test_a_sibling_still_packing_holds_its_conference_back(sandbox, config, run, monkeypatch):
    listing_shows(sandbox, monkeypatch, "PACKING")
    sandbox.flexperto.add_archive(conference_id="c-4", participants=[GOOD])
    packing = sandbox.flexperto.add_archive(
        conference_id="c-4", status="PACKING", participants=[GOOD]
    )
    run()
    assert abandons(sandbox, "c-4") == 0
    sandbox.flexperto.set_status(packing["id"], "AVAILABLE")
    run()
    assert abandons(sandbox, "c-4") == 1
    assert sandbox.flexperto.record(packing["id"])["status"] == "ABANDONED"
    db = open_database(config.state.database)
    assert archives.get(db, packing["id"]).state == ArchiveState.CLAIMED
    db.close()


def test_a_failed_sibling_does_not_hold_its_conference_back(sandbox, config, run):
    sandbox.flexperto.add_archive(conference_id="c-5", participants=[GOOD])
    sandbox.flexperto.add_archive(conference_id="c-5", status="FAILED", error="packing failed")
    run()
    assert abandons(sandbox, "c-5") == 1


# --- the rule itself, over generated conferences -------------------------------------------

OUR_STATES = (None, *tuple(ArchiveState))
STATUSES = (
    "AVAILABLE",
    "ABANDONED",
    "PROCESSING",
    "ARTIFACT_GATHERING_COMPLETE",
    "PACKING",
    "FAILED",
    "EXPIRED",
    "Available",
    None,
)
siblings = st.lists(
    st.builds(
        Sibling,
        key=st.text(min_size=1, max_size=4),
        state=st.sampled_from(OUR_STATES),
        remote_status=st.sampled_from(STATUSES),
        held=st.sampled_from((None, "rejected: unknown status", "in progress: PACKING")),
    ),
    max_size=8,
)


def lost_by_abandon(conference: list[Sibling]) -> list[Sibling]:
    """What an abandon now would lose: any archive that has or may come to have a file at
    Flexperto and is not stored here (an abandon schedules every one of them for deletion,
    packing ones included, for all we know)."""
    return [
        s
        for s in conference
        if s.state not in ARCHIVE_SAFE
        and (s.held is not None or s.remote_status not in HARMLESS_STATUSES)
    ]


@given(siblings)
def test_the_rule_never_allows_an_abandon_that_loses_an_archive(conference):
    if not blockers(conference):
        assert lost_by_abandon(conference) == []


@given(siblings)
def test_the_rule_allows_the_abandon_once_nothing_can_be_lost(conference):
    if lost_by_abandon(conference) == []:
        assert blockers(conference) == []


@given(siblings)
def test_every_blocker_is_named(conference):
    assert set(blockers(conference)) == {s.key for s in lost_by_abandon(conference)}


# --- a stalled download holds nobody else back -----------------------------------------------


def test_a_stored_archive_is_abandoned_while_another_download_hangs(sandbox, run):
    """The storage host holds one download until the other archive is abandoned: a worker
    that abandons only after every download would wait for ever (here: 3 s, below the
    read timeout, after which the download goes on and the test fails)."""
    quick = sandbox.flexperto.add_archive(conference_id="c-quick", participants=[GOOD])
    slow = sandbox.flexperto.add_archive(conference_id="c-slow", participants=[GOOD])
    seen_while_hanging: list[float | None] = []

    def hang_until_quick_is_abandoned(_service) -> None:
        deadline = time.monotonic() + 3
        while sandbox.flexperto.abandoned_at(quick["id"]) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        seen_while_hanging.append(sandbox.flexperto.abandoned_at(quick["id"]))

    sandbox.add_fault(
        "s3",
        Fault(path=f"/{slow['id']}.zip$", action="call", callback=hang_until_quick_is_abandoned),
    )
    run()
    assert seen_while_hanging and seen_while_hanging[0] is not None
    assert sandbox.flexperto.record(slow["id"])["status"] == "ABANDONED"  # then stored too


@pytest.mark.lenient_only  # the strict listing has no pages to cut short
def test_a_listing_cut_short_releases_no_held_record(sandbox, tmp_path, config, run, clock):
    good = sandbox.flexperto.add_archive(conference_id="c-6", participants=[GOOD])
    bad = sandbox.flexperto.add_archive(conference_id="c-6", participants=[GOOD])
    poison_checksum(sandbox, bad["id"])
    run()
    # Later passes see one page only (the ceiling), which does not reach the held record.
    path = write_config(tmp_path, sandbox)
    text = path.read_text().replace("page_size = 100\n", "page_size = 1\nmax_list_pages = 1\n")
    path.write_text(text)
    run_pass(load_config(path, env={}), clock)
    assert abandons(sandbox, "c-6") == 0
    db = open_database(config.state.database)
    assert archives.get(db, good["id"]).state == ArchiveState.STORED
    assert bad["id"] in render_table(db)
    db.close()


@pytest.mark.lenient_only  # the strict listing has no pages to cut short
def test_a_sibling_past_the_listings_ceiling_holds_its_conference_back(
    sandbox, tmp_path, config, clock
):
    """The first page shows one archive of a conference; its sibling is on a page the
    ceiling never reaches, so neither the ledger nor a held record knows of it: a listing
    not read to its end abandons nothing."""
    early = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # listed first, before the seeded ones
    seen = sandbox.flexperto.add_archive(conference_id="c-7", participants=[GOOD], start=early)
    unseen = sandbox.flexperto.add_archive(conference_id="c-7", participants=[GOOD])
    path = write_config(tmp_path, sandbox)
    text = path.read_text().replace("page_size = 100\n", "page_size = 1\nmax_list_pages = 1\n")
    path.write_text(text)
    capped = load_config(path, env={})
    for _ in range(3):
        run_pass(capped, clock)
    assert abandons(sandbox, "c-7") == 0
    assert sandbox.flexperto.record(unseen["id"])["status"] == "AVAILABLE"
    run_pass(config, clock)  # read whole: both stored, then the conference abandoned once
    assert abandons(sandbox, "c-7") == 1
    assert {sandbox.flexperto.record(a["id"])["status"] for a in (seen, unseen)} == {"ABANDONED"}
