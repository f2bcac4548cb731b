"""Hostile answers that once made the worker loop forever or stop a whole job on one bad
value (issue 17, findings 5 and 7): every listing and look-up is bounded in pages and ends
when a page brings no new id, and a poisoned value fails its item, never the page or job.

The hostile servers are the sandbox's, their ``handle`` wrapped to misbehave; each also
stops misbehaving after a while (``CAP``), so that a worker without the bounds still ends.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sync_worker.app.runner import run_pass
from sync_worker.config import Config, load_config
from sync_worker.jobs.claim_archives import LISTED_STATUSES
from sync_worker.sandbox import Fault, Sandbox
from sync_worker.sandbox.http import Incoming, Reply
from sync_worker.sandbox.seed import ANNA, MAX
from sync_worker.state.db import open_database, transaction
from tests.conftest import write_config

CAP = 200  # requests after which a hostile server gives in
LIST = "/communication/conferences/archives"


def configured(
    tmp_path: Path, sandbox: Sandbox, page_size: int = 100, flexperto: str = "", te: str = ""
) -> Config:
    """The sandbox's config with ``page_size`` and extra keys in [flexperto], [totalexpert]."""
    path = write_config(tmp_path, sandbox)
    text = path.read_text().replace("page_size = 100\n", f"page_size = {page_size}\n{flexperto}")
    path.write_text(text.replace("[totalexpert]\n", f"[totalexpert]\n{te}", 1))
    return load_config(path, env={})


def wrap(service, hostile: Callable[[Incoming, Callable[[Incoming], Reply]], Reply]) -> None:
    """Answer ``service``'s requests through ``hostile(request, normal_handle)``."""
    normal = service.handle
    service.handle = lambda request: hostile(request, normal)


def rewritten(reply: Reply, change: Callable[[dict], None]) -> Reply:
    body = json.loads(reply.body)
    change(body)
    return Reply.json(reply.status, body)


def stored(config: Config) -> set[str]:
    db = open_database(config.state.database)
    try:
        rows = db.query("select archive_id from archives where state in ('stored', 'claimed')")
        return {row["archive_id"] for row in rows}
    finally:
        db.close()


def available(sandbox: Sandbox) -> set[str]:
    return {r["id"] for r in sandbox.flexperto.records() if r["status"] == "AVAILABLE"}


def listings(sandbox: Sandbox) -> list:
    return [r for r in sandbox.flexperto.requests if r.path.endswith(LIST)]


def events_named(log_lines, name: str) -> list[dict]:
    return [e for e in log_lines() if e["event"] == name]


# --- finding 5: unbounded loops -------------------------------------------------------


@pytest.mark.lenient_only  # the strict dialect has no paging: one request is the listing
def test_a_listing_that_ignores_offset_and_stamps_each_answer_is_read_whole_once(
    tmp_path, sandbox, clock, log_lines
):
    config = configured(tmp_path, sandbox, page_size=2)
    expected = available(sandbox)  # three archives: the first page shows two of them
    answers = iter(range(10**6))

    def stamping(request: Incoming, normal) -> Reply:
        if not request.path.endswith(LIST) or len(listings(sandbox)) > CAP:
            return normal(request)
        stamp = next(answers)
        query = {key: value for key, value in request.query.items() if key != "offset"}

        def stamped(body: dict) -> None:
            body["generated"] = stamp
            for item in body["items"]:
                item["served"] = stamp

        return rewritten(normal(replace(request, query=query)), stamped)

    wrap(sandbox.flexperto, stamping)
    result = run_pass(config, clock)

    # each status's listing ended by its second page at most, then one unpaged request
    assert len(listings(sandbox)) <= 3 * len(LISTED_STATUSES)
    assert result.exit_code == 0
    assert events_named(log_lines, "flexperto.listing_repeated")
    assert expected <= stored(config)  # the third, never on a page, came with everything


