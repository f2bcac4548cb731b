"""The local archive folder: durable, verified writes of archive files.

Layout under ``archive_dir``::

    {conference_id}/{archive_id}.zip      the archive, exactly the bytes Flexperto hashed
    {conference_id}/{archive_id}.json     the archive record as Flexperto sent it
    {conference_id}/.{archive_id}.zip.part  a download in progress (resumable)
    .quarantine/{archive_id}.zip          the latest copy that failed verification

A file only ever appears under its final name complete, fsynced and verified: bytes go to
the ``.part`` file, are hashed on the way, fsynced, checked, and then renamed atomically;
the folder is fsynced after the rename. Folders are 0700 and files 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sync_worker.private_files import fsync_dir, make_private_dirs

CHUNK_SIZE = 1024 * 1024
QUARANTINE = ".quarantine"


class VerificationError(Exception):
    """The downloaded bytes are not the archive Flexperto described."""


@dataclass(frozen=True)
class StoredFile:
    path: Path
    sha256: str
    size: int


class ArchiveStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def final_path(self, conference_id: str, archive_id: str) -> Path:
        return self.root / conference_id / f"{archive_id}.zip"

    def part_path(self, conference_id: str, archive_id: str) -> Path:
        return self.root / conference_id / f".{archive_id}.zip.part"

    def find_verified(self, conference_id: str, archive_id: str, sha256: str) -> StoredFile | None:
        """The final file if it exists with the expected hash (left by an interrupted pass)."""
        path = self.final_path(conference_id, archive_id)
        if not path.is_file():
            return None
        digest, size = hash_file(path)
        if digest == sha256:
            return StoredFile(path, digest, size)
        self.quarantine(path, archive_id)
        return None

    def partial_size(self, conference_id: str, archive_id: str) -> int:
        path = self.part_path(conference_id, archive_id)
        return path.stat().st_size if path.is_file() else 0

    def discard_partial(self, conference_id: str, archive_id: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.part_path(conference_id, archive_id).unlink()

    def write_partial(
        self, conference_id: str, archive_id: str, chunks: Iterable[bytes], resume: bool
    ) -> tuple[str, int]:
        """Stream ``chunks`` into the ``.part`` file, hashing on the way, and fsync it.

        With ``resume`` the bytes already in the ``.part`` file are kept (and hashed first),
        and ``chunks`` must continue where they end. Returns the sha256 and size of it all.
        """
        part = self.part_path(conference_id, archive_id)
        make_private_dirs(part.parent)
        digest = hashlib.sha256()
        size = _hash_into(digest, part) if resume and part.is_file() else 0
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if resume else os.O_TRUNC)
        fd = os.open(part, flags, 0o600)
        with os.fdopen(fd, "wb", buffering=0) as handle:
            for chunk in chunks:
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            os.fsync(handle.fileno())
        return digest.hexdigest(), size

    def commit_partial(
        self,
        conference_id: str,
        archive_id: str,
        written: tuple[str, int],
        expected_sha256: str,
        expected_size: int | None,
        record: dict[str, Any],
    ) -> StoredFile:
        """Move a fully written and fsynced ``.part`` file, with its record, into place.

        ``written`` is what :meth:`write_partial` returned. When it does not match the
        expectation the file goes to quarantine and VerificationError is raised.
        """
        part = self.part_path(conference_id, archive_id)
        digest, size = written
        problem = _mismatch(digest, size, expected_sha256, expected_size)
        if problem:
            kept = self.quarantine(part, archive_id)
            raise VerificationError(f"{problem}; bad copy kept at {kept}")
        final = self.final_path(conference_id, archive_id)
        os.replace(part, final)
        self._write_record(final.with_suffix(".json"), record)
        fsync_dir(final.parent)
        return StoredFile(final, digest, size)

    def ensure_record(self, stored: StoredFile, record: dict[str, Any]) -> None:
        """Write the record beside an already stored file (idempotent)."""
        self._write_record(stored.path.with_suffix(".json"), record)
        fsync_dir(stored.path.parent)

    def quarantine(self, path: Path, archive_id: str) -> Path:
        target_dir = self.root / QUARANTINE
        make_private_dirs(target_dir)
        target = target_dir / f"{archive_id}.zip"
        os.replace(path, target)
        fsync_dir(target_dir)
        fsync_dir(path.parent)
        return target

    def _write_record(self, path: Path, record: dict[str, Any]) -> None:
        temp = path.with_name(f".{path.name}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True))  # C encoder: no indent
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)


def hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = _hash_into(digest, path)
    return digest.hexdigest(), size


def _hash_into(digest: Any, path: Path) -> int:
    size = 0
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return size


def _mismatch(digest: str, size: int, sha256: str, expected_size: int | None) -> str | None:
    if expected_size is not None and size != expected_size:
        return f"size {size} differs from the expected {expected_size} bytes"
    if digest != sha256:
        return f"sha256 {digest} differs from the record's {sha256}"
    return None
