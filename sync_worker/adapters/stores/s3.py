"""Archives in a bucket of S3 or an S3-compatible store (MinIO, Ceph...), through boto3.

Keys: ``{prefix}{conference_id}/{archive_id}.zip`` and ``.json`` beside it,
``{prefix}SHA256SUMS``, and ``{prefix}.owner``, naming the state file the bucket and prefix
belong to (as ``.owner`` does in a local folder: see :meth:`S3Store.claim`). A download
passes through a local spool (a LocalStore in ``archive_dir``, claimed too), where it is
resumed, fsynced, read back and verified as for the local store; only then is it uploaded,
with the SHA-256s of what was read from disk, so that the bucket holds what was verified:

- sent by :mod:`sync_worker.adapters.stores.s3_upload` (in one PUT or in parts,
  ``upload_concurrency`` at a time, each with its SHA-256; what was sent must hash as the
  verifying read did), with Object Lock headers when ``retention_days`` is set;
- then confirmed (:meth:`S3Store.confirm`): HEAD must show the size and the checksum (the
  SHA-256 of the file, or for parts the SHA-256 of their SHA-256s); a store that shows no
  checksum, or ``read_back``, has the object read back and hashed; a retention the store
  did not apply is applied. :meth:`S3Store.attach` puts the record beside it; only then is
  the spool copy removed (and the archive, later, abandoned).

A pass cut short mid-upload leaves an incomplete multipart upload: :meth:`S3Store.tidy`,
run at the start of every archive pass (which holds the job's lock, so no upload of ours
is under way), aborts all those under the prefix. An object found already in place (an
upload whose pass was cut short before its checkpoint) is read back and hashed before it
is trusted.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ProxyConnectionError,
    SSLError,
)

from sync_worker.adapters.http import cause_of
from sync_worker.adapters.stores import (
    SUMS_NAME,
    ArchiveFile,
    Download,
    Misconfigured,
    Missing,
    Saved,
    StoreError,
    StoreOwner,
    StoreUnreachable,
    StoreUnwritable,
    StoreWarning,
    VerificationError,
)
from sync_worker.adapters.stores.local import CHUNK_SIZE, OWNER, LocalStore, check_owner
from sync_worker.adapters.stores.s3_upload import Uploader, b64, part_size_for
from sync_worker.config import HttpConfig, StorageConfig
from sync_worker.core.network import Route
from sync_worker.core.private_files import make_private_dirs

NOT_FOUND = ("404", "NoSuchKey", "NotFound")
# The bucket refuses this client's writes (a HEAD's refusal has no body: only its status).
DENIED = ("403", "AccessDenied", "AllAccessDisabled")
# A conditional write (If-None-Match: *) that lost to another: the marker exists.
PRECONDITION_FAILED = ("412", "PreconditionFailed", "ConditionalRequestConflict")
NOT_IMPLEMENTED = ("501", "NotImplemented")
POOL_CONNECTIONS = 10  # botocore's default: enough for a HEAD or a GET beside the uploads


class S3Store:
    appends_sums = False

    def __init__(
        self,
        config: StorageConfig,
        http: HttpConfig,
        client: Any = None,
        route: Route | None = None,
        saves_at_once: int = 1,
    ) -> None:
        """``saves_at_once``: how many archives may be saved at the same time, each with
        ``upload_concurrency`` parts in flight (the client keeps a connection for each)."""
        self._config = config
        self._bucket = config.bucket
        self._prefix = config.prefix
        self._spool = LocalStore(config.archive_dir, keep_sums=False, part_size=part_size_for)
        connections = max(POOL_CONNECTIONS, saves_at_once * config.upload_concurrency + 1)
        self._client = client or client_for(config, http, route or Route(), connections)
        self._uploader = Uploader(self._client, self._bucket, config.upload_concurrency)

    # --- Store ----------------------------------------------------------------------------

    def find(self, target: ArchiveFile) -> Saved | None:
        """The archive if the bucket holds it already: to be sure, read back (into the
        spool, where it is verified as a download is, and kept for ``local_copy``)."""
        key = self._key(target)
        with _store_errors(self._bucket, self._prefix):
            try:
                head = self._client.head_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in NOT_FOUND:
                    return None
                raise
            size = head["ContentLength"]
            if not _could_be(size, target):
                return None
            self._spool.put(target, Download(self.read(self._location(key)), resumed=False))
            try:
                copy = self._spool.confirm(target)
            except VerificationError:
                return None  # uploaded again over it (a versioned bucket keeps both)
            self._keep_locked(key, head)
        location = self._location(key)
        return Saved(location, copy.sha256, size, recovered=True, local_copy=copy.local_copy)

    def resume_from(self, target: ArchiveFile) -> int | None:
        """As the spool's; None also when the spool holds the archive verified already (a
        pass cut short before it was uploaded)."""
        if self._spool.find(target) is not None:
            return None
        return self._spool.resume_from(target)

    def put(self, target: ArchiveFile, download: Download) -> int:
        return self._spool.put(target, download)

    def confirm(self, target: ArchiveFile) -> Saved:
        """Verify the spool's copy, upload it and make sure the bucket holds exactly it."""
        staged = self._spool.find(target) or self._spool.confirm(target)
        key = self._key(target)
        with _store_errors(self._bucket, self._prefix):
            self._upload(staged, key)
        return Saved(self._location(key), staged.sha256, staged.size, local_copy=staged.local_copy)

    def attach(self, target: ArchiveFile, record: bytes) -> None:
        """The record beside the archive (locked as it is); then the spool's copies, whole
        or partial, can go."""
        with _store_errors(self._bucket, self._prefix):
            self._put_record(self._key(target), record)
        self._spool.remove(target)
        self._spool.forget(target)

    def forget(self, target: ArchiveFile) -> None:
        self._spool.forget(target)

    def tidy(self) -> list[str]:
        """Abort every incomplete multipart upload of an archive under the prefix (not that
        of SHA256SUMS, which the audit may be writing: the audit tidies its own)."""
        with _store_errors(self._bucket):
            return self._abort_incomplete_uploads(self._prefix, but=self._sums_key)

    def _abort_incomplete_uploads(self, prefix: str, but: str = "") -> list[str]:
        aborted = []
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self._bucket, Prefix=prefix
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Key"] == but:
                    continue
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted.append(upload["Key"])
        return aborted

    def read(self, location: str) -> Iterator[bytes]:
        key = location.removeprefix(f"s3://{self._bucket}/")
        with _store_errors(self._bucket):
            try:
                body = self._client.get_object(Bucket=self._bucket, Key=key)["Body"]
            except ClientError as exc:
                if _code(exc) in NOT_FOUND:
                    raise Missing(f"{location} is not there") from None
                raise
            with body:
                yield from body.iter_chunks(CHUNK_SIZE)

    def archives(self) -> Iterator[str]:
        with _store_errors(self._bucket):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=self._prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    if item["Key"].endswith(".zip"):
                        yield self._location(item["Key"])

    def write_sums(self, lines: Iterable[str]) -> None:
        """Written to a temporary file first (it may be long), then uploaded without
        retention: it is rewritten often, and every version kept under a lock would be kept
        for years."""
        make_private_dirs(self._spool.root)
        # Hidden, as every name the worker keeps at the spool's root but SHA256SUMS.
        with tempfile.NamedTemporaryFile("w+b", dir=self._spool.root, prefix=".") as temp:
            digest = hashlib.sha256()
            for line in lines:
                data = line.encode()
                temp.write(data)
                digest.update(data)
            temp.flush()
            size = temp.tell()
            with _store_errors(self._bucket):
                self._abort_incomplete_uploads(self._sums_key)  # an audit's cut short
                sums = Saved(temp.name, digest.hexdigest(), size)
                self._upload(sums, self._sums_key, retain=False)

    @property
    def _sums_key(self) -> str:
        return self._prefix + SUMS_NAME

    def probe(self) -> str:
        """Also StoreWarning when the bucket locks objects only as each upload asks: see
        :func:`_without_default_retention`."""
        spooled = self._spool.probe()
        with _store_errors(self._bucket):
            self._client.head_bucket(Bucket=self._bucket)
            lock = self._check_retention()
        locked = f", Object Lock for {self._config.retention_days} days" * bool(
            self._config.retention_days
        )
        found = f"bucket {self._bucket} reachable{locked}; spool {spooled}"
        if self._config.retention_days and "DefaultRetention" not in lock.get("Rule", {}):
            raise StoreWarning(f"{found}; but {_without_default_retention(self._bucket)}")
        return found

    def _check_retention(self) -> dict[str, Any]:
        """Misconfigured unless the bucket can hold objects for ``retention_days`` (its
        Object Lock is enabled); its Object Lock configuration ({} without retention)."""
        days = self._config.retention_days
        if not days:
            return {}
        lock = self._object_lock(days)
        if lock.get("ObjectLockEnabled") != "Enabled":
            raise Misconfigured(
                self._bucket,
                f"s3 {self._bucket}: the bucket has no Object Lock, and storage.retention_days "
                f"= {days} asks for it: no archive can be locked there, so none is downloaded. "
                "Create a bucket with Object Lock enabled and set storage.bucket to it, or set "
                "storage.retention_days = 0 to keep archives without retention",
            )
        return lock

    def claim(self, owner: StoreOwner) -> None:
        """The spool, then the bucket's prefix: the first claim writes ``{prefix}.owner``
        only if it is not there (If-None-Match, where the store honours it), then reads back
        which state file it names; another's is ForeignOwner."""
        with _store_errors(self._bucket):
            self._check_retention()  # before anything is written, here or in the spool
        self._spool.claim(owner)
        key = self._prefix + OWNER
        with _store_errors(self._bucket):
            recorded = self._owner_marker(key)
            if recorded is None:
                self._put_owner_marker(key, owner.as_text().encode())
                recorded = self._owner_marker(key) or owner
            elif recorded != owner and recorded.same_as(owner):
                self._put_owner_marker(key, owner.as_text().encode(), replace=True)
                recorded = owner
        where = self._location(key)
        check_owner(recorded, owner, self._location(self._prefix), where)

    def _put_owner_marker(self, key: str, body: bytes, replace: bool = False) -> None:
        """Write the marker unless one is there (a store without conditional writes, which
        answers NotImplemented, writes it anyway: the read back then tells who won); with
        ``replace``, over the one there (the same owner, as it is now)."""
        put = functools.partial(
            self._client.put_object,
            Bucket=self._bucket,
            Key=key,
            Body=body,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=b64(hashlib.sha256(body).digest()),
            ContentType="application/json",
        )
        if replace:
            put()
            return
        try:
            put(IfNoneMatch="*")
        except ClientError as exc:
            if _code(exc) in NOT_IMPLEMENTED:
                put()
            elif _code(exc) not in PRECONDITION_FAILED:
                raise

    def _owner_marker(self, key: str) -> StoreOwner | None:
        try:
            body = self._client.get_object(Bucket=self._bucket, Key=key)["Body"]
        except ClientError as exc:
            if _code(exc) in NOT_FOUND:
                return None
            raise
        with body:
            text = body.read().decode("utf-8", "replace")
        return StoreOwner.from_text(text, self._location(key))

    def _object_lock(self, days: int) -> dict[str, Any]:
        """The bucket's Object Lock configuration; {} when it has none; Misconfigured when
        this client may not read it, or the store has no Object Lock at all (``days``: the
        retention that needs it)."""
        try:
            lock = self._client.get_object_lock_configuration(Bucket=self._bucket)
        except ClientError as exc:
            if _code(exc) == "ObjectLockConfigurationNotFoundError":  # S3's answer for "none"
                return {}
            if _code(exc) in DENIED:
                raise Misconfigured(
                    self._bucket,
                    f"s3 {self._bucket}: the bucket's Object Lock configuration cannot be read "
                    f"({_code(exc)}), and storage.retention_days = {days} needs it: grant "
                    "s3:GetBucketObjectLockConfiguration, or set storage.retention_days = 0",
                ) from None
            if _code(exc) in NOT_IMPLEMENTED:
                raise Misconfigured(
                    self._bucket,
                    f"s3 {self._bucket}: the store has no Object Lock (it answers "
                    f"{_code(exc)}), and storage.retention_days = {days} asks for it: no "
                    "archive can be locked there, so none is downloaded. Use a store with "
                    "Object Lock, or set storage.retention_days = 0",
                ) from None
            raise
        return lock.get("ObjectLockConfiguration", {})

    # --- uploads --------------------------------------------------------------------------

    def _upload(self, verified: Saved, key: str, retain: bool = True) -> None:
        """Upload the local file ``verified`` and make sure the bucket holds exactly it
        (locked for ``retention_days`` when ``retain``)."""
        lock = self._lock() if retain else {}
        path, sha256, size = Path(verified.location), verified.sha256, verified.size
        expected = self._uploader.upload(path, key, sha256, size, verified.parts, lock)
        head = self._confirm(key, sha256, size, expected)
        if retain:
            self._keep_locked(key, head)

    def _confirm(self, key: str, sha256: str, size: int, expected_checksum: str) -> dict[str, Any]:
        """Make sure the bucket holds the object whole and with the right bytes; returns
        what HEAD showed of it."""
        head = self._client.head_object(Bucket=self._bucket, Key=key, ChecksumMode="ENABLED")
        if head["ContentLength"] != size:
            raise VerificationError(
                f"the bucket holds {head['ContentLength']} bytes at {key}, not {size}"
            )
        shown = head.get("ChecksumSHA256")
        if shown is not None and shown.split("-")[0] != expected_checksum:
            raise VerificationError(f"the bucket's checksum of {key} is not the archive's")
        if shown is None or self._config.read_back:
            self._read_back(key, sha256)
        return head

    def _read_back(self, key: str, sha256: str) -> None:
        digest = hashlib.sha256()
        for chunk in self.read(self._location(key)):
            digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise VerificationError(f"the bucket's copy of {key} does not hash to {sha256}")

    def _keep_locked(self, key: str, head: dict[str, Any]) -> None:
        """Apply the retention asked for if the store did not (some do not on uploads in
        parts); an object already locked longer is left as it is."""
        wanted = self._retain_until()
        if wanted is None:
            return
        until = head.get("ObjectLockRetainUntilDate")
        if until is not None and until >= wanted - timedelta(days=1):
            return
        self._client.put_object_retention(
            Bucket=self._bucket,
            Key=key,
            VersionId=head.get("VersionId"),
            Retention={"Mode": self._config.retention_mode, "RetainUntilDate": wanted},
            ChecksumAlgorithm="SHA256",
        )

    def _put_record(self, key: str, record: bytes) -> None:
        self._client.put_object(
            Bucket=self._bucket,
            Key=key.removesuffix(".zip") + ".json",
            Body=record,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=b64(hashlib.sha256(record).digest()),
            ContentType="application/json",
            **self._lock(),
        )

    # --- helpers --------------------------------------------------------------------------

    def _lock(self) -> dict[str, Any]:
        until = self._retain_until()
        if until is None:
            return {}
        return {"ObjectLockMode": self._config.retention_mode, "ObjectLockRetainUntilDate": until}

    def _retain_until(self) -> datetime | None:
        days = self._config.retention_days
        return datetime.now(UTC) + timedelta(days=days) if days else None

    def _key(self, target: ArchiveFile) -> str:
        return f"{self._prefix}{target.conference_id}/{target.archive_id}.zip"

    def _location(self, key: str) -> str:
        return f"s3://{self._bucket}/{key}"