@pytest.mark.lenient_only
def test_a_listing_with_fresh_records_on_every_page_ends_at_the_ceiling_and_stores_them(
    tmp_path, sandbox, clock, log_lines
):
    config = configured(tmp_path, sandbox, page_size=2, flexperto="max_list_pages = 5\n")
    added: list[str] = []

    def invent(service) -> None:
        if len(added) < 3 * CAP:
            added.extend(service.add_archive()["id"] for _ in range(3))

    sandbox.add_fault("flexperto", Fault(path=LIST, action="call", callback=invent, times=None))
    result = run_pass(config, clock)

    available_listings = [r for r in listings(sandbox) if r.query.get("status") == "AVAILABLE"]
    assert len(available_listings) == 5
    [truncated] = events_named(log_lines, "flexperto.listing_truncated")
    assert truncated["ceiling"] == 5 and truncated["key"] == "flexperto.max_list_pages"
    assert truncated["level"] == "warning"
    listed = {e["archive_id"] for e in events_named(log_lines, "archive.listed")}
    assert len(listed) == 10
    assert listed <= stored(config)  # what was listed is stored in this very pass
    assert result.exit_code == 0

    sandbox.flexperto.faults.clear()
    run_pass(config, clock)  # the next pass lists again, and further
    assert len(stored(config)) > len(listed)


def test_te_links_next_that_never_ends_is_bounded_per_look_up(tmp_path, sandbox, clock, log_lines):
    config = configured(tmp_path, sandbox, te="max_list_pages = 6\n")
    pages_served: list[int] = []

    def endless(request: Incoming, normal) -> Reply:
        if request.method != "GET" or len(pages_served) > 2 * CAP:
            return normal(request)
        number = int(request.query.get("page[number]", 1))
        reply = normal(replace(request, query={**request.query, "page[number]": "1"}))
        if b'"links"' not in reply.body:
            return reply
        pages_served.append(number)

        def fresh_forever(body: dict) -> None:
            body["links"]["next"] = number + 1
            for item in body["items"]:  # new ids on every page: no repetition to notice
                if number > 1 and isinstance(item.get("id"), int):
                    item["id"] += 100_000 * number
                    item.pop("type", None)  # not the insight type looked for

        return rewritten(reply, fresh_forever)

    wrap(sandbox.totalexpert, endless)
    result = run_pass(config, clock)

    assert pages_served and max(pages_served) <= 20
    assert len(pages_served) < 2 * CAP
    truncated = events_named(log_lines, "te.paging_truncated")
    assert truncated and all(e["level"] == "warning" for e in truncated)
    assert {e["ceiling"] for e in truncated} <= {6, 20}
    assert available(sandbox) == set()  # the archives are stored and claimed all the same
    assert result.exit_code == 1  # TE's look-ups failed: their insights wait


# --- finding 7: one poisoned value, one bad item ----------------------------------------


def poisoned_record(archive_id: str, conference_id: str = "c-poison", **fields) -> dict:
    return {
        "id": archive_id,
        "status": "AVAILABLE",
        "sha256CheckSum": "ab" * 32,
        "subject": {"conference_id": conference_id},
        **fields,
    }


def splice(sandbox: Sandbox, placeholder: str, text: str) -> None:
    """Replace the JSON string ``"placeholder"`` in Flexperto's answers by raw ``text``."""

    def splicing(request: Incoming, normal) -> Reply:
        reply = normal(request)
        quoted = json.dumps(placeholder).encode()
        return replace(reply, body=reply.body.replace(quoted, text.encode()))

    wrap(sandbox.flexperto, splicing)


def test_a_5000_digit_number_fails_only_its_record(tmp_path, sandbox, config, clock, log_lines):
    expected = available(sandbox)
    sandbox.flexperto.add_raw_record(poisoned_record("huge", size="HUGE"))
    splice(sandbox, "HUGE", "9" * 5000)
    result = run_pass(config, clock)

    assert not events_named(log_lines, "archive.list_failed")
    [rejected] = events_named(log_lines, "archive.rejected")
    assert "5000 digits" in rejected["reason"]
    assert stored(config) == expected
    assert result.exit_code == 0


