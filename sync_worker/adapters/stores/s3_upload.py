"""Sending a verified spool file to a bucket, so that what went out is what was verified.

Up to SINGLE_PUT_LIMIT in one PUT, else in parts of PART_SIZE or more (at most MAX_PARTS),
``concurrency`` at a time, each read from the file as it is sent (never held in memory) and
sent with its SHA-256, which a store that checks checksums (AWS, MinIO) verifies on
arrival. Each part's SHA-256 is the one the spool's verifying read gave when it cut the
file as the upload does; else it is read here, once, in order, with the whole file's
(which must then be the verified one). Every body is hashed again as it is sent, and what
went out must hash as verified: a spool file changed meanwhile is never taken as stored.
Any failure aborts a multipart upload, after the parts in flight.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sync_worker.adapters.stores import VerificationError
from sync_worker.adapters.stores.local import CHUNK_SIZE

SINGLE_PUT_LIMIT = 16 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000  # S3's limit


class Uploader:
    """Uploads to ``bucket`` through the boto3 ``client``, ``concurrency`` parts at a time."""

    def __init__(self, client: Any, bucket: str, concurrency: int) -> None:
        self._client, self._bucket, self._concurrency = client, bucket, concurrency

    def upload(
        self,
        path: Path,
        key: str,
        sha256: str,
        size: int,
        parts: tuple[bytes, ...] = (),
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Send the file at ``path`` (``size`` bytes, verified to hash to ``sha256``) to
        ``key``, with the ``extra`` arguments (Object Lock) on the object; returns the
        checksum HEAD should show of it: the file's SHA-256, or for parts the SHA-256 of
        their SHA-256s (``parts``, from the read that verified the file, if it gave them)."""
        extra = extra or {}
        if size > SINGLE_PUT_LIMIT:
            return self._upload_parts(path, key, sha256, size, extra, parts)
        with path.open("rb") as handle:
            body = _Part(handle, 0, size)
            self._client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=body,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=b64(bytes.fromhex(sha256)),
                Metadata={"sha256": sha256},
                **extra,
            )
        _sent_as_verified(body.sent_sha256(), bytes.fromhex(sha256), path, key)
        return b64(bytes.fromhex(sha256))

    def _upload_parts(
        self,
        path: Path,
        key: str,
        sha256: str,
        size: int,
        extra: dict[str, Any],
        parts: tuple[bytes, ...],
    ) -> str:
        """A multipart upload; returns the checksum of its checksums. Any failure (of any
        part) aborts it."""
        upload = self._client.create_multipart_upload(
            Bucket=self._bucket,
            Key=key,
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": sha256},
            **extra,
        )
        target = _Target(path, key, upload["UploadId"])
        try:
            sent, whole = self._send_parts(target, size, parts)
            if whole is not None:  # the parts' SHA-256s were read here: of the verified file?
                _sent_as_verified(whole, bytes.fromhex(sha256), path, key)
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=key,
                UploadId=target.upload_id,
                MultipartUpload={"Parts": [part.entry() for part in sent]},
            )
        except BaseException:
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=key, UploadId=target.upload_id
            )
            raise
        return b64(hashlib.sha256(b"".join(part.digest for part in sent)).digest())

    def _send_parts(
        self, target: _Target, size: int, known: tuple[bytes, ...]
    ) -> tuple[list[_Sent], bytes | None]:
        """Send the file's parts; returns them in order, and the SHA-256 of the whole file
        if it was read here (None: the parts' SHA-256s are ``known``).

        Each part is handed to one of ``concurrency`` threads, which sends it from a handle
        of its own and checks that what it sent hashes as the part's SHA-256. At most
        ``concurrency`` parts are in flight. Once a part has failed no further part is
        sent; those in flight are waited for, then the failure is raised."""
        part_size = part_size_for(size)
        offsets = range(0, size, part_size)
        whole = None if len(known) == len(offsets) else hashlib.sha256()
        sending: set[Future[_Sent]] = set()
        sent: list[_Sent] = []
        with (
            ThreadPoolExecutor(self._concurrency, thread_name_prefix="s3-part") as pool,
            target.path.open("rb") as handle,
        ):
            try:
                for number, offset in enumerate(offsets, start=1):
                    length = min(part_size, size - offset)
                    digest = (
                        known[number - 1]
                        if whole is None
                        else _Part(handle, offset, length).sha256(whole)
                    )
                    span = _Sent(number, offset, length, digest)
                    full = len(sending) >= self._concurrency  # then wait for a free place
                    done, sending = wait(sending, 0 if not full else None, FIRST_COMPLETED)
                    sent += [future.result() for future in done]
                    sending.add(pool.submit(self._send_part, target, span))
                sent += [future.result() for future in wait(sending).done]
            except BaseException:
                for future in sending:
                    future.cancel()
                wait(sending)
                raise
        return sorted(sent, key=lambda part: part.number), whole and whole.digest()

    def _send_part(self, target: _Target, span: _Sent) -> _Sent:
        """Send one part, read from a handle of its own; it comes back with its ETag once
        what went out is known to hash as ``span.digest``."""
        with target.path.open("rb") as handle:
            part = _Part(handle, span.offset, span.length)
            answer = self._client.upload_part(
                Bucket=self._bucket,
                Key=target.key,
                UploadId=target.upload_id,
                PartNumber=span.number,
                Body=part,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=b64(span.digest),
            )
        _sent_as_verified(part.sent_sha256(), span.digest, target.path, target.key)
        return dataclasses.replace(span, etag=answer["ETag"])