@functools.lru_cache(maxsize=4)
def client_for(config: StorageConfig, http: HttpConfig, route: Route, connections: int) -> Any:
    """A boto3 S3 client: the configured keys, else the standard AWS chain; through the
    ``route``'s proxy (https only, tunnelled), verifying with its CA bundle; keeping up to
    ``connections`` open (one per part in flight: past it, urllib3 would open and drop
    one per request). One per configuration and process (clients are thread-safe; making
    one loads boto3's models, a fifth of a second)."""
    import boto3  # only when the bucket is used: it costs 20 MiB and a fraction of a second
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=config.access_key_id or None,
        aws_secret_access_key=config.secret_access_key or None,
        region_name=config.region or None,
    )
    settings = Config(
        connect_timeout=http.timeout_seconds,
        read_timeout=http.timeout_seconds,
        retries={"mode": "standard", "max_attempts": http.retries + 1},
        # The worker sends and checks its own SHA-256s; no second checksum on every call.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        proxies={"https": proxy} if (proxy := route.proxy_url()) else None,
        max_pool_connections=connections,
        # Archives and records go with their SHA-256 in a header the signature covers: on
        # https boto3 then signs no payload; on plain http (loopback only) it would hash
        # each body once more, in a pass of its own (as boto3's upload_file does not).
        s3={"payload_signing_enabled": False} if _plain_http(config.endpoint_url) else None,
    )
    return session.client(
        "s3", endpoint_url=config.endpoint_url or None, config=settings, verify=route.verify
    )


