"""Sending a verified spool file to a bucket (moto, on loopback): the parts' SHA-256s from
the verifying read, or read again, and never a file that changed since."""

from __future__ import annotations

import hashlib

import pytest

from sync_worker.adapters.stores import VerificationError
from sync_worker.adapters.stores.s3_upload import Uploader
from sync_worker.sandbox.bucket import SandboxBucket

MIB = 1024 * 1024
DATA = bytes(range(251)) * (2 * 8 * MIB // 251 + 1)  # three parts: 8 MiB, 8 MiB, 126 bytes
KEY = "archives/c1/a1.zip"


@pytest.fixture
def bucket(s3_server):
    made = SandboxBucket(s3_server)
    yield made
    made.discard()


@pytest.fixture
def spooled(tmp_path):
    path = tmp_path / "a1.zip"
    path.write_bytes(DATA)
    return path


def test_parts_the_spool_did_not_cut_as_the_upload_does_are_read_again(bucket, spooled):
    cut_otherwise = (hashlib.sha256(DATA).digest(),)  # one part: not this upload's three
    uploader = Uploader(bucket.client(), bucket.name, concurrency=2)
    sha256 = hashlib.sha256(DATA).hexdigest()
    expected = uploader.upload(spooled, KEY, sha256, len(DATA), cut_otherwise)
    assert bucket.read(KEY) == DATA
    head = bucket.client().head_object(Bucket=bucket.name, Key=KEY, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"].split("-")[0] == expected


def test_a_parts_sha256_the_file_does_not_match_is_not_taken_as_stored(bucket, spooled):
    wrong = tuple(hashlib.sha256(bytes([n])).digest() for n in range(3))  # the right count
    uploader = Uploader(bucket.client(), bucket.name, concurrency=2)
    with pytest.raises(VerificationError, match="changed after it was verified"):
        uploader.upload(spooled, KEY, hashlib.sha256(DATA).hexdigest(), len(DATA), wrong)
    assert bucket.incomplete_uploads() == [] and bucket.keys() == []
