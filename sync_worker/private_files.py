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
