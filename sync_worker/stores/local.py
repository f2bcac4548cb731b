"""The local archive folder: durable, verified writes of archive files.

Layout under ``archive_dir``::

    {conference_id}/{archive_id}.zip      the archive, exactly the bytes Flexperto hashed
    {conference_id}/{archive_id}.json     the archive record as Flexperto sent it
    {conference_id}/.{archive_id}.zip.part  a download in progress (resumable)
    .quarantine/{archive_id}.zip          the latest copy that failed verification
    SHA256SUMS                            ``sha256  {conference_id}/{archive_id}.zip``
                                          per archive stored, for ``sha256sum -c``

A file only ever appears under its final name complete, fsynced and verified: bytes go to
the ``.part`` file, are hashed on the way, fsynced, checked, and then renamed atomically;
the folder is fsynced after the rename. Folders are 0700 and files 0600. SHA256SUMS gets a
line as each archive is stored (a pass cut short may repeat one, which sha256sum does not
mind); the audit rewrites it whole from the ledger.

The S3 store uses a LocalStore as its spool: downloads are verified here, then uploaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sync_worker.private_files import fsync_dir, make_private_dirs
from sync_worker.stores import (
    SUMS_NAME,
    ArchiveFile,
    Fetch,
    Missing,
    Saved,
    TooLarge,
    VerificationError,
    Verified,
    Written,
)

CHUNK_SIZE = 1024 * 1024
QUARANTINE = ".quarantine"


class LocalStore:
    """Archives in a folder of this machine (``keep_sums``: with SHA256SUMS at its root;
    not for the S3 store's spool)."""

    def __init__(self, root: Path, keep_sums: bool = True) -> None:
        self.root = root
        self.appends_sums = keep_sums

    def final_path(self, conference_id: str, archive_id: str) -> Path:
        return self.root / conference_id / f"{archive_id}.zip"

    def part_path(self, conference_id: str, archive_id: str) -> Path:
        return self.root / conference_id / f".{archive_id}.zip.part"

    def save(
        self,
        target: ArchiveFile,
        record: dict[str, Any],
        fetch: Fetch,
        on_written: Written = lambda _size, _fetched: None,
        on_verified: Verified = lambda _path: None,
    ) -> Saved:
        """Store the archive ``target`` with its ``record`` beside it, and return where.

        A verified file already in place is taken as is. Otherwise the partial file left
        by an earlier try is hashed (once) and, unless it is complete already, continued
        with the bytes ``fetch`` gives from its end (or rewritten, when the storage host
        sends them from the start); then it is fsynced, ``on_written(size, fetched)`` is
        called, and it is verified against ``target`` and moved into place, or moved to
        quarantine with VerificationError. ``on_verified`` is given the file in place.
        """
        in_place = self._verified_in_place(target)
        if in_place is not None:
            self._write_record(Path(in_place.location), record)
            self._append_sum(target)
            on_verified(Path(in_place.location))
            return in_place
        part = self.part_path(target.conference_id, target.archive_id)
        make_private_dirs(part.parent)
        digest = hashlib.sha256()
        size = _hash_into(digest, part) if part.is_file() else 0
        fetched = 0
        if _mismatch(digest.hexdigest(), size, target) is not None:
            with fetch(size) as download:
                if not download.resumed:
                    digest, size = hashlib.sha256(), 0
                room = None if target.most_bytes is None else target.most_bytes - size
                try:
                    fetched = _write(part, download.chunks, digest, download.resumed, room)
                except TooLarge:
                    kept = self._quarantine(part, target.archive_id)
                    raise TooLarge(
                        f"the download went on past the {target.most_bytes} bytes the archive "
                        f"may have: stopped; what came is kept at {kept}"
                    ) from None
                size += fetched
        else:
            _fsync_file(part)  # complete already; make sure of it before the rename
        on_written(size, fetched)
        problem = _mismatch(digest.hexdigest(), size, target)
        if problem is not None:
            kept = self._quarantine(part, target.archive_id)
            raise VerificationError(f"{problem}; bad copy kept at {kept}")
        final = self.final_path(target.conference_id, target.archive_id)
        os.replace(part, final)
        self._write_record(final, record)
        self._append_sum(target)
        on_verified(final)
        return Saved(str(final), digest.hexdigest(), size, fetched)

    def discard_partial(self, conference_id: str, archive_id: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.part_path(conference_id, archive_id).unlink()

    def remove(self, conference_id: str, archive_id: str) -> None:
        """Delete a stored archive and its record (the S3 store's spool, once uploaded)."""
        final = self.final_path(conference_id, archive_id)
        # The folder stays: another download of the conference may be writing into it.
        for path in (final, final.with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def tidy(self) -> list[str]:
        return []  # partial files are resumed, not left behind

    def read(self, location: str) -> Iterator[bytes]:
        path = Path(location)
        if not path.is_file():
            raise Missing(f"{location} is not there")
        with path.open("rb", buffering=0) as handle:
            while chunk := handle.read(CHUNK_SIZE):
                yield chunk

    def archives(self) -> Iterator[str]:
        for folder in sorted(self.root.iterdir()) if self.root.is_dir() else ():
            if folder.is_dir() and not folder.name.startswith("."):
                yield from (str(path) for path in sorted(folder.glob("*.zip")))

    def write_sums(self, lines: Iterable[str]) -> None:
        make_private_dirs(self.root)
        path = self.root / SUMS_NAME
        temp = path.with_name(f".{SUMS_NAME}.tmp")
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.writelines(lines)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
        fsync_dir(self.root)

    def spool(self) -> Path:
        return self.root

    def probe(self) -> str:
        make_private_dirs(self.root)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.root} is not writable by this user")
        return f"{self.root} is writable"

    def relative(self, conference_id: str, archive_id: str) -> str:
        """An archive's path under the root, as SHA256SUMS names it."""
        return f"{conference_id}/{archive_id}.zip"

    def _append_sum(self, target: ArchiveFile) -> None:
        """Add the archive's line to SHA256SUMS. Not fsynced: a line lost to a power cut is
        back at the next audit, which rewrites the file from the ledger."""
        if not self.appends_sums:
            return
        line = f"{target.sha256}  {self.relative(target.conference_id, target.archive_id)}\n"
        fd = os.open(self.root / SUMS_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _verified_in_place(self, target: ArchiveFile) -> Saved | None:
        """The final file if it exists with the expected hash; a bad one is quarantined."""
        path = self.final_path(target.conference_id, target.archive_id)
        if not path.is_file():
            return None
        digest = hashlib.sha256()
        size = _hash_into(digest, path)
        if digest.hexdigest() == target.sha256:
            return Saved(str(path), target.sha256, size, recovered=True)
        self._quarantine(path, target.archive_id)
        return None

    def _quarantine(self, path: Path, archive_id: str) -> Path:
        target_dir = self.root / QUARANTINE
        make_private_dirs(target_dir)
        target = target_dir / f"{archive_id}.zip"
        os.replace(path, target)
        fsync_dir(target_dir)
        fsync_dir(path.parent)
        return target

    def _write_record(self, archive: Path, record: dict[str, Any]) -> None:
        """Write the record beside ``archive`` (atomically, fsynced) and make both entries
        durable in their folder."""
        path = archive.with_suffix(".json")
        temp = path.with_name(f".{path.name}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True))  # C encoder: no indent
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        fsync_dir(path.parent)


def _hash_into(digest: Any, path: Path) -> int:
    size = 0
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return size


def _write(path: Path, chunks: Iterable[bytes], digest: Any, append: bool, room: int | None) -> int:
    """Write ``chunks`` to ``path`` (after what is there, or instead of it), hashing them
    into ``digest``, and fsync; returns how many bytes were written. More than ``room``
    bytes is TooLarge, raised before the chunk that would pass it is written."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    written = 0
    with os.fdopen(os.open(path, flags, 0o600), "wb", buffering=0) as handle:
        for chunk in chunks:
            if room is not None and written + len(chunk) > room:
                raise TooLarge
            handle.write(chunk)
            digest.update(chunk)
            written += len(chunk)
        os.fsync(handle.fileno())
    return written


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mismatch(digest: str, size: int, target: ArchiveFile) -> str | None:
    if target.size is not None and size != target.size:
        return f"size {size} differs from the expected {target.size} bytes"
    if digest != target.sha256:
        return f"sha256 {digest} differs from the record's {target.sha256}"
    return None
