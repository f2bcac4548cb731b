"""Creating folders that only the service user can enter."""

from __future__ import annotations

from pathlib import Path


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and any missing parents, each 0700 (``mkdir`` gives only the leaf a
    mode, and only through the umask)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
