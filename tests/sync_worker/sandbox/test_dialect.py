"""The sandbox dialects over real HTTP: every Dialect switch in STRICT, alone, and LENIENT
unchanged."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sync_worker.core.clock import FakeClock
from sync_worker.sandbox import LENIENT, STRICT, Dialect, Sandbox
from sync_worker.sandbox.seed import INSIGHT_TYPE, seed_archive_id

LIST = "/communication/conferences/archives"
PACKING_ID = seed_archive_id(4)
FAILED_ID = seed_archive_id(5)
CONTACT_KEYS = {"id", "email", "first_name", "last_name", "owner"}
OWNER_KEYS = {"id", "email", "username", "external_id"}
USER_KEYS = OWNER_KEYS
TYPE_KEYS = {"id", "type", "description"}
INSIGHT_KEYS = {"id", "type", "contact", "owner", "insight_date", "data"}
# The fake clock starts at 2026-11-18 11:06:40: the seed is older than this.
AFTER_SEED = "2026-11-18 11:07:00"
REJECTED_SINCE = {"error": "unknown filter attribute ['internal_updated_at_start']"}


def only(**changes: Any) -> Dialect:
    """LENIENT with the given fields switched."""
    return dataclasses.replace(LENIENT, **changes)


def switched(field: str, value: Any) -> list[Any]:
    """STRICT, and LENIENT with only ``field`` switched to ``value``."""
    return [pytest.param(STRICT, id="strict"), pytest.param(only(**{field: value}), id="alone")]


class Client:
    """Plain HTTP to one running sandbox, as the vendors' clients would talk to it."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._token = ""

    def fx(
        self, method: str, path: str, prefix: str | None = None, **params: Any
    ) -> requests.Response:
        """Flexperto ``path`` under the dialect's prefix (or ``prefix``), with the api-key."""
        if prefix is None:
            prefix = self.sandbox.dialect.flexperto_prefix
        return requests.request(
            method,
            self.sandbox.flexperto_url + prefix + path,
            params=params,
            headers={"api-key": self.sandbox.api_key},
            allow_redirects=False,
            timeout=5,
        )

    def listing(self, **params: Any) -> requests.Response:
        return self.fx("GET", LIST, **params)

    def items(self, **params: Any) -> list[Any]:
        answer = self.listing(**params)
        assert answer.status_code == 200, answer.text
        return answer.json()["items"]

    def record(self, archive_id: str) -> dict[str, Any]:
        answer = self.fx("GET", f"/communication/archives/archives/{archive_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def abandon(self, conference_id: str) -> requests.Response:
        return self.fx(
            "POST", f"/communication/conferences/conferences/{conference_id}/archive/abandon"
        )

    def te(self, path: str, **params: Any) -> requests.Response:
        url = self.sandbox.totalexpert_url + path
        return requests.get(url, params=params, headers=self._bearer(), timeout=5)

    def te_items(self, path: str, **params: Any) -> list[dict[str, Any]]:
        answer = self.te(path, **params)
        assert answer.status_code == 200, answer.text
        return answer.json()["items"]

    def post_insight(self, contact: dict[str, Any]) -> requests.Response:
        body = {
            "type": {"type": INSIGHT_TYPE},
            "contact": {"id": contact["id"]},
            "owner": {"id": contact["owner"]["id"]},
            "insight_date": "2026-11-20 09:45:00",
            "data": {"description": "Conference archived", "flexperto_archive_id": "a-1"},
        }
        url = self.sandbox.totalexpert_url + "/insights"
        return requests.post(url, json=body, headers=self._bearer(), timeout=5)

    def _bearer(self) -> dict[str, str]:
        if not self._token:  # TE grants two tokens an hour: one per client
            answer = requests.post(
                self.sandbox.totalexpert_url + "/token",
                auth=(self.sandbox.client_id, self.sandbox.client_secret),
                json={"grant_type": "client_credentials"},
                timeout=5,
            )
            self._token = answer.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}


@pytest.fixture
def start(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., Client]]:
    """Starts a seeded sandbox speaking a dialect; all of them stop after the test."""
    numbers = itertools.count()
    with contextlib.ExitStack() as running:

        def started(dialect: Dialect, **options: Any) -> Client:
            folder = tmp_path / f"sandbox-{next(numbers)}"
            sandbox = Sandbox(folder, clock=clock, dialect=dialect, **options)
            return Client(running.enter_context(sandbox))

        yield started


def contact_of(client: Client, email: str, owner_email: str) -> dict[str, Any]:
    return next(
        c
        for c in client.sandbox.totalexpert.contacts()
        if c["email"] == email and c["owner"]["email"] == owner_email
    )


