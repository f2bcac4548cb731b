"""The record parser: untrusted JSON in, a safe ArchiveRecord or a clear RecordError out."""

import base64
import contextlib
import copy
import json
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_worker.adapters.flexperto.records import (
    RESERVED_IDS,
    RecordError,
    is_safe_id,
    parse_record,
    people_from_archive,
)
from sync_worker.adapters.stores import SUMS_NAME

pytestmark = pytest.mark.fast

GOOD = {
    "id": "9b2f0c1e-1111-2222-3333-444455556666",
    "status": "AVAILABLE",
    "error": None,
    "sha256CheckSum": "AB" * 32,
    "created_at": "2026-11-20T10:02:11Z",
    "subject": {
        "conference_id": "c-4711",
        "start": "2026-11-20T09:00:00Z",
        "end": "2026-11-20T09:45:00Z",
        "moderator": {"account_id": "e-17", "email": "Anna.Expert@bank.example", "name": "Anna"},
        "participants": [
            {"account_id": "p-99", "email": "max.kunde@example.org", "name": "Max Kunde"},
            {"account_id": "p-99", "email": "MAX.KUNDE@example.org", "name": "dup"},
            {"email": "not-an-email"},
            "garbage",
        ],
    },
    "unknown_key": {"ignored": True},
}


def with_changes(**subject_or_top):
    record = copy.deepcopy(GOOD)
    for key, value in subject_or_top.items():
        if key in record["subject"]:
            record["subject"][key] = value
        else:
            record[key] = value
    return record


def test_good_record_is_parsed_leniently():
    record = parse_record(GOOD)
    assert record.archive_id == GOOD["id"]
    assert record.conference_id == "c-4711"
    assert record.sha256 == "ab" * 32
    assert record.moderator.email == "anna.expert@bank.example"
    assert [p.email for p in record.participants] == ["max.kunde@example.org"]
    assert record.end.isoformat() == "2026-11-20T09:45:00+00:00"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "../../etc/x"}, "unsafe or missing archive id"),
        ({"id": ".hidden"}, "unsafe or missing archive id"),
        ({"id": "/abs/path"}, "unsafe or missing archive id"),
        ({"id": "a\x00b"}, "unsafe or missing archive id"),
        ({"id": "x" * 129}, "unsafe or missing archive id"),
        ({"id": "\uff43-4711"}, "unsafe or missing archive id"),  # full-width look-alike
        ({"id": 42}, "unsafe or missing archive id"),
        ({"conference_id": "../c"}, "unsafe or missing conference id"),
        ({"conference_id": None}, "unsafe or missing conference id"),
        ({"status": "SHINY"}, "unknown status"),
        ({"sha256CheckSum": "abc"}, "malformed sha256CheckSum"),
        ({"sha256CheckSum": None}, "malformed sha256CheckSum"),
        ({"subject": "nope"}, "no subject object"),
    ],
)
def test_bad_records_are_refused_with_a_reason(change, message):
    with pytest.raises(RecordError, match=message):
        parse_record(with_changes(**change))


def test_non_object_is_refused():
    with pytest.raises(RecordError, match="not a JSON object"):
        parse_record(["id"])


def test_checksum_is_optional_while_not_downloadable():
    assert parse_record(with_changes(status="PACKING", sha256CheckSum=None)).sha256 is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400)
@given(json_values)
def test_arbitrary_json_never_crashes_the_parser(value):
    with contextlib.suppress(RecordError):
        parse_record(value)


@settings(max_examples=400)
@given(
    archive_id=st.text(max_size=150),
    conference_id=st.text(max_size=150),
)
def test_accepted_ids_always_stay_inside_the_archive_folder(archive_id, conference_id):
    record = with_changes(id=archive_id, conference_id=conference_id)
    try:
        parsed = parse_record(record)
    except RecordError:
        return
    root = Path("/srv/archives")
    target = (root / parsed.conference_id / f"{parsed.archive_id}.zip").resolve()
    assert target.parent.parent == root
    assert is_safe_id(parsed.archive_id) and is_safe_id(parsed.conference_id)
    assert not parsed.archive_id.startswith(".")


def test_a_base64_checksum_is_read_as_the_same_sha256():
    digest = bytes.fromhex("ab" * 32)
    record = parse_record(with_changes(sha256CheckSum=base64.b64encode(digest).decode()))
    assert record.sha256 == "ab" * 32


@pytest.mark.parametrize("value", ["AB" * 31, "q" * 44, "q" * 42 + "==", "", 123, None])
def test_other_checksums_are_rejected(value):
    with pytest.raises(RecordError, match="sha256CheckSum"):
        parse_record(with_changes(sha256CheckSum=value))


def test_a_record_without_participants_says_so():
    record = copy.deepcopy(GOOD)
    del record["subject"]["participants"]
    assert parse_record(GOOD).people_listed
    assert not parse_record(record).people_listed
    assert parse_record(with_changes(participants=[])).people_listed


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def test_people_are_read_from_the_archives_metadata(tmp_path):
    metadata = {
        "tenant": "demo",
        "conference": {
            "moderator": {"email": "Anna.Expert@bank.example", "name": "Anna"},
            "participants": [
                {"email": "max.kunde@example.org", "name": "Max"},
                {"email": "anna.expert@bank.example", "name": "Anna again"},
                {"email": "max.kunde@example.org", "name": "Max twice"},
                {"name": "no email"},
            ],
        },
    }
    path = write_zip(
        tmp_path / "a.zip",
        {
            "themis/metadata.json": json.dumps(metadata).encode(),
            "themis/chat.json": json.dumps([{"email": "chat@example.org"}]).encode(),
            "mithra/contract.pdf": b"%PDF",
        },
    )
    moderator, participants = people_from_archive(path)
    assert moderator.email == "anna.expert@bank.example"
    assert [p.email for p in participants] == ["max.kunde@example.org"]


@pytest.mark.parametrize(
    "files",
    [
        {"themis/metadata.json": b"{not json"},
        {"themis/metadata.json": b"[]"},
        {"other/metadata.json": b'{"email": "x@example.org"}'},
        {"themis/metadata.json": b"[" * 100_000 + b"]" * 100_000},
    ],
)
def test_unreadable_metadata_yields_nobody(tmp_path, files):
    assert people_from_archive(write_zip(tmp_path / "a.zip", files)) == (None, ())


def test_a_file_that_is_not_a_zip_yields_nobody(tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(b"not a zip")
    assert people_from_archive(path) == (None, ())


def test_the_stores_own_file_name_is_a_reserved_id():
    assert SUMS_NAME.lower() in RESERVED_IDS
