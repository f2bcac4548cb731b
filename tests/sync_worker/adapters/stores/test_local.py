"""The archive folder, driven through its verbs as the archive job drives them: from
whatever an earlier try left to a verified file in place, or to quarantine."""

import hashlib
import json
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest

from sync_worker.adapters.stores import ArchiveFile, Download, VerificationError
from sync_worker.adapters.stores.local import LocalStore
from tests.store_driver import keep

pytestmark = pytest.mark.fast

DATA = b"zip bytes " * 1000
SHA = hashlib.sha256(DATA).hexdigest()
TARGET = ArchiveFile("c1", "a1", SHA, len(DATA))


class Host:
    """The storage host's side: serves DATA from an offset, honouring ranges or not."""

    def __init__(self, data=DATA, ranges=True):
        self.data, self.ranges, self.offsets = data, ranges, []

    @contextmanager
    def fetch(self, offset):
        self.offsets.append(offset)
        start = offset if self.ranges else 0
        body = self.data[start:]
        yield Download((body[i : i + 777] for i in range(0, len(body), 777)), self.ranges)


def test_a_download_is_verified_and_moved_into_place_with_its_record(tmp_path):
    store, host = LocalStore(tmp_path / "archives"), Host()
    kept = keep(store, TARGET, host.fetch, {"id": "a1"})
    saved = kept.saved
    assert Path(saved.location) == tmp_path / "archives" / "c1" / "a1.zip"
    assert (saved.sha256, saved.size, kept.fetched, saved.recovered) == (
        SHA,
        len(DATA),
        len(DATA),
        False,
    )
    assert saved.local_copy == Path(saved.location) and kept.copy == DATA
    assert Path(saved.location).read_bytes() == DATA
    assert json.loads(Path(saved.location).with_suffix(".json").read_text()) == {"id": "a1"}
    assert not store.part_path("c1", "a1").exists()
    assert host.offsets == [0]
    assert stat.S_IMODE(Path(saved.location).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(saved.location).parent.stat().st_mode) == 0o700


def test_a_partial_file_is_continued_from_its_end(tmp_path):
    store, host = LocalStore(tmp_path), Host()
    store.part_path("c1", "a1").parent.mkdir()
    store.part_path("c1", "a1").write_bytes(DATA[:3000])
    kept = keep(store, TARGET, host.fetch)
    assert host.offsets == [3000]
    assert (kept.saved.size, kept.fetched) == (len(DATA), len(DATA) - 3000)
    assert Path(kept.saved.location).read_bytes() == DATA


def test_a_host_that_ignores_the_range_sends_everything_again(tmp_path):
    store, host = LocalStore(tmp_path), Host(ranges=False)
    store.part_path("c1", "a1").parent.mkdir()
    store.part_path("c1", "a1").write_bytes(b"stale" * 10)
    kept = keep(store, TARGET, host.fetch)
    assert (kept.saved.size, kept.fetched) == (len(DATA), len(DATA))
    assert Path(kept.saved.location).read_bytes() == DATA


def test_a_complete_partial_file_needs_no_download(tmp_path):
    store, host = LocalStore(tmp_path), Host()
    store.part_path("c1", "a1").parent.mkdir()
    store.part_path("c1", "a1").write_bytes(DATA)
    kept = keep(store, TARGET, host.fetch)
    assert host.offsets == [] and kept.fetched == 0
    assert Path(kept.saved.location).read_bytes() == DATA


def test_a_verified_file_in_place_is_taken_as_is(tmp_path):
    store = LocalStore(tmp_path)
    keep(store, TARGET, Host().fetch, {"id": "a1"})
    store.final_path("c1", "a1").with_suffix(".json").unlink()
    again = Host()
    saved = keep(store, TARGET, again.fetch, {"id": "a1"}).saved
    assert saved.recovered and again.offsets == []
    assert store.final_path("c1", "a1").with_suffix(".json").exists()  # written again


def test_a_bad_file_in_place_is_quarantined_and_downloaded_again(tmp_path):
    store = LocalStore(tmp_path)
    store.final_path("c1", "a1").parent.mkdir()
    store.final_path("c1", "a1").write_bytes(b"not it")
    saved = keep(store, TARGET, Host().fetch).saved
    assert not saved.recovered and Path(saved.location).read_bytes() == DATA
    assert (tmp_path / ".quarantine" / "a1.zip").read_bytes() == b"not it"


def test_bytes_that_do_not_match_go_to_quarantine(tmp_path):
    store = LocalStore(tmp_path)
    with pytest.raises(VerificationError, match=r"sha256 .* differs"):
        keep(store, ArchiveFile("c1", "a1", "0" * 64), Host().fetch)
    assert not store.final_path("c1", "a1").exists()
    assert not store.part_path("c1", "a1").exists()
    assert (tmp_path / ".quarantine" / "a1.zip").read_bytes() == DATA


def test_a_size_that_does_not_match_is_reported(tmp_path):
    store = LocalStore(tmp_path)
    with pytest.raises(VerificationError, match="size"):
        keep(store, ArchiveFile("c1", "a1", SHA, len(DATA) + 1), Host().fetch)


def test_without_a_known_size_the_hash_decides(tmp_path):
    kept = keep(LocalStore(tmp_path), ArchiveFile("c1", "a1", SHA), Host().fetch)
    assert kept.saved.size == len(DATA)


def test_discarding_a_partial_file_that_is_not_there_is_fine(tmp_path):
    LocalStore(tmp_path).forget(TARGET)


def parts_of(data: bytes, size: int) -> tuple[bytes, ...]:
    return tuple(hashlib.sha256(data[i : i + size]).digest() for i in range(0, len(data), size))


@pytest.mark.parametrize("part_size", [3000, 1000, len(DATA), 7])
def test_a_spool_cut_in_parts_gives_each_parts_sha256_from_the_verifying_read(tmp_path, part_size):
    store = LocalStore(tmp_path / "spool", keep_sums=False, part_size=lambda _size: part_size)
    saved = keep(store, TARGET, Host().fetch).saved
    assert saved.sha256 == SHA and saved.parts == parts_of(DATA, part_size)
    again = keep(store, TARGET, Host().fetch).saved  # found in place: the same read, the same cut
    assert again.recovered and again.parts == saved.parts


def test_a_resumed_download_is_cut_in_parts_whole(tmp_path):
    store = LocalStore(tmp_path / "spool", keep_sums=False, part_size=lambda _size: 4096)
    part = store.part_path("c1", "a1")
    part.parent.mkdir(parents=True, mode=0o700)
    part.write_bytes(DATA[:5000])  # left by a try cut short
    assert keep(store, TARGET, Host().fetch).saved.parts == parts_of(DATA, 4096)


def test_a_folder_store_gives_no_parts(tmp_path):
    assert keep(LocalStore(tmp_path / "archives"), TARGET, Host().fetch).saved.parts == ()
