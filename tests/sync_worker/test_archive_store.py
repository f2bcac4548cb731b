import hashlib
import json
import stat

import pytest

from sync_worker.archive_store import ArchiveStore, VerificationError

DATA = b"zip bytes " * 1000
SHA = hashlib.sha256(DATA).hexdigest()


def chunks(data, size=777):
    return (data[i : i + size] for i in range(0, len(data), size))


def test_write_verify_and_commit(tmp_path):
    store = ArchiveStore(tmp_path / "archives")
    written = store.write_partial("c1", "a1", chunks(DATA), resume=False)
    assert written == (SHA, len(DATA))
    stored = store.commit_partial("c1", "a1", written, SHA, len(DATA), {"id": "a1"})
    assert stored.path == tmp_path / "archives" / "c1" / "a1.zip"
    assert stored.path.read_bytes() == DATA
    assert json.loads(stored.path.with_suffix(".json").read_text()) == {"id": "a1"}
    assert not store.part_path("c1", "a1").exists()
    assert stat.S_IMODE(stored.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.path.parent.stat().st_mode) == 0o700


def test_resume_hashes_what_is_already_there(tmp_path):
    store = ArchiveStore(tmp_path)
    store.write_partial("c1", "a1", chunks(DATA[:3000]), resume=False)
    written = store.write_partial("c1", "a1", chunks(DATA[3000:]), resume=True)
    assert written == (SHA, len(DATA))


def test_mismatch_goes_to_quarantine_and_nothing_is_stored(tmp_path):
    store = ArchiveStore(tmp_path)
    written = store.write_partial("c1", "a1", chunks(DATA), resume=False)
    with pytest.raises(VerificationError, match=r"sha256 .* differs"):
        store.commit_partial("c1", "a1", written, "0" * 64, None, {})
    assert not store.final_path("c1", "a1").exists()
    assert (tmp_path / ".quarantine" / "a1.zip").read_bytes() == DATA


def test_size_mismatch_is_reported(tmp_path):
    store = ArchiveStore(tmp_path)
    written = store.write_partial("c1", "a1", chunks(DATA), resume=False)
    with pytest.raises(VerificationError, match="size"):
        store.commit_partial("c1", "a1", written, SHA, len(DATA) + 1, {})


def test_find_verified_accepts_a_good_file_and_quarantines_a_bad_one(tmp_path):
    store = ArchiveStore(tmp_path)
    written = store.write_partial("c1", "a1", chunks(DATA), resume=False)
    store.commit_partial("c1", "a1", written, SHA, None, {})
    assert store.find_verified("c1", "a1", SHA).size == len(DATA)
    assert store.find_verified("c1", "a1", "1" * 64) is None
    assert not store.final_path("c1", "a1").exists()
    assert (tmp_path / ".quarantine" / "a1.zip").exists()