def part_size_for(size: int) -> int:
    """How long each part of an upload of ``size`` bytes is (the last one may be shorter)."""
    return max(PART_SIZE, -(-size // MAX_PARTS))


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class _Target:
    """Where a multipart upload goes: the spool file it is read from, its key, its id."""

    path: Path
    key: str
    upload_id: str


@dataclass(frozen=True)
class _Sent:
    """One part of a multipart upload: where it lies in the file, the SHA-256 of what was
    read there, and once the store has it, its ETag."""

    number: int
    offset: int
    length: int
    digest: bytes
    etag: str = ""

    def entry(self) -> dict[str, Any]:
        """The part as CompleteMultipartUpload lists it."""
        return {"PartNumber": self.number, "ETag": self.etag, "ChecksumSHA256": b64(self.digest)}


class _Part:
    """``length`` bytes of an open file from ``offset``, as a file of their own that botocore
    can read, measure and rewind (to sign, send and resend a part) without the part ever
    being held in memory.

    Each pass read from the start is hashed: :meth:`sent_sha256` is the hash of the last
    whole pass, which is what went out (botocore reads a body again from its start for
    each attempt), so that what was sent is checked against what was verified."""

    def __init__(self, handle: BinaryIO, offset: int, length: int) -> None:
        self._handle, self._offset, self._length = handle, offset, length
        self._position = 0
        self._pass, self._passed = hashlib.sha256(), 0
        self._last_pass = self._pass.digest() if length == 0 else None

    def sha256(self, whole: Any = None) -> bytes:
        """The part's SHA-256, read from the file (also fed to ``whole``, the file's)."""
        digest = hashlib.sha256()
        while chunk := self.read(CHUNK_SIZE):
            digest.update(chunk)
            if whole is not None:
                whole.update(chunk)
        self.seek(0)
        return digest.digest()

    def sent_sha256(self) -> bytes | None:
        """The SHA-256 of the last pass read whole from the start; None if there was none."""
        return self._last_pass

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._position
        wanted = left if size is None or size < 0 else min(size, left)
        self._handle.seek(self._offset + self._position)
        data = self._handle.read(wanted)
        if self._position == self._passed:  # read on from where this pass has got to
            self._pass.update(data)
            self._passed += len(data)
            if data and self._passed == self._length:
                self._last_pass = self._pass.digest()
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = min(max(base + offset, 0), self._length)
        if self._position == 0:  # a new pass
            self._pass, self._passed = hashlib.sha256(), 0
        return self._position

    def tell(self) -> int:
        return self._position

    def __len__(self) -> int:
        return self._length


def _sent_as_verified(sent: bytes | None, verified: bytes, path: Path, key: str) -> None:
    """VerificationError unless the bytes sent from the spool file hash as those verified."""
    if sent != verified:
        raise VerificationError(
            f"{path} changed after it was verified: what was sent to {key} is not the "
            "verified archive, and is not taken as stored"
        )