def _could_be(size: int, target: ArchiveFile) -> bool:
    """Whether an object of ``size`` bytes could be the archive ``target``."""
    if target.size is not None:
        return size == target.size
    return target.limit is None or size <= target.limit


def _plain_http(endpoint_url: str) -> bool:
    return urlsplit(endpoint_url).scheme == "http"


@contextmanager
def _store_errors(bucket: str, writing_to: str | None = None) -> Iterator[None]:
    """boto3's failures as StoreError, saying which bucket and what the store answered;
    while ``writing_to`` a prefix, an AccessDenied is StoreUnwritable (no archive could be
    stored there); a store that cannot be reached at all is StoreUnreachable."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if writing_to is not None and error.get("Code") in DENIED:
            where = f"s3://{bucket}/{writing_to}"
            raise StoreUnwritable(where, str(error["Code"]), str(error.get("Message"))) from None
        raise StoreError(f"s3 {bucket}: {error.get('Code')}: {error.get('Message')}") from None
    except (SSLError, EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError) as exc:
        raise StoreUnreachable(f"s3://{bucket}/", _connection_failure(bucket, exc)) from None
    except BotoCoreError as exc:
        raise StoreError(f"s3 {bucket}: {type(exc).__name__}: {exc}") from None


def _without_default_retention(bucket: str) -> str:
    """Why a bucket with Object Lock but no default retention leaves a window open."""
    return (
        f"the bucket {bucket} has no default retention (Object Lock Rule.DefaultRetention): "
        "a store that ignores the lock headers of an upload in parts (Ceph RGW does) leaves "
        "a large archive unlocked between CompleteMultipartUpload and the "
        "PutObjectRetention that follows; a default retention of the bucket (a day is "
        "enough: each archive is locked for storage.retention_days itself) closes that window"
    )


def _connection_failure(bucket: str, exc: BotoCoreError) -> str:
    """``s3 HOST (bucket B): cause``, as the API clients say it (botocore gives the proxy's
    URL masked; its credentials are masked in logs anyway)."""
    details = getattr(exc, "kwargs", {})
    host = urlsplit(details.get("endpoint_url", "")).netloc
    proxy = urlsplit(details.get("proxy_url", ""))
    where = f"{proxy.hostname}:{proxy.port}" if proxy.hostname else ""
    error = details.get("error")
    cause = cause_of(error, where) if isinstance(error, BaseException) else str(exc)
    return f"s3 {host} (bucket {bucket}): {cause}" if host else f"s3 {bucket}: {cause}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
