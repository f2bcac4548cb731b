"""The S3 tests against another S3 server than their moto (tests/s3_endpoint.py): a few of
them run in a pytest of their own pointed at a moto this test starts, as they would be at
MinIO, Ceph RGW or AWS, so that the switch is proven to work."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sync_worker.sandbox.bucket import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server
from tests.s3_endpoint import ENDPOINT, ENV, EndpointSettingsError, ExternalS3
from tests.tcp_forwarder import Forwarder

ROOT = Path(__file__).parents[4]
CLAIMS = "tests/jobs/test_claim_archives.py::"
SELECTED = (
    "tests/sync_worker/adapters/stores/test_s3.py",
    CLAIMS + "test_a_bucket_without_object_lock_stops_the_job_once_before_any_download",
    CLAIMS + "test_a_store_lost_mid_pass_stops_the_job_at_once_and_the_next_pass_resumes",
)


def test_the_s3_tests_run_against_the_server_the_environment_names():
    server = S3Server()
    endpoint = urlsplit(server.url)
    forwarder = Forwarder((endpoint.hostname, endpoint.port)).start()  # counts who comes
    prefix = f"qualify-{secrets.token_hex(3)}-"
    env = {
        **os.environ,
        ENDPOINT: forwarder.url,  # region unset: us-east-1, made without a constraint
        ENV + "ACCESS_KEY_ID": ACCESS_KEY_ID,
        ENV + "SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        ENV + "BUCKET_PREFIX": prefix,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *SELECTED],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        left = [b["Name"] for b in _buckets(server) if b["Name"].startswith(prefix)]
    finally:
        forwarder.stop()
        server.stop()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert forwarder.connections > 0  # the tests went where the environment said
    assert "moto only, COMPLIANCE objects could never be removed there" in done.stdout
    assert " passed" in done.stdout and " failed" not in done.stdout
    assert left == []  # every bucket made under the prefix was removed after its test


def _buckets(server: S3Server) -> list[dict]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    return client.list_buckets()["Buckets"]


def test_an_endpoint_without_credentials_is_refused_naming_what_is_missing():
    with pytest.raises(EndpointSettingsError, match=f"set {ENV}SECRET_ACCESS_KEY too"):
        ExternalS3.from_environment(
            {ENDPOINT: "https://s3.example.net", ENV + "ACCESS_KEY_ID": "id"}
        )
    assert ExternalS3.from_environment({}) is None
