import io
import json

import pytest
import structlog

from sync_worker.core import logs

pytestmark = pytest.mark.fast


def capture(fmt="json"):
    stream = io.StringIO()
    logs.configure(fmt, "debug", stream=stream, secrets=["s3cr3t-api-key"])
    return stream


def test_json_lines_with_utc_timestamp_and_level():
    stream = capture()
    structlog.get_logger().info("archive.stored", archive_id="a1")
    event = json.loads(stream.getvalue())
    assert event["event"] == "archive.stored"
    assert event["level"] == "info"
    assert event["archive_id"] == "a1"
    assert event["timestamp"].endswith("Z")


def test_secret_values_are_masked_anywhere():
    stream = capture()
    logs.add_secret("tok-123456")
    structlog.get_logger().error(
        "x", error="header api-key: s3cr3t-api-key", nested={"t": ["Bearer tok-123456"]}
    )
    text = stream.getvalue()
    assert "s3cr3t-api-key" not in text and "tok-123456" not in text
    assert "[REDACTED]" in text


def test_secret_named_fields_are_masked():
    stream = capture()
    structlog.get_logger().info("x", client_secret="anything", access_token="abc")
    event = json.loads(stream.getvalue())
    assert event["client_secret"] == event["access_token"] == "[REDACTED]"


def test_level_filter():
    stream = io.StringIO()
    logs.configure("json", "warning", stream=stream)
    structlog.get_logger().info("quiet")
    structlog.get_logger().warning("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


def test_every_event_of_a_pass_is_one_json_line_with_the_stable_fields(sandbox, run, log_lines):
    run()
    events = log_lines()
    assert events[0]["event"] == "run.started" and events[-1]["event"] == "run.finished"
    for event in events:
        assert {"event", "level", "timestamp"} <= event.keys()
        assert event["timestamp"].endswith("Z")
        if event["event"].startswith("archive.") and event["event"] != "archive.rejected":
            assert event["archive_id"] and event["conference_id"]
    names = {e["event"] for e in events}
    assert {
        "archive.listed",
        "archive.downloaded",
        "archive.verified",
        "archive.stored",
        "archive.abandoned",
        "insight.sent",
        "insight.no_match",
        "te.token_requested",
    } <= names


def raise_here():
    raise KeyError("the missing key")


def test_an_unexpected_exception_is_described_without_a_traceback():
    try:
        raise_here()
    except KeyError as exc:
        fields = logs.exception_fields(exc)
    assert fields["error_class"] == "KeyError"
    assert fields["error"] == "'the missing key'"
    assert "where" not in fields  # raised in a test: not the worker's own code


def test_where_names_the_innermost_frame_of_our_own_code(tmp_path):
    from sync_worker.state.db import open_database

    (tmp_path / "s.db").write_bytes(b"not a database " * 100)
    try:
        open_database(tmp_path / "s.db")
    except Exception as exc:
        fields = logs.exception_fields(exc)
    assert fields["error_class"] == "DatabaseError"
    assert fields["where"].startswith("state/db.py:")


def test_mask_hides_registered_secrets_outside_the_log():
    logs.add_secret("hunter2-secret")
    assert logs.mask("the key hunter2-secret leaked") == "the key [REDACTED] leaked"
