"""A store driven through its verbs in the order the archive job uses them (find; else
resume_from, put, confirm; then attach), for the tests of each store."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sync_worker.adapters.stores import ArchiveFile, Saved, Store


@dataclass(frozen=True)
class Kept:
    """What keeping an archive gave: ``saved``; ``fetched``, the bytes downloaded for it;
    ``copy``, what its local copy held before it was attached (None without one)."""

    saved: Saved
    fetched: int = 0
    copy: bytes | None = None


def keep(store: Store, target: ArchiveFile, fetch, record: dict | None = None) -> Kept:
    """Keep the archive ``target``, its bytes opened from an offset by ``fetch``."""
    saved, fetched = store.find(target), 0
    if saved is None:
        offset = store.resume_from(target)
        if offset is not None:
            with fetch(offset) as download:
                size = store.put(target, download)
            fetched = size - offset if download.resumed else size
        saved = store.confirm(target)
    copy = saved.local_copy.read_bytes() if saved.local_copy else None
    store.attach(target, json.dumps(record or {}, sort_keys=True).encode())
    return Kept(saved, fetched, copy)
