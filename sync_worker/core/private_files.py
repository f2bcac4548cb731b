"""Folders that only the service user can enter, created to survive a power cut."""

from __future__ import annotations

import os
from pathlib import Path


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and any missing parents, each 0700 (``mkdir`` gives only the leaf a
    mode, and only through the umask), each new entry fsynced into its parent."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(folder.parent)


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe_writable_dir(path: Path) -> str:
    """Say, without making anything, that folder ``path`` is writable, or that the nearest
    folder above it that exists is (so a pass can make it). Raises PermissionError."""
    if path.exists():
        if not path.is_dir():
            raise PermissionError(f"{path} is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"{path} is not writable by this user")
        return f"{path} is writable"
    above = path.parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise PermissionError(f"{path} cannot be made: {above} is not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise PermissionError(f"{path} does not exist and {above} is not writable by this user")
    return f"{path} does not exist yet: a pass makes it in {above}, which is writable"
