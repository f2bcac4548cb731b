import io
import json

import structlog

from sync_worker import logs


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