def add_archives(client: Client, count: int) -> list[str]:
    """``count`` more AVAILABLE archives, listed after the seed; their ids in listing order."""
    return [client.sandbox.flexperto.add_archive(content=b"zip")["id"] for _ in range(count)]


# --- the presets --------------------------------------------------------------------------


def test_strict_switches_off_everything_but_the_documented_shapes():
    fields = [f.name for f in dataclasses.fields(Dialect)]
    changed = {name for name in fields if getattr(STRICT, name) != getattr(LENIENT, name)}
    kept = {"flexperto_prefix", "flexperto_record_people", "s3_ranges", "te_insight_data_listed"}
    assert changed == set(fields) - kept
    assert (STRICT.flexperto_prefix, STRICT.te_updated_since) == ("/api/v2", "rejected")
    assert STRICT.flexperto_record_people and STRICT.te_insight_data_listed and STRICT.s3_ranges
    assert Dialect() == LENIENT
    with pytest.raises(dataclasses.FrozenInstanceError):
        STRICT.te_strict_queries = False  # type: ignore[misc]


@pytest.mark.parametrize("mode", ["supported", "rejected", "ignored"])
def test_updated_since_modes(mode):
    assert Dialect(te_updated_since=mode).te_updated_since == mode


def test_unknown_updated_since_mode_is_refused():
    with pytest.raises(ValueError, match="te_updated_since"):
        Dialect(te_updated_since="sometimes")


def test_sandbox_speaks_lenient_unless_told(tmp_path, clock, start):
    with Sandbox(tmp_path / "default", clock=clock) as default:
        assert default.dialect is LENIENT
    assert start(STRICT).sandbox.dialect is STRICT


# --- Flexperto: where the endpoints live ----------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "elsewhere"),
    [
        pytest.param(LENIENT, "", id="lenient"),
        pytest.param(STRICT, "", id="strict"),
        pytest.param(only(flexperto_prefix=""), "/api/v2", id="root"),
        pytest.param(only(flexperto_prefix="/tenant/api/v9"), "/api/v2", id="other"),
    ],
)
def test_every_endpoint_lives_under_the_prefix_only(start, dialect, elsewhere):
    client = start(dialect)
    record = f"/communication/archives/archives/{seed_archive_id(1)}"
    endpoints = [
        ("GET", LIST, 200),
        ("GET", record, 200),
        ("GET", f"{record}/download", 302),
        (
            "POST",
            "/communication/conferences/conferences/c-4701/archive/abandon",
            200 if dialect.flexperto_abandon_body else 204,
        ),
    ]
    for method, path, _ in endpoints:
        answer = client.fx(method, path, prefix=elsewhere)
        assert answer.status_code == 404
        assert answer.json() == {"code": 404, "message": "no such endpoint"}
    assert client.sandbox.flexperto.record(seed_archive_id(1))["status"] == "AVAILABLE"
    for method, path, status in endpoints:
        assert client.fx(method, path).status_code == status


# --- Flexperto: the list's parameters and answer ------------------------------------------


@pytest.mark.parametrize("dialect", switched("flexperto_list_params", False))
@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"limit": 5}, "limit"),
        ({"offset": 0}, "offset"),
        ({"status": "AVAILABLE"}, "status"),
        ({"foo": "", "limit": 2}, "foo"),
    ],
)
def test_list_refuses_any_query_parameter(start, dialect, query, named):
    answer = start(dialect).listing(**query)
    assert answer.status_code == 400
    assert answer.json() == {"code": 400, "message": f"unknown query parameter '{named}'"}


@pytest.mark.parametrize("dialect", switched("flexperto_list_params", False))
def test_list_without_parameters_answers_every_record_at_once(start, dialect):
    client = start(dialect)
    added = add_archives(client, 105)
    answer = client.listing().json()
    ids = [item["id"] for item in answer["items"]]
    assert ids[-105:] == added
    assert len(ids) == len(set(ids)) == 105 + (3 if dialect is STRICT else 5)
    if not dialect.flexperto_list_extras:
        assert set(answer) == {"items"}
    else:  # nothing was asked for, so nothing was cut
        assert (answer["total"], answer["limit"], answer["offset"]) == (len(ids), None, 0)


