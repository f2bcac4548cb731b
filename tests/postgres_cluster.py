"""A private PostgreSQL cluster for the tests: ``initdb`` into a temporary folder, ``pg_ctl``
to start it listening on a Unix socket in that folder only (no TCP), one database per test.

Debian's server programs live in ``/usr/lib/postgresql/<major>/bin``, off the ``PATH``;
``SYNC_WORKER_TEST_PG_BIN`` names another folder. The server refuses to run as root, so as
root (CI) the cluster belongs to Debian's ``postgres`` user and its folder is handed to it.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

BIN_ENV = "SYNC_WORKER_TEST_PG_BIN"
SERVER_USER = "postgres"
PORT = 5432  # a Unix socket only: the port just names the socket file


def server_bin() -> Path | None:
    """The folder of initdb and pg_ctl, if PostgreSQL's server is installed."""
    if os.environ.get(BIN_ENV):
        return Path(os.environ[BIN_ENV])
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    majors = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major)
    return Path(majors[-1]).parent if majors else None


def _major(initdb: str) -> int:
    return int(Path(initdb).parent.parent.name)


class PostgresCluster:
    """One running cluster; :meth:`new_database` gives each test a database of its own."""

    def __init__(self, bin_dir: Path) -> None:
        self._bin = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="sync-worker-pg-"))
        self._data = self.folder / "data"
        self._as_server = os.geteuid() == 0
        self._names = itertools.count(1)
        self.user = SERVER_USER if self._as_server else pwd.getpwuid(os.geteuid()).pw_name

    def start(self) -> None:
        if self._as_server:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self._data), "-A", "trust", "-U", self.user, "-E", "UTF8")
        settings = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.folder}' -c port={PORT} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self._data),
            "-w",
            "-l",
            str(self.folder / "log"),
            "-o",
            settings,
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"host={self.folder} port={PORT} user={self.user} dbname={database}"

    def new_database(self) -> str:
        """Create an empty database; returns its DSN."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'create database "{name}"')
        return self.dsn(name)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        if self._as_server:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.folder)
