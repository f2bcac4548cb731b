"""The S3 store against a real S3 server on loopback (moto): what reaches the bucket, and
when the store says it is safely there."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import threading
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sync_worker.adapters.stores import (
    ArchiveFile,
    Download,
    Misconfigured,
    Missing,
    StoreError,
    StoreOwner,
    StoreUnwritable,
    VerificationError,
)
from sync_worker.adapters.stores.s3 import S3Store
from sync_worker.config import HttpConfig, StorageConfig
from sync_worker.sandbox.bucket import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, SandboxBucket
from tests.store_driver import keep

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
    kept = keep(store, target_of(data), Host(data).fetch, {"id": "a1"})
    saved = kept.saved
    assert saved.location == f"s3://{bucket.name}/archives/c1/a1.zip"
    assert (saved.size, kept.fetched, saved.recovered) == (len(data), len(data), False)
    assert bucket.read("archives/c1/a1.zip") == data
    assert json.loads(bucket.read("archives/c1/a1.json")) == {"id": "a1"}
    head = bucket.client().head_object(Bucket=bucket.name, Key="archives/c1/a1.zip")
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert bucket.incomplete_uploads() == []
    assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]  # spool emptied


def test_the_verified_file_is_kept_in_the_spool_until_the_record_is_attached(bucket, tmp_path):
    store, target = store_for(bucket, tmp_path), target_of(SMALL)
    assert store.resume_from(target) == 0
    with Host(SMALL).fetch(0) as download:
        assert store.put(target, download) == len(SMALL)
    saved = store.confirm(target)
    assert bucket.read("archives/c1/a1.zip") == SMALL
    assert saved.local_copy is not None and saved.local_copy.read_bytes() == SMALL
    store.attach(target, b'{"id": "a1"}')
    assert not saved.local_copy.exists() and bucket.read("archives/c1/a1.json") == b'{"id": "a1"}'


def test_bytes_that_do_not_match_never_reach_the_bucket(bucket, tmp_path):
    with pytest.raises(VerificationError):
        wrong = ArchiveFile("c1", "a1", "0" * 64, len(SMALL))
        keep(store_for(bucket, tmp_path), wrong, Host(SMALL).fetch)
    assert bucket.keys() == []
    assert (tmp_path / "spool" / ".quarantine" / "a1.zip").read_bytes() == SMALL


def test_an_archive_already_in_the_bucket_is_read_back_not_downloaded(bucket, tmp_path):
    store = store_for(bucket, tmp_path)
    keep(store, target_of(SMALL), Host(SMALL).fetch)  # a pass cut short after the upload
    host = Host(SMALL)
    kept = keep(store, target_of(SMALL), host.fetch, {"id": "a1"})
    assert kept.saved.recovered and host.opened == 0 and kept.copy == SMALL
    assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]  # spool emptied


def test_wrong_bytes_under_the_key_are_uploaded_over(bucket, tmp_path):
    bucket.client().put_object(Bucket=bucket.name, Key="archives/c1/a1.zip", Body=b"x" * len(SMALL))
    saved = keep(store_for(bucket, tmp_path), target_of(SMALL), Host(SMALL).fetch).saved
    assert not saved.recovered and bucket.read("archives/c1/a1.zip") == SMALL


def test_read_back_hashes_what_the_bucket_holds(bucket, tmp_path):
    store = store_for(bucket, tmp_path, read_back=True)
    keep(store, target_of(LARGE), Host(LARGE).fetch)
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
    keep(store, target_of(data), Host(data).fetch)
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
    keep(store, target_of(SMALL, "a1"), Host(SMALL).fetch)
    keep(store, target_of(SMALL, "a2"), Host(SMALL).fetch)
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
        keep(store, target_of(SMALL), Host(SMALL).fetch)


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


def deny(handler: BaseHTTPRequestHandler, status=403, code="AccessDenied") -> None:
    """Answer as S3 does a request its policy refuses (or, with a 501, one it cannot do)."""
    body = f"<Error><Code>{code}</Code><Message>no</Message></Error>".encode()
    handler.send_response(status)
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
        keep(S3Store(config, HTTP), target_of(SMALL), Host(SMALL).fetch)
    assert refused.value.path == "s3://locked-down/archives/"
    assert refused.value.errno_name == "AccessDenied"
    assert "s3://locked-down/archives/ cannot be written (AccessDenied" in str(refused.value)


class DenyingLockReads(BaseHTTPRequestHandler):
    """An S3 endpoint whose policy lacks s3:GetBucketObjectLockConfiguration."""

    def do_GET(self):
        deny(self)

    def log_message(self, *_args):
        pass


class WithoutObjectLock(BaseHTTPRequestHandler):
    """An S3-compatible store that has no Object Lock at all (it answers NotImplemented)."""

    def do_GET(self):
        deny(self, 501, "NotImplemented")

    def log_message(self, *_args):
        pass


@pytest.mark.parametrize(
    ("handler", "fix"),
    [
        (DenyingLockReads, "grant s3:GetBucketObjectLockConfiguration"),
        (WithoutObjectLock, "Use a store with Object Lock"),
    ],
    ids=["the client may not read it", "the store has none"],
)
def test_a_lock_configuration_that_cannot_be_read_is_misconfigured(tmp_path, handler, fix):
    storage = {"bucket": "no-lock", "retention_days": 1}
    with (
        refusing_endpoint(handler, tmp_path, **storage) as config,
        pytest.raises(Misconfigured) as refused,
    ):
        S3Store(config, HTTP).claim(StoreOwner.of("id", str(tmp_path / "state.db")))
    assert refused.value.bucket == "no-lock"
    assert fix in str(refused.value) and "storage.retention_days = 0" in str(refused.value)
    assert not (tmp_path / "spool").exists()  # nothing claimed, not even the spool


def test_a_bucket_without_object_lock_is_misconfigured_for_a_retention(s3_server, tmp_path):
    plain = SandboxBucket(s3_server, locked=False)
    store = store_for(plain, tmp_path, retention_days=1)
    for step in (lambda: store.claim(StoreOwner.of("id", str(tmp_path / "state.db"))), store.probe):
        with pytest.raises(Misconfigured, match=f"s3 {plain.name}: the bucket has no Object Lock"):
            step()
    store_for(plain, tmp_path, retention_days=0).claim(
        StoreOwner.of("id", str(tmp_path / "state.db"))
    )
    assert plain.keys() == ["archives/.owner"]  # without retention, the bucket serves


# --- uploads in parts, several at a time ---------------------------------------------------

MIB = 1024 * 1024


def spread(size: int) -> bytes:
    """``size`` bytes that differ from part to part (a part sent in another's place shows)."""
    block = hashlib.sha256(str(size).encode()).digest() * (MIB // 32)
    return b"".join(block[n % 31 :] + block[: n % 31] for n in range(-(-size // MIB)))[:size]


@pytest.mark.parametrize(
    ("size", "concurrency"),
    [(16 * MIB + 1, 4), (24 * MIB, 2), (41 * MIB + 7, 2), (41 * MIB + 7, 1)],
    ids=["2 parts, the last of 1 byte", "3 whole parts", "6 parts, 2 at a time", "one at a time"],
)
def test_parts_sent_at_the_same_time_make_the_archive_whole(bucket, tmp_path, size, concurrency):
    data = spread(size)
    store = store_for(bucket, tmp_path, upload_concurrency=concurrency, read_back=True)
    saved = keep(store, target_of(data), Host(data).fetch).saved
    assert saved.size == size and bucket.read("archives/c1/a1.zip") == data
    head = bucket.client().head_object(Bucket=bucket.name, Key="archives/c1/a1.zip")
    assert head["ETag"].strip('"').endswith(f"-{-(-size // (8 * MIB))}")  # that many parts
    assert bucket.incomplete_uploads() == []


class Relay(BaseHTTPRequestHandler):
    """Between the store and the S3 server: passes every request on, but for what
    ``server.answer(method, path)`` answers itself; keeps the order things happened in."""

    protocol_version = "HTTP/1.1"  # so that boto3's Expect: 100-continue is answered

    def _relay(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.happened(f"{self.command} {self.path}")
        self.server.payloads.append(self.headers.get("x-amz-content-sha256"))
        status, headers, answer = self.server.answer(self.command, self.path) or self._pass(body)
        self.server.happened(f"answered {self.command} {self.path}")
        self.send_response(status)
        head = self.command == "HEAD"  # its Content-Length is the object's: kept
        dropped = ("transfer-encoding", "connection") + ("content-length",) * (not head)
        for name, value in headers:
            if name.lower() not in dropped:
                self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _pass(self, body):
        target = http.client.HTTPConnection(self.server.upstream, timeout=5)
        try:
            target.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in ("expect", "connection"):
                    target.putheader(name, value)
            target.endheaders(body)
            reply = target.getresponse()
            return reply.status, reply.getheaders(), reply.read()
        finally:
            target.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

    def log_message(self, *_args):
        pass


class RelayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, answer) -> None:
        super().__init__(("127.0.0.1", 0), Relay)
        self.upstream, self.answer = upstream, answer
        self.events: list[str] = []
        self.payloads: list[str | None] = []  # each request's x-amz-content-sha256
        self._lock = threading.Lock()

    def happened(self, event: str) -> None:
        with self._lock:
            self.events.append(event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def relay(bucket, answer):
    server = RelayServer(bucket.server.url.removeprefix("http://"), answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def refuse_part(number: int):
    """Answer the upload of part ``number`` with a 400, as a store that takes no more."""
    body = b"<Error><Code>InvalidRequest</Code><Message>part refused</Message></Error>"

    def answer(method, path):
        if method == "PUT" and f"partNumber={number}&" in path + "&":
            return 400, [("Content-Type", "application/xml")], body
        return None

    return answer


@pytest.mark.parametrize(
    ("concurrency", "refused"), [(4, 3), (1, 2)], ids=["4 at a time", "one at a time"]
)
def test_a_part_refused_mid_upload_aborts_it_after_the_parts_in_flight(
    bucket, tmp_path, concurrency, refused
):
    data = spread(48 * MIB)  # 6 parts
    with relay(bucket, refuse_part(refused)) as server:
        store = store_for(bucket, tmp_path, endpoint_url=server.url, upload_concurrency=concurrency)
        with pytest.raises(StoreError, match="InvalidRequest: part refused"):
            keep(store, target_of(data), Host(data).fetch)
    assert bucket.incomplete_uploads() == []
    assert bucket.keys() == []  # nothing stored, not even the record
    aborted = next(n for n, e in enumerate(server.events) if e.startswith("DELETE "))
    parts = [n for n, e in enumerate(server.events) if "partNumber=" in e]
    assert parts and max(parts) < aborted  # every part in flight was done with before
    if concurrency == 1:  # the failure is known before the next part could go
        assert not [e for e in server.events if f"partNumber={refused + 1}&" in e + "&"]
    spooled = tmp_path / "spool" / "c1" / "a1.zip"
    assert spooled.read_bytes() == data  # the verified copy stays for the next try


def test_parts_are_in_flight_at_the_same_time(bucket, tmp_path):
    # Each part's upload waits (boundedly) until another is in flight beside it.
    together = threading.Barrier(2)
    met = []

    def answer(method, path):
        if method == "PUT" and "partNumber=" in path:
            try:
                together.wait(timeout=30)  # only a part sent alone waits it out
                met.append(path)
            except threading.BrokenBarrierError:
                together.reset()
        return None

    data = spread(32 * MIB)
    with relay(bucket, answer) as server:
        store = store_for(bucket, tmp_path, endpoint_url=server.url, upload_concurrency=2)
        keep(store, target_of(data), Host(data).fetch)
    assert len(met) == 4 and bucket.read("archives/c1/a1.zip") == data


def test_bodies_are_not_hashed_again_for_the_signature_on_plain_http(bucket, tmp_path):
    # Each carries its SHA-256 in a signed header, as on https, where boto3 signs no payload.
    data = spread(16 * MIB + 1)
    with relay(bucket, lambda _method, _path: None) as server:
        store = store_for(bucket, tmp_path, endpoint_url=server.url)
        keep(store, target_of(data), Host(data).fetch)
    assert set(server.payloads) == {"UNSIGNED-PAYLOAD"}


def test_a_spool_file_changed_while_its_parts_go_is_not_taken_as_stored(bucket, tmp_path):
    # Part 2's first attempt is answered 500 after its bytes were sent, and the file is
    # changed there before boto3 sends it again: what goes out the second time is not
    # what was verified (moto takes it: the store's own check is not relied on).
    data = spread(24 * MIB)
    spooled = tmp_path / "spool" / "c1" / "a1.zip"
    tries = []

    def answer(method, path):
        if method == "PUT" and "partNumber=2&" in path + "&" and not tries:
            tries.append(path)
            with spooled.open("r+b") as handle:
                handle.seek(9 * MIB)
                handle.write(b"tampered")
            return (
                500,
                [("Content-Type", "application/xml")],
                b"<Error><Code>InternalError</Code></Error>",
            )
        return None

    with relay(bucket, answer) as server:
        store = store_for(bucket, tmp_path, endpoint_url=server.url, upload_concurrency=2)
        with pytest.raises(VerificationError, match="changed after it was verified"):
            keep(store, target_of(data), Host(data).fetch)
    assert tries and bucket.incomplete_uploads() == [] and bucket.keys() == []
