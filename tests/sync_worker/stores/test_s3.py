"""The S3 store against a real S3 server on loopback (moto): what reaches the bucket, and
when the store says it is safely there."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sync_worker.config import HttpConfig, StorageConfig
from sync_worker.sandbox.bucket import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, SandboxBucket
from sync_worker.stores import (
    ArchiveFile,
    Download,
    Misconfigured,
    Missing,
    StoreError,
    StoreOwner,
    StoreUnwritable,
    VerificationError,
)
from sync_worker.stores.s3 import S3Store

HTTP = HttpConfig(timeout_seconds=5, retries=1, retry_wait_seconds=1, retry_max_wait_seconds=5)
SMALL = b"small archive " * 1000
LARGE = bytes(range(256)) * (80 * 1024)  # 20 MiB: uploaded in parts


@pytest.fixture
def bucket(s3_server):
    made = SandboxBucket(s3_server)
    yield made
    made.discard()


def store_for(sandbox_bucket, tmp_path, **changes) -> S3Store:
    server = sandbox_bucket.server
    config = StorageConfig(
        backend="s3",
        archive_dir=tmp_path / "spool",
        bucket=sandbox_bucket.name,
        prefix="archives/",
        endpoint_url=server.url,
        region=server.region,
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
        retention_mode=server.retention_mode,
    )
    return S3Store(replace(config, **changes), HTTP)


class Host:
    """The storage host's side: serves ``data``, counting the downloads."""

    def __init__(self, data: bytes) -> None:
        self.data, self.opened = data, 0

    @contextmanager
    def fetch(self, offset):
        self.opened += 1
        yield Download(iter([self.data[offset:]]), resumed=True)


def target_of(data: bytes, archive_id: str = "a1") -> ArchiveFile:
    return ArchiveFile("c1", archive_id, hashlib.sha256(data).hexdigest(), len(data))


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["one put", "in parts"])
def test_an_archive_reaches_the_bucket_whole_with_its_record(bucket, tmp_path, data):
    store = store_for(bucket, tmp_path)
    saved = store.save(target_of(data), {"id": "a1"}, Host(data).fetch)
    assert saved.location == f"s3://{bucket.name}/archives/c1/a1.zip"
    assert (saved.size, saved.fetched, saved.recovered) == (len(data), len(data), False)
    assert bucket.read("archives/c1/a1.zip") == data
    assert json.loads(bucket.read("archives/c1/a1.json")) == {"id": "a1"}
    head = bucket.client().head_object(Bucket=bucket.name, Key="archives/c1/a1.zip")
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert bucket.incomplete_uploads() == []
    assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]  # spool emptied


def test_the_verified_file_is_shown_before_it_leaves_the_spool(bucket, tmp_path):
    seen = []
    store_for(bucket, tmp_path).save(
        target_of(SMALL),
        {},
        Host(SMALL).fetch,
        on_verified=lambda path: seen.append(path.read_bytes()),
    )
    assert seen == [SMALL]


def test_bytes_that_do_not_match_never_reach_the_bucket(bucket, tmp_path):
    with pytest.raises(VerificationError):
        store_for(bucket, tmp_path).save(
            ArchiveFile("c1", "a1", "0" * 64, len(SMALL)), {}, Host(SMALL).fetch
        )
    assert bucket.keys() == []
    assert (tmp_path / "spool" / ".quarantine" / "a1.zip").read_bytes() == SMALL


def test_an_archive_already_in_the_bucket_is_read_back_not_downloaded(bucket, tmp_path):
    store = store_for(bucket, tmp_path)
    store.save(target_of(SMALL), {}, Host(SMALL).fetch)  # a pass cut short after the upload
    seen, host = [], Host(SMALL)
    saved = store.save(target_of(SMALL), {"id": "a1"}, host.fetch, on_verified=seen.append)
    assert saved.recovered and host.opened == 0 and len(seen) == 1


def test_wrong_bytes_under_the_key_are_uploaded_over(bucket, tmp_path):
    bucket.client().put_object(Bucket=bucket.name, Key="archives/c1/a1.zip", Body=b"x" * len(SMALL))
    saved = store_for(bucket, tmp_path).save(target_of(SMALL), {}, Host(SMALL).fetch)
    assert not saved.recovered and bucket.read("archives/c1/a1.zip") == SMALL


def test_read_back_hashes_what_the_bucket_holds(bucket, tmp_path):
    store = store_for(bucket, tmp_path, read_back=True)
    store.save(target_of(LARGE), {}, Host(LARGE).fetch)
    assert b"".join(store.read(f"s3://{bucket.name}/archives/c1/a1.zip")) == LARGE


def test_uploads_left_by_a_pass_cut_short_are_aborted(bucket, tmp_path):
    client = bucket.client()
    client.create_multipart_upload(Bucket=bucket.name, Key="archives/c1/a1.zip")
    client.create_multipart_upload(Bucket=bucket.name, Key="elsewhere/x.zip")
    assert store_for(bucket, tmp_path).tidy() == ["archives/c1/a1.zip"]
    assert bucket.incomplete_uploads() == ["elsewhere/x.zip"]  # not under our prefix


def test_an_upload_of_sha256sums_is_left_to_the_audit_that_tidies_it(bucket, tmp_path):
    client = bucket.client()
    client.create_multipart_upload(Bucket=bucket.name, Key="archives/SHA256SUMS")
    store = store_for(bucket, tmp_path)
    assert store.tidy() == []  # an audit beside the archive job may be writing it
    assert bucket.incomplete_uploads() == ["archives/SHA256SUMS"]
    store.write_sums(["0" * 64 + "  c1/a1.zip\n"])
    assert bucket.incomplete_uploads() == []