def test_lenient_list_takes_status_limit_offset_and_pages_by_default(start):
    client = start(LENIENT)
    add_archives(client, 105)
    page = client.listing(status="AVAILABLE", limit=2, offset=1, foo="ignored").json()
    assert [item["id"] for item in page["items"]] == [seed_archive_id(2), seed_archive_id(3)]
    assert (page["total"], page["limit"], page["offset"]) == (108, 2, 1)
    first = client.listing().json()
    assert (len(first["items"]), first["total"], first["limit"]) == (100, 110, 100)


@pytest.mark.parametrize("dialect", switched("flexperto_list_extras", False))
def test_list_answer_holds_only_items(start, dialect):
    assert set(start(dialect).listing().json()) == {"items"}


def test_without_extras_a_limit_still_pages_and_no_limit_lists_everything(start):
    client = start(only(flexperto_list_extras=False))
    added = add_archives(client, 105)
    page = client.listing(limit=2, offset=5).json()
    assert page == {"items": [client.sandbox.flexperto.record(i) for i in added[:2]]}
    assert len(client.items()) == 110


@pytest.mark.parametrize("dialect", switched("flexperto_list_all_statuses", False))
def test_list_without_status_filter_shows_available_records_and_every_extra(start, dialect):
    client = start(dialect)
    raw = {"id": "raw-1", "status": "EXPIRED", "size": "huge", "subject": None}
    client.sandbox.flexperto.add_raw_record(raw)
    client.sandbox.flexperto.add_raw_record("not even an object")
    client.sandbox.flexperto.duplicate_in_listing(FAILED_ID)
    items = client.items()
    assert [item["id"] for item in items[:3]] == [seed_archive_id(n) for n in (1, 2, 3)]
    assert {item["status"] for item in items[:3]} == {"AVAILABLE"}
    assert items[3:5] == [raw, "not even an object"]  # raw records: exactly as given
    assert (items[5]["id"], items[5]["status"]) == (FAILED_ID, "FAILED")
    assert len(items) == 6


def test_a_status_filter_still_lists_other_statuses(start):
    client = start(only(flexperto_list_all_statuses=False))
    assert [item["id"] for item in client.items(status="FAILED")] == [FAILED_ID]


def test_lenient_list_shows_every_status(start):
    client = start(LENIENT)
    client.sandbox.flexperto.duplicate_in_listing(FAILED_ID)
    statuses = [item["status"] for item in client.items()]
    assert statuses == ["AVAILABLE"] * 3 + ["PACKING", "FAILED", "FAILED"]


def test_strict_packing_turns_available_after_the_configured_listings(start):
    client = start(STRICT, packing_listings=2)
    assert client.listing(limit=1).status_code == 400  # a refused listing does not count
    assert PACKING_ID not in [item["id"] for item in client.items()]
    assert PACKING_ID not in [item["id"] for item in client.items()]
    listed = {item["id"]: item for item in client.items()}
    assert listed[PACKING_ID]["status"] == "AVAILABLE"


# --- Flexperto: what records show -----------------------------------------------------------


@pytest.mark.parametrize("dialect", switched("flexperto_record_size", False))
def test_records_carry_no_size(start, dialect):
    client = start(dialect)
    client.sandbox.flexperto.duplicate_in_listing(seed_archive_id(1))
    items = client.items()
    assert items[-1]["id"] == seed_archive_id(1)
    assert not [item for item in items if "size" in item]
    assert "size" not in client.record(seed_archive_id(1))
    assert "size" in client.sandbox.flexperto.record(seed_archive_id(1))  # kept inside


def test_lenient_records_carry_their_size(start):
    client = start(LENIENT)
    size = client.sandbox.flexperto.blob(seed_archive_id(1)).size
    assert client.items()[0]["size"] == client.record(seed_archive_id(1))["size"] == size


def test_subject_can_name_only_the_conference_while_the_zip_keeps_the_people(start):
    client = start(only(flexperto_record_people=False))
    assert client.items()[0]["subject"] == {"conference_id": "c-4701"}
    record = client.record(seed_archive_id(1))
    assert record["subject"] == {"conference_id": "c-4701"}
    location = client.fx("GET", f"/communication/archives/archives/{record['id']}/download")
    archive = requests.get(location.headers["Location"], timeout=5).content
    metadata = json.loads(zipfile.ZipFile(io.BytesIO(archive)).read("themis/metadata.json"))
    assert "max.kunde@example.org" in [p["email"] for p in metadata["participants"]]
    assert metadata["moderator"]["email"] == "anna.expert@bank.example"


