"""Where verified archives are kept: a local folder (``local``) or an S3-compatible bucket
(``s3``), behind one :class:`Store` interface.

Whatever the store, an archive reaches it only complete and verified against the
sha256 Flexperto recorded (see :class:`Store` for the verbs, and the order the archive job
uses them in).
"""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from sync_worker.config import HttpConfig, NetworkConfig, StorageConfig
from sync_worker.core.errors import ItemError, JobStop

SUMS_NAME = "SHA256SUMS"


class VerificationError(ItemError):
    """The downloaded bytes are not the archive Flexperto described."""


class TooLarge(VerificationError):
    """The download went on past the most bytes the archive can have: stopped there."""


class Missing(ItemError):
    """A stored archive is not where the ledger says."""


class StoreError(ItemError):
    """The store refused or could not be reached; the message says what it answered."""


# What a file system answers when the fault is the store's, not an archive's: no archive
# can be written there until an operator acts (a full disk or quota is one too).
UNWRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


class StoreUnavailable(StoreError, JobStop):
    """No archive can be stored now, whichever it is: the archive job stops at once for the
    pass, and charges no archive a try. ``fields``: what the event says of it."""

    def __init__(self, message: str, **fields: str) -> None:
        super().__init__(message)
        self.fields = fields


class StoreUnwritable(StoreUnavailable):
    """Nothing can be written to the store (``path``): ``errno`` names why (EACCES, EROFS,
    ENOSPC..., or the bucket's AccessDenied)."""

    def __init__(self, path: str, errno_name: str, detail: str) -> None:
        super().__init__(
            f"the archive store {path} cannot be written ({errno_name}: {detail}): the "
            "archive job waits for the next pass; fix the store's permissions, mount or space",
            path=path,
            errno=errno_name,
        )
        self.path = path
        self.errno_name = errno_name

    @classmethod
    def from_os_error(cls, exc: OSError, path: Path) -> StoreUnwritable | None:
        """The store error ``exc`` stands for, if it is one (UNWRITABLE_ERRNOS)."""
        if exc.errno not in UNWRITABLE_ERRNOS:
            return None
        where = f" ({exc.filename})" if exc.filename else ""
        return cls(str(path), errno.errorcode[exc.errno], f"{exc.strerror}{where}")


class StoreUnreachable(StoreUnavailable):
    """The store cannot be reached (``path``): refused, unresolved, timed out, or a TLS
    failure; ``detail`` names the host and the cause."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(detail, path=path)


class Misconfigured(StoreError, JobStop):
    """The store cannot keep archives as the configuration asks (a bucket without Object
    Lock while ``storage.retention_days`` is set): nothing is downloaded until an operator
    fixes one or the other. ``bucket``: which store."""

    def __init__(self, bucket: str, message: str) -> None:
        super().__init__(message)
        self.bucket = bucket


class StoreWarning(Exception):
    """The store works as configured, but an operator should know this (the message says
    what and what to do): for ``check``, never a pass's failure."""


class LinkRefused(StoreError):
    """A symbolic link inside the archive folder, where the worker keeps its own files: it
    is never followed; nor is anything else planted there that is no regular file or
    folder (a named pipe, a device) ever opened."""


