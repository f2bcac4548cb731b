"""The state file shared by several processes: a daemon with connections in several threads,
a cron pass, ``status`` typed by an operator. None of them may lose another's commit, and a
file that is not what it should be is said so, never used."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from sync_worker.app.cli import main
from sync_worker.app.runner import run_pass
from sync_worker.core.clock import FakeClock
from sync_worker.state.db import open_database, transaction

# Another process that opens the state file, reads, and closes it (a `status` call).
OPEN_READ_CLOSE = """
import sys
from pathlib import Path
from sync_worker.state.db import open_database
db = open_database(Path(sys.argv[1]))
db.execute("select count(*) from archives").fetchall()
db.close()
"""


def fresh_count(path: Path, table: str) -> int:
    """What a new process finds in ``table``: only what truly reached the file."""
    script = (
        "import sqlite3, sys; "
        f"print(sqlite3.connect(sys.argv[1]).execute('select count(*) from {table}').fetchone()[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_no_commit_is_lost_while_another_process_opens_and_closes_the_file(tmp_path):
    path = tmp_path / "state.db"
    held = open_database(path)
    held.execute("create table marks (n integer)")
    for n in range(5):
        # This process opens one more connection (a download thread, the other job) while
        # it holds one; another process opens the file and closes it meanwhile.
        extra = open_database(path)
        subprocess.run([sys.executable, "-c", OPEN_READ_CLOSE, str(path)], check=True)
        with transaction(held):
            held.execute("insert into marks values (?)", [n])
        extra.close()
    assert fresh_count(path, "marks") == 5
    held.close()


def test_a_new_state_file_is_private_and_an_existing_one_made_private(tmp_path):
    path = tmp_path / "state.db"
    open_database(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    db = open_database(path)
    assert path.stat().st_mode & 0o777 == 0o600
    for companion in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert companion.stat().st_mode & 0o077 == 0, companion
    db.close()


def test_an_existing_file_keeps_its_commits_when_many_threads_open_it_at_once(tmp_path):
    import threading

    path = tmp_path / "state.db"
    held = open_database(path)
    held.execute("create table marks (n integer)")
    opened: list = []

    def open_one() -> None:
        opened.append(open_database(path))

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    subprocess.run([sys.executable, "-c", OPEN_READ_CLOSE, str(path)], check=True)
    for thread in threads:
        thread.join()
    for n, db in enumerate(opened):
        with transaction(db):
            db.execute("insert into marks values (?)", [n])
        subprocess.run([sys.executable, "-c", OPEN_READ_CLOSE, str(path)], check=True)
    assert fresh_count(path, "marks") == len(opened) == 8
    for db in opened:
        db.close()
    held.close()
    assert sqlite3.connect(path).execute("pragma integrity_check").fetchone()[0] == "ok"


def test_check_runs_sqlites_integrity_check_on_the_state_file(sandbox, tmp_path, config, capsys):
    """A state file whose pages are damaged (a disk error, a bad restore) opens, and a
    cursory query may even work: check reads every page and says so."""
    run_pass(config, FakeClock())
    assert main(["--config", str(tmp_path / "config.toml"), "check"]) == 0
    capsys.readouterr()
    damage_an_index(config.state.database)
    assert main(["--config", str(tmp_path / "config.toml"), "check"]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "state database" in line]
    assert lines and lines[0].startswith("FAIL") and "integrity" in lines[0]


def damage_an_index(path: Path) -> None:
    """Drop rows from an index behind SQLite's back (the table keeps them): the kind of
    damage a cursory query does not see and integrity_check does."""
    db = sqlite3.connect(path)
    db.execute("pragma writable_schema = on")
    db.execute("create table if not exists scratch (n)")  # keep the file in use
    [root] = db.execute(
        "select rootpage from sqlite_master where name = 'idx_archives_conference_id'"
    ).fetchone()
    db.close()
    page_size = sqlite3.connect(path).execute("pragma page_size").fetchone()[0]
    with path.open("r+b") as handle:  # an index page emptied: its entries are gone
        handle.seek((root - 1) * page_size)
        page = bytearray(handle.read(page_size))
        page[3:5] = b"\x00\x00"  # zero cells on this leaf page
        handle.seek((root - 1) * page_size)
        handle.write(page)
