"""The local archive folder: durable, verified writes of archive files.

Layout under ``archive_dir``::

    {conference_id}/{archive_id}.zip      the archive, exactly the bytes Flexperto hashed
    {conference_id}/{archive_id}.json     the archive record as Flexperto sent it
    {conference_id}/.{archive_id}.zip.part  a download in progress (resumable)
    .quarantine/{archive_id}.zip          the latest copy that failed verification
    .owner                                the state file the folder belongs to
    .owner.lock                           taken while .owner is checked or written
    SHA256SUMS                            ``sha256  {conference_id}/{archive_id}.zip``
                                          per archive stored, for ``sha256sum -c``

Every name the worker keeps at the root but SHA256SUMS starts with a dot, which no archive
or conference id can. The folder belongs to one state file (:meth:`LocalStore.claim`):
two workers with state files of their own would write into each other's partial files.

A file only ever appears under its final name complete, fsynced and verified: bytes go to
the ``.part`` file, every write checked to have taken all it was given, then it is fsynced,
read back through a descriptor of its own and hashed as the file system returns it,
checked, and renamed atomically; the folder is fsynced after the rename, with the
record's, by :meth:`LocalStore.attach`. Folders are 0700 and files 0600. SHA256SUMS gets a
line as each archive is stored (a pass cut short may repeat one, which sha256sum does not
mind); the audit rewrites it whole from the ledger.

Nothing inside the folder is reached through a symbolic link: every folder and file is
opened relative to its folder's descriptor with ``O_NOFOLLOW``, and a name is checked not
to be a link before a file is renamed onto it. A link found is an error naming it
(LinkRefused), and nothing is written where it points. ``archive_dir`` itself may be a
link: that is the operator's configuration.

The S3 store uses a LocalStore as its spool: downloads are verified here, from disk, then
uploaded, and the bucket's copy is checked against that.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from sync_worker.adapters.stores import (
    SUMS_NAME,
    ArchiveFile,
    Download,
    ForeignOwner,
    LinkRefused,
    Missing,
    Saved,
    StoreOwner,
    StoreUnwritable,
    TooLarge,
    VerificationError,
)
from sync_worker.core.private_files import describe_writable_dir, make_private_dirs

CHUNK_SIZE = 1024 * 1024
# How a file of the given size is cut into parts (each that long, the last one shorter).
PartSize = Callable[[int], int]
QUARANTINE = ".quarantine"
OWNER = ".owner"
OWNER_LOCK = ".owner.lock"
# The hash of no bytes: what a partial file that is not there yet holds.
NOTHING = hashlib.sha256().hexdigest()


class LocalStore:
    """Archives in a folder of this machine (``keep_sums``: with SHA256SUMS at its root;
    not for the S3 store's spool). With ``part_size`` (the S3 store's spool: how a file of
    a given size is cut into the parts of an upload), the read that verifies an archive also
    gives the SHA-256 of each of its parts (``Saved.parts``)."""

    def __init__(
        self, root: Path, keep_sums: bool = True, part_size: PartSize | None = None
    ) -> None:
        self.root = root
        self.appends_sums = keep_sums
        self._part_size = part_size

    def final_path(self, conference_id: str, archive_id: str) -> Path:
        return self.root / conference_id / f"{archive_id}.zip"

    def part_path(self, conference_id: str, archive_id: str) -> Path:
        return self.root / conference_id / _part_name(archive_id)

    def find(self, target: ArchiveFile) -> Saved | None:
        """The archive in place, if its bytes hash as ``target`` says; a file in place that
        does not is moved to quarantine."""
        try:
            with self._folder_of(target, create=False) as (_root, folder):
                return self._verified_in_place(folder, target)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def resume_from(self, target: ArchiveFile) -> int | None:
        """The size of the partial file an earlier try left (0 for none), or None when it
        holds the archive whole already (then fsynced, to be sure of it before the rename).
        It is hashed only when its size could be the archive's."""
        part = _part_name(target.archive_id)
        try:
            with self._folder_of(target, create=False) as (_root, folder):
                size = folder.size(part)
                if size is None or (target.size is not None and size != target.size):
                    return size or 0
                digest, size, _ = _hash_file(folder, part) or (NOTHING, 0, ())
                if _mismatch(digest, size, target) is not None:
                    return size
                _fsync_file(folder, part)
                return None
        except (FileNotFoundError, NotADirectoryError):
            return 0

    def put(self, target: ArchiveFile, download: Download) -> int:
        """Write the bytes to the partial file, each write checked to have taken all it was
        given, then fsync it; its size. Past ``target.most_bytes`` the download is stopped
        and what came moved to quarantine (TooLarge)."""
        part = _part_name(target.archive_id)
        with self._folder_of(target) as (_root, folder):
            try:
                return _write(folder, part, download.chunks, download.resumed, target.most_bytes)
            except TooLarge:
                kept = self._quarantine(folder, part, target.archive_id)
                raise TooLarge(
                    f"the download went on past the {target.most_bytes} bytes the archive "
                    f"may have: stopped; what came is kept at {kept}"
                ) from None

    def confirm(self, target: ArchiveFile) -> Saved:
        """Verify the partial file as read back from disk, and rename it into place (made
        durable by :meth:`attach`, which fsyncs the folder); a bad one goes to quarantine.

        Read back rather than counted: the sizes ``write`` returns and ``fstat`` shows are
        what the file system says it took, not the bytes it will give back (a FUSE, NFS or
        SMB mount, a quota or a signal mid-write can differ from both). The file is hashed
        from a descriptor of its own, opened after the fsync (which on NFS revalidates what
        the client caches), and that hash and size alone gate the rename, and so the
        abandon. The cost is one read of the file, usually from the page cache.
        """
        part = _part_name(target.archive_id)
        with self._folder_of(target) as (_root, folder):
            digest, size, parts = _hash_file(folder, part, self._part_size) or (NOTHING, 0, ())
            problem = _mismatch(digest, size, target)
            if problem is not None:
                kept = self._quarantine(folder, part, target.archive_id)
                raise VerificationError(f"{problem}; bad copy kept at {kept}")
            final = f"{target.archive_id}.zip"
            folder.rename(part, folder, final)
            path = folder.path / final
            return Saved(str(path), digest, size, local_copy=path, parts=parts)

    def attach(self, target: ArchiveFile, record: bytes) -> None:
        """Write the record beside the archive (atomically), fsync the folder, which makes
        both renames durable, and add the archive's line to SHA256SUMS (``keep_sums``)."""
        with self._folder_of(target) as (root, folder):
            self._write_record(folder, f"{target.archive_id}.json", record)
            self._append_sum(root, target)

    @contextlib.contextmanager
    def _folder_of(
        self, target: ArchiveFile, create: bool = True
    ) -> Iterator[tuple[_Folder, _Folder]]:
        """The root and the archive's conference folder (``create``: made if missing). A
        folder that refuses writes (permissions, a read-only or full file system) is
        StoreUnwritable: no archive could be stored there."""
        try:
            with (
                self._root(create) as root,
                root.folder(target.conference_id, create) as folder,
            ):
                yield root, folder
        except OSError as exc:
            raise StoreUnwritable.from_os_error(exc, self.root) or exc from None

    def forget(self, target: ArchiveFile) -> None:
        """Delete the partial file, if there is one."""
        with (
            contextlib.suppress(FileNotFoundError, NotADirectoryError, LinkRefused),
            self._root(create=False) as root,
            root.folder(target.conference_id, create=False) as folder,
        ):
            folder.unlink(_part_name(target.archive_id))

    def remove(self, target: ArchiveFile) -> None:
        """Delete a stored archive and its record (the S3 store's spool, once uploaded)."""
        # The folder stays: another download of the conference may be writing into it.
        with (
            contextlib.suppress(FileNotFoundError),
            self._root(create=False) as root,
            root.folder(target.conference_id, create=False) as folder,
        ):
            for name in (f"{target.archive_id}.zip", f"{target.archive_id}.json"):
                with contextlib.suppress(FileNotFoundError):
                    folder.unlink(name)

    def tidy(self) -> list[str]:
        return []  # partial files are resumed, not left behind

    def read(self, location: str) -> Iterator[bytes]:
        path = Path(location)
        try:
            fd = self._open_stored(path)
        except (FileNotFoundError, NotADirectoryError):
            raise Missing(f"{location} is not there") from None
        with os.fdopen(fd, "rb", buffering=0) as handle:
            while chunk := handle.read(CHUNK_SIZE):
                yield chunk

    def _open_stored(self, path: Path) -> int:
        """A descriptor of the stored file at ``path``: inside the folder, reached without
        following a link (a ledger path outside it, from an earlier archive_dir, as is)."""
        if path.parent.parent != self.root:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with (
            self._root(create=False) as root,
            root.folder(path.parent.name, create=False) as folder,
        ):
            return folder.open(path.name, os.O_RDONLY)

    def archives(self) -> Iterator[str]:
        for name in _entries(self.root, folders=True):
            folder = self.root / name
            yield from (str(folder / file) for file in _entries(folder, folders=False))

    def write_sums(self, lines: Iterable[str]) -> None:
        with self._root() as root:
            temp = f".{SUMS_NAME}.tmp"
            fd = root.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            with os.fdopen(fd, "w") as out:
                out.writelines(lines)
                out.flush()
                os.fsync(out.fileno())
            root.rename(temp, root, SUMS_NAME)
            root.fsync()

    def probe(self) -> str:
        return describe_writable_dir(self.root)

    def claim(self, owner: StoreOwner) -> None:
        """Make sure the folder belongs to ``owner``'s state file: the first claim records
        it in .owner (under an exclusive lock on .owner.lock, so that two first passes
        cannot both record themselves); another state file's is ForeignOwner."""
        with self._root() as root:
            fd = root.open(OWNER_LOCK, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                recorded = _read_owner(root)
                if recorded is None or (recorded != owner and recorded.same_as(owner)):
                    _write_owner(root, owner)  # the first claim, or the owner as it is now
                    recorded = owner
            finally:
                os.close(fd)
        check_owner(recorded, owner, str(self.root), f"{self.root / OWNER}")

    @contextlib.contextmanager
    def _root(self, create: bool = True) -> Iterator[_Folder]:
        """The folder itself (``create``: made first if missing), through a descriptor."""
        if create:
            make_private_dirs(self.root)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield _Folder(fd, self.root)
        finally:
            os.close(fd)

    def _append_sum(self, root: _Folder, target: ArchiveFile) -> None:
        """Add the archive's line to SHA256SUMS. Not fsynced: a line lost to a power cut is
        back at the next audit, which rewrites the file from the ledger."""
        if not self.appends_sums:
            return
        line = f"{target.sha256}  {target.relative}\n"
        fd = root.open(SUMS_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            _write_all(fd, line.encode(), root.path / SUMS_NAME)
        finally:
            os.close(fd)

    def _verified_in_place(self, folder: _Folder, target: ArchiveFile) -> Saved | None:
        """The final file if it exists with the expected hash; a bad one is quarantined."""
        name = f"{target.archive_id}.zip"
        found = _hash_file(folder, name, self._part_size)
        if found is None:
            return None
        digest, size, parts = found
        if digest == target.sha256:
            path = folder.path / name
            return Saved(str(path), digest, size, recovered=True, local_copy=path, parts=parts)
        self._quarantine(folder, name, target.archive_id)
        return None

    def _quarantine(self, folder: _Folder, name: str, archive_id: str) -> Path:
        with self._root() as root, root.folder(QUARANTINE) as quarantine:
            kept = f"{archive_id}.zip"
            folder.rename(name, quarantine, kept)
            quarantine.fsync()
            folder.fsync()
            return quarantine.path / kept

    def _write_record(self, folder: _Folder, name: str, record: bytes) -> None:
        """Write the record ``name`` in ``folder`` (atomically, fsynced) and make the
        folder's entries durable."""
        temp = f".{name}.tmp"
        fd = folder.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            _write_all(fd, record, folder.path / temp)
            os.fsync(fd)
        finally:
            os.close(fd)
        folder.rename(temp, folder, name)
        folder.fsync()


class _Folder:
    """A folder of the store through its descriptor: whatever is named in it is opened,
    renamed onto or removed without following a symbolic link."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path

    def open(self, name: str, flags: int) -> int:
        """A descriptor of ``name``: never through a link, and (unless a folder is asked
        for) only of a regular file. Opened without blocking, so that a named pipe planted
        there cannot hold the pass; a regular file takes no notice of that."""
        try:
            fd = os.open(
                name,
                flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                0o600,
                dir_fd=self.fd,
            )
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self.refuse_link(name)
            if exc.errno == errno.ENXIO:  # a pipe opened for writing, nobody reading
                raise LinkRefused(self._not_a_file(name)) from None
            raise
        if not flags & os.O_DIRECTORY and not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LinkRefused(self._not_a_file(name))
        return fd

    def _not_a_file(self, name: str) -> str:
        return (
            f"{self.path / name} is not a regular file (a named pipe, a device, a socket?), "
            "which the worker never reads or writes in the archive folder: remove it (and "
            "look into who made it)"
        )

    @contextlib.contextmanager
    def folder(self, name: str, create: bool = True) -> Iterator[_Folder]:
        """The folder ``name`` in this one (``create``: made 0700 first if missing)."""
        if create:
            try:
                os.mkdir(name, 0o700, dir_fd=self.fd)
            except FileExistsError:
                pass
            else:
                self.fsync()
        fd = self.open(name, os.O_RDONLY | os.O_DIRECTORY)
        try:
            yield _Folder(fd, self.path / name)
        finally:
            os.close(fd)

    def rename(self, name: str, into: _Folder, new_name: str) -> None:
        """Rename ``name`` to ``new_name`` in folder ``into``, replacing a file there, but
        never a link (a link replaced would do no harm, but it was planted: say so)."""
        into.refuse_link(new_name)
        os.replace(name, new_name, src_dir_fd=self.fd, dst_dir_fd=into.fd)

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)

    def size(self, name: str) -> int | None:
        """The size of the regular file ``name`` (never through a link); None if none."""
        try:
            fd = self.open(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def refuse_link(self, name: str) -> None:
        """LinkRefused if ``name`` is a symbolic link."""
        try:
            mode = os.lstat(name, dir_fd=self.fd).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISLNK(mode):
            raise LinkRefused(
                f"{self.path / name} is a symbolic link, which the worker never follows in "
                "the archive folder: remove it (and look into who planted it)"
            )


def check_owner(recorded: StoreOwner, owner: StoreOwner, store: str, marker: str) -> None:
    """ForeignOwner unless the store's ``recorded`` owner is ``owner``'s state file."""
    if not recorded.same_as(owner):
        raise ForeignOwner(
            recorded,
            f"{store} belongs to {recorded.describe()}, not to {owner.describe()}: nothing is "
            f"stored there from this one. Give each state file an archive store of its own; "
            f"if the state file was moved to this place, remove {marker} once the old worker "
            "is stopped for good",
        )


def _read_owner(root: _Folder) -> StoreOwner | None:
    try:
        fd = root.open(OWNER, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        text = handle.read().decode("utf-8", "replace")
    return StoreOwner.from_text(text, str(root.path / OWNER))


def _write_owner(root: _Folder, owner: StoreOwner) -> None:
    temp = f"{OWNER}.tmp"
    fd = root.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        _write_all(fd, owner.as_text().encode(), root.path / temp)
        os.fsync(fd)
    finally:
        os.close(fd)
    root.rename(temp, root, OWNER)
    root.fsync()


def _part_name(archive_id: str) -> str:
    return f".{archive_id}.zip.part"


def _entries(folder: Path, folders: bool) -> list[str]:
    """The names of the conference folders in ``folder`` (not links, not hidden), or of the
    archives in a conference folder, sorted."""
    try:
        with os.scandir(folder) as entries:
            found = [
                entry.name
                for entry in entries
                if entry.is_dir(follow_symlinks=False) == folders
                and (not entry.name.startswith(".") if folders else entry.name.endswith(".zip"))
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(found)


def _hash_file(
    folder: _Folder, name: str, part_size: PartSize | None = None
) -> tuple[str, int, tuple[bytes, ...]] | None:
    """The sha256 and size of the file ``name`` as the file system gives its bytes back
    (through a descriptor of its own), and with ``part_size`` the SHA-256 of each part of
    that size, from the same read; None when there is no such file."""
    try:
        fd = folder.open(name, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        if part_size is None:
            digest = hashlib.file_digest(handle, "sha256")
            return digest.hexdigest(), handle.tell(), ()
        declared = os.fstat(fd).st_size
        digest, size, parts = _hash_in_parts(handle, part_size(declared))
        # cut as a file of the size read would be, or not at all: the upload then reads it
        return digest, size, parts if size == declared else ()


def _hash_in_parts(handle: BinaryIO, part_size: int) -> tuple[str, int, tuple[bytes, ...]]:
    """The file's sha256 and size, and each ``part_size`` part's SHA-256, in one read."""
    whole, part, parts = hashlib.sha256(), hashlib.sha256(), []
    size = in_part = 0
    while chunk := handle.read(min(CHUNK_SIZE, part_size - in_part)):
        whole.update(chunk)
        part.update(chunk)
        size += len(chunk)
        in_part += len(chunk)
        if in_part == part_size:
            parts.append(part.digest())
            part, in_part = hashlib.sha256(), 0
    if in_part:
        parts.append(part.digest())
    return whole.hexdigest(), size, tuple(parts)


def _write(
    folder: _Folder, name: str, chunks: Iterable[bytes], append: bool, most: int | None
) -> int:
    """Write ``chunks`` to the file ``name`` (after what is there, or instead of it), every
    byte of each, and fsync; returns the file's size. A file growing past ``most`` bytes is
    TooLarge, raised before the chunk that would pass it is written."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = folder.open(name, flags)
    try:
        size = os.fstat(fd).st_size
        for chunk in chunks:
            if most is not None and size + len(chunk) > most:
                raise TooLarge
            _write_all(fd, chunk, folder.path / name)
            size += len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def _write_all(fd: int, data: bytes, path: Path) -> None:
    """Write all of ``data``: a short write is continued with the rest, and the error that
    usually follows one (a full disk, a file size limit) names the file."""
    view = memoryview(data)
    try:
        while view:
            taken = os.write(fd, view)
            if taken == 0:
                raise OSError(errno.EIO, "the file system took no byte of a write")
            view = view[taken:]
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def _fsync_file(folder: _Folder, name: str) -> None:
    fd = folder.open(name, os.O_RDONLY)
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