@pytest.mark.lenient_only  # paged: the pages after the poisoned one are still read
def test_json_nested_deeper_than_the_reader_takes_fails_its_page_not_the_job(
    tmp_path, sandbox, clock, log_lines
):
    config = configured(tmp_path, sandbox, page_size=1)
    first, second, third = (r["id"] for r in sandbox.flexperto.records()[:3])
    sandbox.flexperto.add_raw_record(poisoned_record("deep", extra="DEEP"))
    splice(sandbox, "DEEP", "[" * 100_000 + "]" * 100_000)
    sandbox.flexperto.add_archive(archive_id="after-the-deep-one")
    result = run_pass(config, clock)

    assert not events_named(log_lines, "job.failed")
    [unreadable] = events_named(log_lines, "flexperto.page_unreadable")
    assert "nested too deeply" in unreadable["error"]
    assert {first, second, third, "after-the-deep-one"} <= stored(config)
    assert result.exit_code == 1  # a page was lost this pass: not a clean one


def test_a_value_nested_deep_inside_a_record_fails_only_that_record(
    tmp_path, sandbox, config, clock, log_lines
):
    expected = available(sandbox)
    sandbox.flexperto.add_raw_record(poisoned_record("deepish", extra="DEEP"))
    splice(sandbox, "DEEP", "[" * 200 + "]" * 200)
    result = run_pass(config, clock)

    [rejected] = events_named(log_lines, "archive.rejected")
    assert "nested" in rejected["reason"]
    assert stored(config) == expected
    assert result.exit_code == 0