LOCKED_FOR_GOOD = pytest.mark.moto_only("COMPLIANCE objects could never be removed there")


@pytest.mark.parametrize("mode", [pytest.param("COMPLIANCE", marks=LOCKED_FOR_GOOD), "GOVERNANCE"])
@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["one put", "in parts"])
def test_objects_are_locked_for_the_retention_asked(bucket, tmp_path, data, mode):
    store = store_for(bucket, tmp_path, retention_days=30, retention_mode=mode)
    store.save(target_of(data), {}, Host(data).fetch)
    client = bucket.client()
    for key in ("archives/c1/a1.zip", "archives/c1/a1.json"):
        head = client.head_object(Bucket=bucket.name, Key=key)
        assert head["ObjectLockMode"] == mode
        until = head["ObjectLockRetainUntilDate"]
        assert until > datetime.now(UTC) + timedelta(days=29)
        with pytest.raises(client.exceptions.ClientError, match="AccessDenied"):
            client.delete_object(Bucket=bucket.name, Key=key, VersionId=head["VersionId"])


def test_the_store_lists_and_reads_what_it_holds(bucket, tmp_path):
    store = store_for(bucket, tmp_path)
    store.save(target_of(SMALL, "a1"), {}, Host(SMALL).fetch)
    store.save(target_of(SMALL, "a2"), {}, Host(SMALL).fetch)
    assert list(store.archives()) == [
        f"s3://{bucket.name}/archives/c1/a1.zip",
        f"s3://{bucket.name}/archives/c1/a2.zip",
    ]
    with pytest.raises(Missing):
        b"".join(store.read(f"s3://{bucket.name}/archives/c1/nope.zip"))


def test_sha256sums_is_an_object_at_the_prefix_kept_without_retention(bucket, tmp_path):
    # rewritten after every pass: each version locked for years would pile up
    store = store_for(bucket, tmp_path, retention_days=30)
    store.write_sums(io.StringIO("ab  c1/a1.zip\n"))
    assert bucket.read("archives/SHA256SUMS") == b"ab  c1/a1.zip\n"
    head = bucket.client().head_object(Bucket=bucket.name, Key="archives/SHA256SUMS")
    assert "ObjectLockMode" not in head


def test_a_missing_bucket_is_a_store_error_that_says_so(bucket, tmp_path):
    store = store_for(bucket, tmp_path, bucket=f"{bucket.name}-gone")
    with pytest.raises(StoreError, match="NoSuchBucket"):
        store.tidy()
    with pytest.raises(StoreError, match="NoSuchBucket"):
        store.save(target_of(SMALL), {}, Host(SMALL).fetch)


class DenyingWrites(BaseHTTPRequestHandler):
    """An S3 endpoint whose policy lets this client read (nothing is there) but not write."""

    def do_HEAD(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        deny(self)

    def log_message(self, *_args):
        pass


def deny(handler: BaseHTTPRequestHandler) -> None:
    """Answer as S3 does a request its policy refuses."""
    body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
    handler.send_response(403)
    handler.send_header("Content-Type", "application/xml")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@contextmanager
def refusing_endpoint(handler: type[BaseHTTPRequestHandler], tmp_path, **storage):
    """A StorageConfig for an S3 endpoint on loopback that answers as ``handler`` does."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield StorageConfig(
            backend="s3",
            archive_dir=tmp_path / "spool",
            endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
            region=REGION,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SECRET_ACCESS_KEY,
            **storage,
        )
    finally:
        server.shutdown()
        server.server_close()


def test_a_bucket_denying_puts_is_unwritable_not_an_archive_failure(tmp_path):
    storage = {"bucket": "locked-down", "prefix": "archives/"}
    with (
        refusing_endpoint(DenyingWrites, tmp_path, **storage) as config,
        pytest.raises(StoreUnwritable) as refused,
    ):
        S3Store(config, HTTP).save(target_of(SMALL), {}, Host(SMALL).fetch)
    assert refused.value.path == "s3://locked-down/archives/"
    assert refused.value.errno_name == "AccessDenied"
    assert "s3://locked-down/archives/ cannot be written (AccessDenied" in str(refused.value)


class DenyingLockReads(BaseHTTPRequestHandler):
    """An S3 endpoint whose policy lacks s3:GetBucketObjectLockConfiguration."""

    def do_GET(self):
        deny(self)

    def log_message(self, *_args):
        pass


def test_a_lock_configuration_this_client_may_not_read_is_misconfigured(tmp_path):
    storage = {"bucket": "no-lock-reads", "retention_days": 1}
    with (
        refusing_endpoint(DenyingLockReads, tmp_path, **storage) as config,
        pytest.raises(Misconfigured) as refused,
    ):
        S3Store(config, HTTP).claim(StoreOwner.of("id", tmp_path / "state.db"))
    assert refused.value.bucket == "no-lock-reads"
    assert "grant s3:GetBucketObjectLockConfiguration" in str(refused.value)
    assert not (tmp_path / "spool").exists()  # nothing claimed, not even the spool


def test_a_bucket_without_object_lock_is_misconfigured_for_a_retention(s3_server, tmp_path):
    plain = SandboxBucket(s3_server, locked=False)
    store = store_for(plain, tmp_path, retention_days=1)
    for step in (lambda: store.claim(StoreOwner.of("id", tmp_path / "state.db")), store.probe):
        with pytest.raises(Misconfigured, match=f"s3 {plain.name}: the bucket has no Object Lock"):
            step()
    store_for(plain, tmp_path, retention_days=0).claim(StoreOwner.of("id", tmp_path / "state.db"))
    assert plain.keys() == ["archives/.owner"]  # without retention, the bucket serves