@pytest.mark.parametrize("dialect", [LENIENT, STRICT], ids=["lenient", "strict"])
def test_subject_carries_the_people(start, dialect):
    client = start(dialect)
    for record in (client.items()[0], client.record(seed_archive_id(1))):
        subject = record["subject"]
        assert set(subject) == {"conference_id", "start", "end", "moderator", "participants"}
        assert subject["moderator"]["email"] == "anna.expert@bank.example"


# --- Flexperto: abandon -------------------------------------------------------------------


@pytest.mark.parametrize("dialect", switched("flexperto_abandon_body", False))
def test_abandon_answers_204_without_a_body(start, dialect):
    client = start(dialect)
    answer = client.abandon("c-4701")
    assert (answer.status_code, answer.content) == (204, b"")
    assert client.sandbox.flexperto.record(seed_archive_id(1))["status"] == "ABANDONED"
    assert client.abandon("c-0").json() == {"code": 404, "message": "conference not found"}


def test_lenient_abandon_answers_a_body(start):
    answer = start(LENIENT).abandon("c-4701")
    assert answer.status_code == 200
    assert answer.json() == {"conference_id": "c-4701", "status": "ABANDONED"}


# --- the storage host ---------------------------------------------------------------------


@pytest.mark.parametrize(("ranges", "status", "length"), [(True, 206, 10), (False, 200, None)])
def test_storage_host_with_and_without_ranges(start, ranges, status, length):
    client = start(only(s3_ranges=ranges))
    location = client.fx("GET", f"/communication/archives/archives/{seed_archive_id(1)}/download")
    url = location.headers["Location"]
    whole = requests.get(url, timeout=5).content
    answer = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=5)
    assert answer.status_code == status
    assert answer.content == (whole[10:20] if length else whole)


# --- Total Expert: the updated-since filter -------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "effect"),
    [
        pytest.param(LENIENT, "filters", id="lenient"),
        pytest.param(only(te_updated_since="ignored"), "nothing", id="ignored"),
        pytest.param(only(te_updated_since="rejected"), "refused", id="rejected"),
        pytest.param(STRICT, "refused", id="strict"),
        pytest.param(only(te_strict_queries=True), "filters", id="strict-queries"),
        pytest.param(
            only(te_strict_queries=True, te_updated_since="ignored"),
            "nothing",
            id="strict-queries-ignored",
        ),
        pytest.param(only(te_extra_fields=False), "filters", id="hidden-but-supported"),
    ],
)
@pytest.mark.parametrize("path", ["/contacts", "/users"])
def test_updated_since_filter(start, clock, dialect, effect, path):
    client = start(dialect)
    clock.advance(60)
    late = client.sandbox.totalexpert.add_user("late@bank.example")
    client.sandbox.totalexpert.add_contact("late@example.org", late["id"])
    everyone = [item["email"] for item in client.te_items(path)]
    answer = client.te(path, filter=f"internal_updated_at_start={AFTER_SEED}")
    if effect == "refused":
        assert (answer.status_code, answer.json()) == (400, REJECTED_SINCE)
        return
    emails = [item["email"] for item in answer.json()["items"]]
    newer = ["late@example.org"] if path == "/contacts" else ["late@bank.example"]
    assert emails == (newer if effect == "filters" else everyone)
    assert len(everyone) > 1


def test_rejected_updated_since_alone_leaves_other_filters_lenient(start):
    client = start(only(te_updated_since="rejected"))
    assert len(client.te_items("/contacts", filter="color=blue", sort="id")) == 4


# --- Total Expert: fields shown -----------------------------------------------------------


@pytest.mark.parametrize("dialect", switched("te_extra_fields", False))
def test_lists_show_only_documented_fields(start, dialect):
    client = start(dialect)
    contacts = client.te_items("/contacts")
    assert len(contacts) == 4
    assert all(set(c) == CONTACT_KEYS and set(c["owner"]) == OWNER_KEYS for c in contacts)
    assert [set(u) for u in client.te_items("/users")] == [USER_KEYS, USER_KEYS]
    assert [set(t) for t in client.te_items("/insight-types")] == [TYPE_KEYS]
    kept = client.sandbox.totalexpert.contacts() + client.sandbox.totalexpert.users()
    assert all("internal_updated_at" in item for item in kept)


def test_lenient_contacts_and_users_show_when_they_changed(start):
    client = start(LENIENT)
    assert set(client.te_items("/contacts")[0]) == CONTACT_KEYS | {"internal_updated_at"}
    assert set(client.te_items("/users")[0]) == USER_KEYS | {"internal_updated_at"}


# --- Total Expert: strict queries -----------------------------------------------------------