@pytest.mark.parametrize("reserved", ["SHA256SUMS", "sha256sums", "Sha256Sums"])
def test_an_id_that_names_a_file_of_the_worker_is_refused(
    tmp_path, sandbox, config, clock, log_lines, reserved
):
    expected = available(sandbox)
    sandbox.flexperto.add_archive(conference_id=reserved, archive_id="in-reserved-conference")
    sandbox.flexperto.add_archive(conference_id="c-fine", archive_id=reserved)
    result = run_pass(config, clock)

    rejected = events_named(log_lines, "archive.rejected")
    assert len(rejected) == 2 and all("reserved" in e["reason"] for e in rejected)
    assert stored(config) == expected
    sums = (config.storage.archive_dir / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == len(expected)
    assert sandbox.flexperto.record("in-reserved-conference")["status"] == "AVAILABLE"
    assert result.exit_code == 0
    assert run_pass(config, clock).exit_code == 0  # and the next pass is as clean


@pytest.mark.parametrize("digits", ["²", "٣", "4²"])
def test_a_te_id_of_unicode_digits_fails_only_its_contact(
    tmp_path, sandbox, config, clock, log_lines, digits
):
    erika = next(c for c in sandbox.totalexpert.contacts() if c["email"].startswith("erika"))

    def unicode_id(request: Incoming, normal) -> Reply:
        reply = normal(request)
        if request.method != "GET" or b'"items"' not in reply.body:
            return reply

        def poison(body: dict) -> None:
            for item in body["items"]:
                if item.get("id") == erika["id"]:
                    item["id"] = digits

        return rewritten(reply, poison)

    wrap(sandbox.totalexpert, unicode_id)
    result = run_pass(config, clock)

    assert not events_named(log_lines, "job.failed")
    assert not events_named(log_lines, "item.failed")
    posted_to = {insight["contact_id"] for insight in sandbox.totalexpert.insights()}
    assert posted_to and erika["id"] not in posted_to
    assert available(sandbox) == set()
    assert result.exit_code == 0


def test_an_error_answer_nested_deeper_than_the_reader_takes_is_a_clear_error(
    sandbox, config, clock, log_lines
):
    deep = "[" * 60_000  # an error's text is read up to 64 KiB
    sandbox.add_fault("te", Fault(path="/contacts$", status=400, body=deep, times=None))
    run_pass(config, clock)

    assert not events_named(log_lines, "job.failed")
    assert available(sandbox) == set()
    [unavailable] = events_named(log_lines, "te.directory_unavailable")
    assert "HTTP 400: [[[" in unavailable["error"]


class RawServer(socketserver.ThreadingTCPServer):
    """A loopback server answering every request with the same raw bytes, then closing."""

    daemon_threads = True

    def __init__(self, answer: bytes) -> None:
        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                self.wfile.write(answer)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.mark.lenient_only
def test_a_content_length_of_unicode_digits_is_no_crash(tmp_path, sandbox, clock, log_lines):
    body = b'{"items": []}'
    server = RawServer(b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n" + body)
    try:
        path = write_config(tmp_path, sandbox)
        path.write_text(path.read_text().replace(sandbox.flexperto_url, server.url))
        run_pass(load_config(path, env={}), clock)
    finally:
        server.shutdown()
        server.server_close()

    assert not events_named(log_lines, "job.failed")


@pytest.mark.both_stores
def test_a_ledger_row_that_the_gate_now_refuses_stops_no_job(sandbox, config, clock, log_lines):
    """An older version let a conference id such as SHA256SUMS in (harmless in a bucket):
    its row in the ledger is still read, and its insights still go out."""
    sandbox.add_fault("te", Fault(method="POST", path="/insights$", status=503, times=None))
    run_pass(config, clock)  # archives stored and claimed; their insights wait
    sandbox.totalexpert.faults.clear()
    first = sandbox.flexperto.records()[0]["id"]
    db = open_database(config.state.database)
    try:
        record = json.loads(db["archives"].get(first)["record"])
        record["subject"]["conference_id"] = "SHA256SUMS"
        with transaction(db):
            db["archives"].update(first, {"record": json.dumps(record)})
    finally:
        db.close()
    clock.advance(config.retry.max_backoff_seconds)
    result = run_pass(config, clock)

    assert not events_named(log_lines, "job.failed")
    posted = [
        (insight["data"]["flexperto_archive_id"], insight["contact_id"])
        for insight in sandbox.totalexpert.insights()
    ]
    assert first in {archive_id for archive_id, _ in posted}
    assert len(posted) == len(set(posted))
    assert result.exit_code == 0


@pytest.mark.lenient_only
def test_unreadable_pages_that_never_end_are_not_paged_through(tmp_path, sandbox, clock, log_lines):
    config = configured(tmp_path, sandbox, page_size=1)
    deep = "[" * 100_000 + "]" * 100_000
    sandbox.add_fault("flexperto", Fault(path=LIST, status=200, body=deep, times=CAP))
    result = run_pass(config, clock)

    # each status's listing ended by its second such page
    assert len(listings(sandbox)) == 2 * len(LISTED_STATUSES)
    assert len(events_named(log_lines, "flexperto.page_unreadable")) == 2 * len(LISTED_STATUSES)
    assert not events_named(log_lines, "job.failed")
    assert result.exit_code == 1


@pytest.mark.lenient_only  # the strict dialect has no updated-since filter to refresh by
def test_te_links_next_that_never_ends_bounds_the_refresh_of_the_contact_copy(
    tmp_path, sandbox, clock, log_lines
):
    config = configured(tmp_path, sandbox, te="max_list_pages = 6\n")
    run_pass(config, clock)  # the copy of TE's contacts is made, its insights are sent
    assert events_named(log_lines, "te.directory_filled")
    pages_served: list[int] = []

    def endless(request: Incoming, normal) -> Reply:
        since = request.query.get("filter", "").partition("internal_updated_at_start=")[2]
        now = datetime.fromtimestamp(clock.now(), UTC).strftime("%Y-%m-%d %H:%M:%S")
        if not since or since > now or len(pages_served) > CAP:  # the probe asks for tomorrow
            return normal(request)
        number = int(request.query.get("page[number]", 1))
        pages_served.append(number)

        def forever(body: dict) -> None:
            body["links"]["next"] = number + 1
            body["items"] = [{"id": 10**6 * number + n, "email": f"{n}@x.example"} for n in (1, 2)]

        return rewritten(normal(request), forever)

    wrap(sandbox.totalexpert, endless)
    sandbox.flexperto.add_archive(moderator=ANNA, participants=[ANNA, MAX])
    clock.advance(3600)
    result = run_pass(config, clock)

    assert 0 < len(pages_served) <= 6
    [truncated] = events_named(log_lines, "te.paging_truncated")
    assert truncated["ceiling"] == 6 and truncated["key"] == "totalexpert.max_list_pages"
    assert events_named(log_lines, "te.directory_unavailable")  # so: looked up one by one
    assert available(sandbox) == set()
    assert result.exit_code == 0
