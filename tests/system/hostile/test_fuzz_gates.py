"""Fuzzing the two gates every untrusted answer passes: the JSON reader (``json_body``) and
the record gate (``parse_record``). Whatever comes in, the reader returns a value or raises
ApiError, the gate returns a record or raises RecordError, and nothing else escapes; an
accepted record's ids are safe file names that name none of the worker's own files, and it
survives being stored as JSON and read back from the ledger.

``FUZZ_EXAMPLES`` sets the examples per property (300 by default; CI runs 1000).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker.adapters.flexperto.records import (
    RESERVED_IDS,
    RecordError,
    is_safe_id,
    parse_record,
    read_record,
)
from sync_worker.adapters.http import Answer, ApiError, OversizedNumber, json_body

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TIMES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-11-20T09:00:00Z"]
ODD_TEXT = [
    "SHA256SUMS",
    "sha256sums",
    "Sha256Sums",
    ".quarantine",
    ".",
    "..",
    "a/b",
    "a\\b",
    "c-4701\x00",
    "²",
    "٣",
    "4²",
    "\uff11\uff12",  # fullwidth digits
    "AVAILABLE",
    "Available",
    "ABANDONED",
    "PACKING",
    "9" * 200,
    *TIMES,
    "sha256:" + "ab" * 32,
    "ab" * 32,
    "q" * 43 + "=",
    "x@y",
    " Anna@Example.com ",
]
safe_ids = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,140}", fullmatch=True)
texts = st.sampled_from(ODD_TEXT) | st.text(max_size=40) | st.from_regex(r"[A-Za-z0-9._-]{1,130}")
huge_ints = st.integers(min_value=1, max_value=6000).map(lambda n: 10**n - 1)
# What a JSON text can carry (the bodies below add huge numbers and deep nesting as text).
wire_scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts
# What a record can hold in memory, besides: what the JSON reader makes of poison.
scalars = (
    wire_scalars
    | huge_ints
    | st.builds(OversizedNumber, st.integers(min_value=33, max_value=10_000))
)


def nested(depth: int, as_dict: bool) -> Any:
    """A value nested ``depth`` levels deep, built without recursion."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value} if as_dict else [value]
    return value


def json_like(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4)
        ),
        max_leaves=25,
    )


def often(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly ``good``: a record must pass most checks to reach the next one."""
    return st.one_of(good, good, good, bad)


def records(values: st.SearchStrategy) -> st.SearchStrategy:
    """Records close enough to real ones to reach every check of the gate."""
    values = often(json_like(wire_scalars), values)
    odd = texts | values
    ids = often(safe_ids | st.sampled_from(["SHA256SUMS", "sha256sums", "Sha256Sums"]), odd)
    emails = often(st.sampled_from(["anna@example.com", " Max@Example.COM "]), odd)
    times = often(st.sampled_from(TIMES) | st.datetimes().map(str), odd)
    person = st.fixed_dictionaries({}, optional={"email": emails, "name": odd})
    subject = st.fixed_dictionaries(
        {"conference_id": ids},
        optional={
            "start": times,
            "end": times,
            "moderator": often(person, values),
            "participants": often(st.lists(often(person, values), max_size=4), values),
            "extra": values,
        },
    )
    return st.fixed_dictionaries(
        {
            "id": ids,
            "subject": often(subject, values),
            "status": often(st.sampled_from(["AVAILABLE", "ABANDONED", "PACKING"]), odd),
            "sha256CheckSum": often(st.sampled_from(["ab" * 32, "q" * 43 + "="]), odd),
        },
        optional={
            "size": often(st.integers(min_value=0), values),
            "error": values,
            "extra": values,
        },
    )


# Deeper than the gate takes; not much deeper, so that hypothesis can still print it.
deep = st.builds(nested, st.integers(min_value=0, max_value=100), st.booleans())
in_memory = json_like(scalars) | deep
on_the_wire = json_like(wire_scalars)
anything = often(records(in_memory), in_memory)


def check_gate(raw: Any) -> None:
    """parse_record's promise for ``raw``: a safe record, or RecordError."""
    try:
        record = parse_record(raw)
    except RecordError:
        return
    for ident in (record.archive_id, record.conference_id):
        assert is_safe_id(ident) and ident.lower() not in RESERVED_IDS
        root = Path("/srv/archives")
        assert (root / ident).resolve().parent == root
    kept = json.loads(json.dumps(raw))  # as the ledger keeps it
    assert parse_record(kept) == read_record(kept) == record


@FUZZ
@given(anything)
def test_the_record_gate_returns_a_safe_record_or_refuses(raw):
    check_gate(raw)


def digits(n: int) -> str:
    return "9" * n


bodies = st.one_of(
    st.builds(
        lambda items: json.dumps({"items": items}),
        st.lists(records(on_the_wire) | on_the_wire, max_size=3),
    ),
    st.builds(
        lambda n, d: "[" * n + ("{}" if d else "") + "]" * n, st.integers(0, 200_000), st.booleans()
    ),
    st.builds(lambda n: '{"a":' * n + "1" + "}" * n, st.integers(0, 100_000)),
    st.builds(
        lambda n, sign: f'{{"items": [{{"size": {sign}{digits(n)}}}]}}',
        st.integers(1, 20_000),
        st.sampled_from(["", "-"]),
    ),
    st.builds(lambda n: f'{{"items": [{digits(n)}.5e3]}}', st.integers(1, 5000)),
    st.sampled_from(['{"id": ²}', '"²"', "NaN", "-Infinity", "[1e999999]", "", "{", "\ufeff{}"]),
    st.text(max_size=200),
)


@FUZZ
@given(st.one_of(bodies.map(str.encode), st.binary(max_size=200)))
def test_the_json_reader_returns_a_value_or_raises_api_error(body):
    try:
        value = json_body("fuzz", Answer(200, {}, body))
    except ApiError:
        return
    items = value.get("items") if isinstance(value, dict) else None
    for item in items if isinstance(items, list) else [value]:
        check_gate(item)