@pytest.mark.parametrize("dialect", switched("te_strict_queries", True))
@pytest.mark.parametrize("path", ["/contacts", "/users", "/insight-types", "/insights"])
def test_unknown_query_parameter_is_refused(start, dialect, path):
    answer = start(dialect).te(path, **{"page[size]": 10, "sort": "id"})
    assert (answer.status_code, answer.json()) == (400, {"error": "unknown query parameter 'sort'"})


@pytest.mark.parametrize("dialect", switched("te_strict_queries", True))
@pytest.mark.parametrize(
    ("path", "documented"),
    [
        ("/contacts", "email"),
        ("/users", "email"),
        ("/insight-types", "type"),
        ("/insights", "contact_id"),
        ("/insights", "type_id"),
    ],
)
def test_unknown_filter_attributes_are_refused(start, dialect, path, documented):
    client = start(dialect)
    assert client.te(path, filter=f"{documented}=x").status_code == 200
    answer = client.te(path, filter=f"color=blue,{documented}=x,owner_id=50")
    error = {"error": "unknown filter attribute ['color', 'owner_id']"}
    assert (answer.status_code, answer.json()) == (400, error)


@pytest.mark.parametrize("dialect", switched("te_strict_queries", True))
def test_documented_filters_and_paging_work_strictly(start, dialect):
    client = start(dialect)
    max_of_anna = contact_of(client, "max.kunde@example.org", "anna.expert@bank.example")
    lena = contact_of(client, "lena.lang@example.org", "anna.expert@bank.example")
    for contact in (max_of_anna, lena):
        assert client.post_insight(contact).status_code == 201
    assert len(client.te_items("/contacts", filter="email=max.kunde@example.org")) == 2
    [anna] = client.te_items("/users", filter="email=anna.expert@bank.example")
    [kind] = client.te_items("/insight-types", filter=f"type={INSIGHT_TYPE}")
    by_contact = client.te_items("/insights", filter=f"contact_id={lena['id']}")
    assert [i["contact"]["id"] for i in by_contact] == [lena["id"]]
    both = f"contact_id={max_of_anna['id']},type_id={kind['id']}"
    assert [i["owner"]["id"] for i in client.te_items("/insights", filter=both)] == [anna["id"]]
    page = client.te("/insights", filter=f"type_id={kind['id']}", **{"page[size]": 1}).json()
    assert (len(page["items"]), page["links"]["next"]) == (1, 2)


def test_lenient_queries_ignore_the_unknown(start):
    client = start(LENIENT)
    assert len(client.te_items("/contacts", filter="color=blue", sort="id")) == 4
    assert len(client.te_items("/insight-types", filter="color=blue", sort="id")) == 1


# --- Total Expert: insights -----------------------------------------------------------------


@pytest.mark.parametrize("dialect", switched("te_insight_answer_id", False))
def test_insight_answer_is_an_empty_object(start, dialect):
    client = start(dialect)
    contact = contact_of(client, "lena.lang@example.org", "anna.expert@bank.example")
    answer = client.post_insight(contact)
    assert (answer.status_code, answer.json()) == (201, {})
    assert [i["contact_id"] for i in client.sandbox.totalexpert.insights()] == [contact["id"]]


def test_lenient_insight_answer_names_the_insight(start):
    client = start(LENIENT)
    answer = client.post_insight(
        contact_of(client, "lena.lang@example.org", "anna.expert@bank.example")
    )
    [stored] = client.sandbox.totalexpert.insights()
    url = f"{client.sandbox.totalexpert_url}/insights/{stored['id']}"
    assert (answer.status_code, answer.json()) == (201, {"id": stored["id"], "created": url})


def test_listed_insights_can_leave_out_their_data(start):
    client = start(only(te_insight_data_listed=False))
    contact = contact_of(client, "lena.lang@example.org", "anna.expert@bank.example")
    client.post_insight(contact)
    [listed] = client.te_items("/insights", filter=f"contact_id={contact['id']}")
    assert set(listed) == INSIGHT_KEYS - {"data"}
    assert client.sandbox.totalexpert.insights()[0]["data"]["flexperto_archive_id"] == "a-1"


@pytest.mark.parametrize("dialect", [LENIENT, STRICT], ids=["lenient", "strict"])
def test_listed_insights_carry_their_data(start, dialect):
    client = start(dialect)
    contact = contact_of(client, "lena.lang@example.org", "anna.expert@bank.example")
    client.post_insight(contact)
    [listed] = client.te_items("/insights", filter=f"contact_id={contact['id']}")
    assert set(listed) == INSIGHT_KEYS
    assert listed["data"]["flexperto_archive_id"] == "a-1"