@dataclass(frozen=True)
class StoreOwner:
    """The state file an archive store belongs to: ``state_id`` (made once in the state
    file), and where the file is (host and path). Either one identifies it (see
    :meth:`same_as`)."""

    state_id: str
    host: str
    state_file: str

    @classmethod
    def of(cls, state_id: str, state_place: str) -> StoreOwner:
        """The state at ``state_place`` (state.configured.state_place), seen from this
        host, whose id is ``state_id``."""
        return cls(state_id, socket.gethostname(), state_place)

    def same_as(self, other: StoreOwner) -> bool:
        """Whether ``other`` is this state file: the same id (the file moved to another
        host, or the host was renamed), or the same place (the file was lost and made anew,
        or restored from a backup, where it was)."""
        return self.state_id == other.state_id or (self.host, self.state_file) == (
            other.host,
            other.state_file,
        )

    def describe(self) -> str:
        return f"the state file {self.state_file} on {self.host} (id {self.state_id})"

    def as_text(self) -> str:
        return json.dumps(asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_text(cls, text: str, where: str) -> StoreOwner:
        """The owner recorded in ``text``; StoreError naming ``where`` if it is not one."""
        try:
            fields = json.loads(text)
            return cls(str(fields["state_id"]), str(fields["host"]), str(fields["state_file"]))
        except (ValueError, TypeError, KeyError):
            raise StoreError(
                f"{where} does not name the state file owning the store; restore or remove it"
            ) from None


class ForeignOwner(StoreError):
    """The store belongs to another state file: nothing may be stored there from this one."""

    def __init__(self, owner: StoreOwner, message: str) -> None:
        super().__init__(message)
        self.owner = owner


@dataclass(frozen=True)
class ArchiveFile:
    """Which archive, and what its bytes must be. ``limit``: the most bytes accepted from
    the storage host (its size when known); a download going past it is stopped."""

    conference_id: str
    archive_id: str
    sha256: str
    size: int | None = None
    limit: int | None = None

    @property
    def most_bytes(self) -> int | None:
        return self.size if self.size is not None else self.limit

    @property
    def relative(self) -> str:
        """The archive's path under the store's root, as SHA256SUMS names it."""
        return sums_name(self.conference_id, self.archive_id)


def sums_name(conference_id: str, archive_id: str) -> str:
    """An archive's path under the store's root (a folder, or a bucket's prefix)."""
    return f"{conference_id}/{archive_id}.zip"


@dataclass(frozen=True)
class Download:
    """Archive bytes as the storage host sends them: from the offset asked for when
    ``resumed``, else from the first byte."""

    chunks: Iterable[bytes]
    resumed: bool


@dataclass(frozen=True)
class Saved:
    """An archive in its final place, verified. ``location``: where (a path, or an s3://
    URL); ``recovered``: it was there already, left by a pass cut short; ``local_copy``: a
    file of this machine holding the verified bytes, there until :meth:`Store.attach`."""

    location: str
    sha256: str
    size: int
    recovered: bool = False
    local_copy: Path | None = None
    # The SHA-256 of each part, from the read that gave ``sha256`` (a spool cut in parts).
    parts: tuple[bytes, ...] = ()


class Store(Protocol):
    """A few verbs over an archive (find, resume_from, put, confirm, attach; forget) and over
    the store (archives, read, write_sums; claim, probe, tidy). Keeping an archive is::

        saved = store.find(target)
        if saved is None:
            offset = store.resume_from(target)
            if offset is not None:
                with <the archive's bytes from offset> as download:
                    store.put(target, download)
            saved = store.confirm(target)
        store.attach(target, record)

    and only once attach returns is the archive safely there (on disk and fsynced, or
    confirmed in the bucket): the archive job abandons nothing before.
    """

    # True when attach() adds the archive's line to SHA256SUMS (a file can be appended to,
    # an object cannot: the archive job rewrites a bucket's after a pass).
    appends_sums: bool

    def find(self, target: ArchiveFile) -> Saved | None:
        """The archive, if the store holds it already with the right bytes (read back and
        hashed); None otherwise (a wrong copy is set aside, never taken)."""

    def resume_from(self, target: ArchiveFile) -> int | None:
        """Where a download of the archive goes on from: the bytes of the copy an earlier try
        left (0 for none); None when that copy is complete already and needs no download."""

    def put(self, target: ArchiveFile, download: Download) -> int:
        """Write the download's bytes to the copy in progress (after what it holds when the
        download is ``resumed``, else instead of it) and make them durable; returns the
        copy's size. TooLarge past ``target.most_bytes`` (what came is kept in quarantine)."""

    def confirm(self, target: ArchiveFile) -> Saved:
        """Verify the copy as the store gives it back, and make it the archive. Raises
        VerificationError (the bad bytes kept in quarantine)."""

    def attach(self, target: ArchiveFile, record: bytes) -> None:
        """Keep the archive's record (JSON) beside the confirmed archive, durably."""

    def forget(self, target: ArchiveFile) -> None:
        """Drop the copy in progress (after a file system error left it in any shape)."""

    def archives(self) -> Iterator[str]:
        """The location of every archive the store holds."""

    def read(self, location: str) -> Iterator[bytes]:
        """The bytes of a stored archive, in chunks. Raises Missing."""

    def write_sums(self, lines: Iterable[str]) -> None:
        """Replace SHA256SUMS (``sha256  relative/path`` lines) at the store's root."""

    def claim(self, owner: StoreOwner) -> None:
        """Make sure the store belongs to ``owner``'s state file, recording it there the first
        time; ForeignOwner if another state file's is recorded. Before anything is stored."""

    def probe(self) -> str:
        """Check, without writing anything, that archives can be stored; say so in words.
        Raises StoreError or OSError."""

    def tidy(self) -> list[str]:
        """Clear what passes cut short left behind; returns what was cleared."""


def open_store(
    config: StorageConfig,
    http: HttpConfig,
    network: NetworkConfig | None = None,
    saves_at_once: int = 1,
) -> Store:
    """The store the configuration names (boto3 is loaded only for a bucket), reached as
    ``network`` says, for up to ``saves_at_once`` archives saved at the same time."""
    if config.backend == "s3":
        from sync_worker.adapters.stores.s3 import S3Store

        route = (network or NetworkConfig()).route("s3")
        return S3Store(config, http, route=route, saves_at_once=saves_at_once)
    from sync_worker.adapters.stores.local import LocalStore

    return LocalStore(config.archive_dir)
