"""Benchmark: how fast the worker moves archive bytes, how much memory it needs, and how many
Total Expert requests it spends, against the sandbox on loopback.

Prints a table of measured figures with the goal beside each and writes it, with the date
and the machine, to bench/results.md. Run it with `make bench` (or `python bench/run.py`);
`--quick` runs every part on small sizes, to check that the script works; `--only PART`
runs only that part (`s3`, `throughput`...) and prints its rows without writing a file.
The S3 rows write to a moto server started in a process of its own, or with
`--s3-endpoint URL --s3-bucket NAME` to any S3 server (keys and region from
BENCH_S3_ACCESS_KEY, BENCH_S3_SECRET_KEY, BENCH_S3_REGION).

The worker runs as a separate process (`sync-worker run-once`), as in production, so that
it shares no interpreter with the sandbox servers, which run in this process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sync_worker.adapters.flexperto.client import FlexpertoClient
from sync_worker.adapters.stores.s3 import S3Store, client_for
from sync_worker.adapters.stores.s3_upload import Uploader, part_size_for
from sync_worker.config import HttpConfig, StorageConfig, load_config
from sync_worker.core.clock import SystemClock
from sync_worker.core.network import Route
from sync_worker.sandbox import Sandbox, free_port, tenants_toml
from sync_worker.sandbox.worker_process import log_events, start_worker
from sync_worker.state import directory
from sync_worker.state.db import open_database

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
MIB = 1024 * 1024
GIB = 1024 * MIB
EXPERT = {"account_id": "e-1", "email": "expert0@bank.example", "name": "Expert 0"}


@dataclass
class Row:
    measure: str
    figure: str
    goal: str
    met: bool | None

    def markdown(self) -> str:
        verdict = {True: "met", False: "NOT met", None: "-"}[self.met]
        return f"| {self.measure} | {self.figure} | {self.goal} | {verdict} |"


def fresh(name: str) -> Path:
    folder = WORK / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def config_file(folder: Path, sandbox: Sandbox, extra: str = "") -> Path:
    """The worker's config for ``sandbox``, private as the worker wants one holding secrets."""
    path = folder / "config.toml"
    path.touch(mode=0o600)
    path.write_text(sandbox.config_toml("archives", "state.db") + extra)
    return path


# Runs the worker in this same process and tells its peak RSS at exit. Not the child's
# ru_maxrss: on Linux that keeps the high-water mark of the process it was forked from,
# so every worker started by this (growing) benchmark would show the benchmark's size.
PEAK_REPORTER = """
import atexit, runpy, sys
def peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    sys.stderr.write(f"peak-rss-kib {kib}\\n")
atexit.register(peak)
sys.argv = ["sync-worker", *sys.argv[1:]]
runpy.run_module("sync_worker", run_name="__main__", alter_sys=True)
"""


def run_measured(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[str, int, float]:
    """Run ``sync-worker --config CONFIG ARGS`` (with ``env`` added to the environment): its
    log (stderr; its data, on stdout, is not kept), its exit code and its peak RSS in MiB."""
    command = [sys.executable, "-c", PEAK_REPORTER, "--config", str(config), *args]
    done = subprocess.run(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    reported = [line for line in done.stderr.splitlines() if line.startswith("peak-rss-kib ")]
    return done.stderr, done.returncode, int(reported[-1].split()[1]) / 1024


def run_once(config: Path, env: dict[str, str] | None = None) -> tuple[list[dict], float]:
    """Run `sync-worker run-once`; its JSON log events and its peak RSS in MiB."""
    output, code, peak = run_measured(config, "--log-format", "json", "run-once", env=env)
    if code not in (0, 1):
        raise RuntimeError(f"run-once failed with {code}")
    return log_events(output), peak


def event_time(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def summary(events: list[dict]) -> dict:
    return next(e for e in events if e["event"] == "run.finished")


# --- 1. throughput -----------------------------------------------------------------------


def throughput(size: int, repeats: int) -> list[Row]:
    worker, curl, read_back = [], [], []
    for attempt in range(repeats):
        folder = fresh(f"throughput-{attempt}")
        with Sandbox(folder / "sandbox", seed=False) as sandbox:
            record = sandbox.flexperto.add_archive(size=size, participants=[])
            config = config_file(folder, sandbox)
            events, _rss = run_once(config)
            listed = next(e for e in events if e["event"] == "archive.listed")
            verified = next(e for e in events if e["event"] == "archive.verified")
            worker.append(size / (event_time(verified) - event_time(listed)) / MIB)
            stored = next(e for e in events if e["event"] == "archive.stored")
            read_back.append(read_back_seconds(Path(stored["path"])))
            curl.append(curl_throughput(config, record["id"], size))
        shutil.rmtree(folder)
    ours, theirs = statistics.median(worker), statistics.median(curl)
    ratio = ours / theirs
    checked = statistics.median(read_back)
    share = checked / (size / MIB / ours)
    return [
        Row(
            f"download+verify+store {size // MIB} MiB (worker, fsync included)",
            f"{ours:,.0f} MB/s",
            "",
            None,
        ),
        Row(
            "of which on-disk verification (the stored file read back and hashed, as the "
            "worker does after the fsync)",
            f"{size / MIB / checked:,.0f} MB/s, {share:.0%} of the time",
            "",
            None,
        ),
        Row("`curl -s URL | sha256sum`, same storage host", f"{theirs:,.0f} MB/s", "", None),
        Row("throughput ratio worker / curl", f"{ratio:.2f}", ">= 0.9", ratio >= 0.9),
    ]


def read_back_seconds(path: Path) -> float:
    """How long reading ``path`` back through a descriptor of its own and hashing it takes:
    the worker's on-disk verification, from the page cache as it usually is."""
    started = time.perf_counter()
    with path.open("rb", buffering=0) as handle:
        hashlib.file_digest(handle, "sha256")
    return time.perf_counter() - started


def curl_throughput(config: Path, archive_id: str, size: int) -> float:
    settings = load_config(config, env={})
    client = FlexpertoClient(settings.flexperto, settings.http, SystemClock())
    url = client.download_url(archive_id)
    client.close()
    started = time.perf_counter()
    subprocess.run(
        f"curl -s '{url}' | sha256sum", shell=True, check=True, stdout=subprocess.DEVNULL
    )
    return size / (time.perf_counter() - started) / MIB


# --- 2. memory ---------------------------------------------------------------------------


def memory(sizes: list[int]) -> list[Row]:
    peaks = []
    for size in sizes:
        folder = fresh(f"memory-{size}")
        with Sandbox(folder / "sandbox", seed=False) as sandbox:
            sandbox.flexperto.add_archive(size=size, participants=[])
            _events, peak = run_once(config_file(folder, sandbox))
        peaks.append(peak)
        shutil.rmtree(folder)
    figures = ", ".join(
        f"{size // MIB} MiB: {peak:.0f} MiB" for size, peak in zip(sizes, peaks, strict=True)
    )
    flat = max(peaks) - min(peaks) < 8
    return [
        Row(
            "peak RSS of run-once by archive size",
            figures,
            "< 80 MiB, flat",
            max(peaks) < 80 and flat,
        ),
    ]


# --- 3. TE requests per insight ----------------------------------------------------------


def te_requests(archives: int, contacts: int, passes: int, experts: int) -> list[Row]:
    folder = fresh("te-requests")
    rng = random.Random(7)
    with Sandbox(folder / "sandbox", seed=False, te_requests_per_minute=10**6) as sandbox:
        te = sandbox.totalexpert
        users = [te.add_user(f"expert{n}@bank.example") for n in range(experts)]
        emails = [f"customer{n}@example.org" for n in range(contacts)]
        last_month = time.time() - 30 * 86400  # an organisation's contacts change slowly
        for n, email in enumerate(emails):
            te.add_contact(email, users[n % experts]["id"], updated_at=last_month)
        te.add_insight_type("flexperto_conference_archived")
        config = config_file(folder, sandbox)
        seen: list[str] = []
        per_pass = []
        for _ in range(passes):
            before = len(te.requests)
            sent_before = len(te.insights())
            for _ in range(archives // passes):
                people = [pick_participant(rng, emails, seen) for _ in range(2)]
                sandbox.flexperto.add_archive(
                    moderator={**EXPERT, "email": rng.choice(users)["email"]},
                    participants=[{"account_id": e, "email": e, "name": e} for e in people],
                )
            events, _rss = run_once(config)
            filled = any(e["event"] == "te.directory_filled" for e in events)
            per_pass.append((len(te.requests) - before, len(te.insights()) - sent_before, filled))
    # Warm-up: the passes up to the one that filled the copy of the contacts.
    filled_at = next((n for n, (_, _, filled) in enumerate(per_pass) if filled), len(per_pass))
    warm, steady_passes = per_pass[: filled_at + 1], per_pass[filled_at + 1 :]
    warm_extra = sum(r - i for r, i, _ in warm)
    steady = sum(r for r, _, _ in steady_passes) / max(1, sum(i for _, i, _ in steady_passes))
    insights = sum(i for _, i, _ in per_pass)
    naive = (2 * 2 * archives + insights + passes) / insights
    shutil.rmtree(folder)
    return [
        Row(
            f"TE requests per insight, steady state ({archives} archives, {contacts:,} "
            f"contacts, {passes} passes; passes {len(warm) + 1}-{passes})",
            f"{steady:.3f}",
            "<= 1.1",
            steady <= 1.1,
        ),
        Row(
            f"TE warm-up, passes 1-{len(warm)}: lookups, then the copy of contacts and users, "
            "type, token (beyond one request per insight)",
            f"{warm_extra} requests",
            "",
            None,
        ),
        Row(
            "naive baseline (per participant: contact + user lookup; token per pass)",
            f"{naive:.2f} per insight (computed)",
            "",
            None,
        ),
    ]


def pick_participant(rng: random.Random, emails: list[str], seen: list[str]) -> str:
    """30% of participants are people met before."""
    if seen and rng.random() < 0.3:
        return rng.choice(seen)
    email = rng.choice(emails)
    seen.append(email)
    return email


def small_org(contacts: int, archives: int, passes: int) -> list[Row]:
    """Requests for a small organisation, with the copy of contacts and with lookups."""
    costs = {}
    for strategy in ("copy", "lookups"):  # left alone, the worker copies this small org
        folder = fresh(f"small-org-{strategy}")
        with Sandbox(folder / "sandbox", seed=False) as sandbox:
            te = sandbox.totalexpert
            user = te.add_user(EXPERT["email"])
            emails = [f"c{n}@example.org" for n in range(contacts)]
            for email in emails:
                te.add_contact(email, user["id"], updated_at=time.time() - 30 * 86400)
            te.add_insight_type("flexperto_conference_archived")
            config = config_file(folder, sandbox)
            if strategy == "lookups":
                force_lookups(load_config(config, env={}).state.database)
            rng = random.Random(3)
            for _ in range(passes):
                for _ in range(archives // passes):
                    email = rng.choice(emails)
                    sandbox.flexperto.add_archive(
                        moderator=EXPERT,
                        participants=[{"account_id": "p", "email": email, "name": email}],
                    )
                run_once(config)
            costs[strategy] = (len(te.requests), len(te.insights()))
        shutil.rmtree(folder)
    (copy, sent), (lookups, _) = costs["copy"], costs["lookups"]
    return [
        Row(
            f"small org ({contacts} contacts, {archives} archives, {passes} passes): TE requests",
            f"as chosen (copy) {copy}, forced lookups {lookups}; {sent} insights",
            "the cheaper one chosen",
            copy <= lookups,
        ),
    ]


def force_lookups(database: Path) -> None:
    """Make the worker believe the organisation is too large to copy."""
    db = open_database(database)
    directory.set_meta(
        db,
        {
            directory.CONTACT_PAGES: str(10**9),
            directory.CONTACT_PAGES_SEEN_AT: str(time.time() + 10**6),
        },
    )
    db.close()


# --- 4. drain time -----------------------------------------------------------------------


def add_backlog(sandbox: Sandbox, archives: int, contacts: int) -> None:
    """Tiny archives with one participant each, all of them contacts of one expert."""
    te = sandbox.totalexpert
    user = te.add_user(EXPERT["email"])
    emails = [f"c{n}@example.org" for n in range(contacts)]
    for email in emails:
        te.add_contact(email, user["id"])
    te.add_insight_type("flexperto_conference_archived")
    for n in range(archives):
        sandbox.flexperto.add_archive(
            moderator=EXPERT,
            content=b"tiny archive %d" % n,
            participants=[{"account_id": "p", "email": emails[n % contacts], "name": "P"}],
        )


def drain(archives: int, limit: int) -> list[Row]:
    folder = fresh("drain")
    with Sandbox(folder / "sandbox", seed=False, te_requests_per_minute=limit) as sandbox:
        te = sandbox.totalexpert
        add_backlog(sandbox, archives, contacts=200)
        config = config_file(folder, sandbox)
        run_once(config)
        times = sorted(r.received_at for r in te.requests)
        rejected = te.rate_limited_count
        sent = len(te.insights())
    shutil.rmtree(folder)
    ideal = 60.0 * ((len(times) - 1) // limit)
    actual = times[-1] - times[0]
    efficiency = ideal / actual if ideal else 1.0  # under one window: nothing to wait for
    return [
        Row(
            f"drain {archives} archives at {limit} TE requests/min: time for "
            f"{len(times)} requests ({sent} insights)",
            f"{actual:.0f} s (ideal {ideal:.0f} s)",
            "",
            None,
        ),
        Row("achieved rate / limit", f"{efficiency:.3f}", ">= 0.95", efficiency >= 0.95),
        Row("HTTP 429 answers while draining", str(rejected), "0", rejected == 0),
    ]


# --- 5. bookkeeping ----------------------------------------------------------------------


def bookkeeping(archives: int) -> list[Row]:
    folder = fresh("bookkeeping")
    with Sandbox(folder / "sandbox", seed=False, te_requests_per_minute=10**7) as sandbox:
        add_backlog(sandbox, archives, contacts=500)
        config = config_file(folder, sandbox)
        # one download at a time, so that wall time minus network time is bookkeeping
        config.write_text(
            config.read_text().replace(
                "page_size = 100", "page_size = 100\nmax_parallel_downloads = 1"
            )
        )
        events, _rss = run_once(config)
    shutil.rmtree(folder)
    finished = summary(events)
    outside = finished["duration_seconds"] - finished["network_seconds"]
    per_archive = 1000 * outside / archives
    fsync_ms = fsync_latency_ms(WORK)
    return [
        Row(
            f"bookkeeping outside network I/O, {archives:,} tiny archives (pass "
            f"{finished['duration_seconds']:.0f} s, network {finished['network_seconds']:.0f} s)",
            f"{per_archive:.2f} ms per archive",
            "< 2 ms",
            per_archive < 2,
        ),
        Row(
            "of which durability: 4 fsyncs per archive (file, record, folder, new folder "
            "entry) at this disk's fsync latency",
            f"{4 * fsync_ms:.2f} ms ({fsync_ms:.2f} ms each)",
            "",
            None,
        ),
    ]


def fsync_latency_ms(folder: Path, count: int = 200) -> float:
    """What one small write + fsync costs on the disk the archives go to."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    started = time.perf_counter()
    for _ in range(count):
        os.write(fd, b"x" * 512)
        os.fsync(fd)
    os.close(fd)
    path.unlink()
    return 1000 * (time.perf_counter() - started) / count


# --- 6. history --------------------------------------------------------------------------


def history(sizes: list[int], rounds: int) -> list[Row]:
    """What years of history cost: state files of ``sizes`` claimed archives (two sent
    insights each), then the idle pass, status, status --json and export (to /dev/null)."""
    rows = []
    for size in sizes:
        folder = fresh(f"history-{size}")
        write_history(folder / "state.db", size)
        with Sandbox(folder / "sandbox", seed=False) as sandbox:  # nothing new upstream
            config = config_file(folder, sandbox)
            idle = timed(config, rounds, "run-once")
            table = timed(config, rounds, "status")
            dump = timed(config, rounds, "status", "--json")
            export = timed(config, rounds, "export")
        big = size >= 10**6
        rows += [
            Row(
                f"{size:,} claimed archives: idle pass",
                _seconds_and_rss(idle),
                "< 1 s, < 80 MiB at 10^6" if big else "",
                (idle[0] < 1 and idle[1] < 80) if big else None,
            ),
            Row(
                f"{size:,} claimed archives: status",
                _seconds_and_rss(table),
                "< 1 s, < 80 MiB at 10^6" if big else "",
                (table[0] < 1 and table[1] < 80) if big else None,
            ),
            Row(
                f"{size:,} claimed archives: status --json > /dev/null",
                f"{_seconds_and_rss(dump)}, {dump[0] / size * 1e6:.1f} µs per archive",
                "< 100 MiB flat; time linear" if big else "",
                dump[1] < 100 if big else None,
            ),
            Row(
                f"{size:,} claimed archives: export > /dev/null",
                f"{_seconds_and_rss(export)}, {export[0] / size * 1e6:.1f} µs per archive",
                "<= 2x status --json per archive, < 100 MiB, at 10^6" if big else "",
                (export[0] <= 2 * dump[0] and export[1] < 100) if big else None,
            ),
        ]
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def timed(config: Path, rounds: int, *args: str) -> tuple[float, float]:
    """Median wall time (s) and median peak RSS (MiB) of ``sync-worker ARGS``; its data
    goes nowhere (it is not kept in memory here either)."""
    seconds, peaks = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        _log, code, peak = run_measured(config, *args)
        seconds.append(time.perf_counter() - started)
        if code != 0:
            raise RuntimeError(f"sync-worker {' '.join(args)} failed with {code}")
        peaks.append(peak)
    return statistics.median(seconds), statistics.median(peaks)


def _seconds_and_rss(figures: tuple[float, float]) -> str:
    return f"{figures[0]:.2f} s, {figures[1]:.0f} MiB"


def write_history(database: Path, archives: int) -> None:
    """A state file (the worker's own schema) with ``archives`` claimed archives, each with
    two participants matched and two insights sent, first seen a minute apart."""
    open_database(database).close()
    db = sqlite3.connect(database)
    record = {
        "status": "ABANDONED",
        "error": None,
        "sha256CheckSum": "ab" * 32,
        "created_at": "2024-11-20T10:02:11Z",
        "size": 48213,
    }
    with db:
        db.executemany(
            "insert into archives (archive_id, conference_id, state, remote_status, sha256, "
            "record, path, size, first_seen_at, stored_at, claimed_at, attempts) "
            "values (?, ?, 'claimed', 'ABANDONED', ?, ?, ?, 48213, ?, ?, ?, 0)",
            (
                (
                    f"a-{n:08d}",
                    f"c-{n}",
                    "ab" * 32,
                    json.dumps({**record, "id": f"a-{n:08d}", "subject": _subject(n)}),
                    f"/var/lib/sync-worker/archives/c-{n}/a-{n:08d}.zip",
                    1.6e9 + 60 * n,
                    1.6e9 + 60 * n + 5,
                    1.6e9 + 60 * n + 6,
                )
                for n in range(archives)
            ),
        )
        for person in (1, 2):
            db.executemany(
                "insert into participants (archive_id, email, name, moderator_email, state, "
                "attempts) values (?, ?, 'Customer', 'expert@bank.example', 'matched', 0)",
                (
                    (f"a-{n:08d}", f"customer{n % 5000}-{person}@example.org")
                    for n in range(archives)
                ),
            )
            db.executemany(
                "insert into insights (archive_id, contact_id, owner_id, email, state, "
                "te_insight_id, sent_at, attempts) values (?, ?, 50, ?, 'sent', ?, ?, 0)",
                (
                    (
                        f"a-{n:08d}",
                        10 * n + person,
                        f"customer{n % 5000}-{person}@example.org",
                        2 * n + person,
                        1.6e9 + 60 * n + 7,
                    )
                    for n in range(archives)
                ),
            )
    db.close()


def _subject(n: int) -> dict:
    return {
        "conference_id": f"c-{n}",
        "start": "2024-11-20T09:00:00Z",
        "end": "2024-11-20T09:45:00Z",
        "moderator": {"account_id": "e-17", "email": "expert@bank.example", "name": "Expert"},
        "participants": [
            {
                "account_id": f"p-{n}-{i}",
                "email": f"customer{n % 5000}-{i}@example.org",
                "name": "Customer",
            }
            for i in (1, 2)
        ],
    }


# --- 7. the S3 store ----------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """An S3 endpoint and bucket the S3 rows write to (moto started here, or --s3-endpoint);
    each use takes a prefix of its own (a state file owns its prefix)."""

    endpoint: str
    name: str
    region: str
    access_key: str
    secret_key: str

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def storage(self, spool: Path, prefix: str, concurrency: int | None = None) -> StorageConfig:
        more = {} if concurrency is None else {"upload_concurrency": concurrency}
        return StorageConfig(
            backend="s3",
            archive_dir=spool,
            bucket=self.name,
            prefix=prefix,
            endpoint_url=self.endpoint,
            region=self.region,
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            **more,
        )

    def worker_env(self, prefix: str) -> dict[str, str]:
        """The worker's [storage] for this bucket, as environment variables."""
        settings = {
            "BACKEND": "s3",
            "BUCKET": self.name,
            "PREFIX": prefix,
            "ENDPOINT_URL": self.endpoint,
            "REGION": self.region,
            "ACCESS_KEY_ID": self.access_key,
            "SECRET_ACCESS_KEY": self.secret_key,
        }
        return {f"SYNC_WORKER_STORAGE_{key}": value for key, value in settings.items()}

    def empty(self, prefix: str) -> None:
        """Delete what the bench wrote under ``prefix`` (moto keeps it all in memory)."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        ):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=self.name, Key=item["Key"])


@contextmanager
def s3_bucket(endpoint: str | None, name: str) -> Iterator[Bucket]:
    """The bucket at ``endpoint`` (keys and region from BENCH_S3_ACCESS_KEY,
    BENCH_S3_SECRET_KEY, BENCH_S3_REGION), else one on a moto server started for the
    purpose in a process of its own, as a remote store would be."""
    if endpoint:
        yield Bucket(
            endpoint,
            name,
            os.environ.get("BENCH_S3_REGION", "us-east-1"),
            os.environ["BENCH_S3_ACCESS_KEY"],
            os.environ["BENCH_S3_SECRET_KEY"],
        )
        return
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        bucket = Bucket(f"http://127.0.0.1:{port}", name, "eu-central-1", "bench", "bench")
        wait_until_up(bucket)
        bucket.client().create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": bucket.region}
        )
        yield bucket
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_until_up(bucket: Bucket, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            bucket.client().list_buckets()
            return
        except Exception:  # not up yet, whatever the client says
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def spooled_file(folder: Path, size: int) -> tuple[Path, str, tuple[bytes, ...]]:
    """A file of ``size`` random bytes, fsynced, its sha256 and the SHA-256 of each of its
    upload's parts, as the spool holds it (its verifying read gives both)."""
    path, digest, parts = folder / "spooled.zip", hashlib.sha256(), []
    part_size = part_size_for(size)
    with path.open("wb") as handle:
        for offset in range(0, size, part_size):
            data = os.urandom(min(part_size, size - offset))
            handle.write(data)
            digest.update(data)
            parts.append(hashlib.sha256(data).digest())
        handle.flush()
        os.fsync(handle.fileno())
    return path, digest.hexdigest(), tuple(parts)


def s3_upload(bucket: Bucket, size: int, repeats: int, concurrencies: list[int]) -> list[Row]:
    """The upload alone, of one spooled file: the worker's (in parts, each with the SHA-256
    the spool's verifying read gave, and checked as sent; not the confirmation) at each
    concurrency, and boto3's ``upload_file`` with its default TransferConfig, taking turns
    on the same endpoint: as it comes (a CRC32 of each part), and asked for the SHA-256 of
    each part, as the worker sends (the store then checks and keeps the same checksum for
    both); then the read back alone."""
    folder = fresh("s3-upload")
    path, sha256, parts = spooled_file(folder, size)
    client = bucket.client()
    seconds: dict[str, list[float]] = {"boto3": [], "boto3 sha256": [], "read back": []}
    same_checksum = {"ChecksumAlgorithm": "SHA256"}
    default = StorageConfig.__dataclass_fields__["upload_concurrency"].default
    for attempt in range(repeats):
        prefix = f"bench-upload-{os.getpid()}-{attempt}/"
        for concurrency in concurrencies:
            storage = bucket.storage(folder / "spool", prefix, concurrency)
            store = S3Store(storage, HttpConfig())
            # the store's own client (the same arguments: one per configuration)
            client = client_for(storage, HttpConfig(), Route(), max(10, concurrency + 1))
            uploader = Uploader(client, bucket.name, concurrency)
            key = f"{prefix}worker-{concurrency}.zip"
            started = time.perf_counter()
            uploader.upload(path, key, sha256, size, parts)
            seconds.setdefault(f"worker {concurrency}", []).append(time.perf_counter() - started)
            if concurrency == default:
                started = time.perf_counter()
                read_back(store, f"s3://{bucket.name}/{key}", sha256)
                seconds["read back"].append(time.perf_counter() - started)
            bucket.empty(prefix)  # one object at a time: moto holds them in memory
        for name, extra in (("boto3", None), ("boto3 sha256", same_checksum)):
            started = time.perf_counter()
            client.upload_file(str(path), bucket.name, f"{prefix}boto3.zip", ExtraArgs=extra)
            seconds[name].append(time.perf_counter() - started)
            bucket.empty(prefix)
    shutil.rmtree(folder)
    rate = {name: size / statistics.median(times) / MIB for name, times in seconds.items()}
    rows = [
        Row(
            f"S3 upload alone, {size // MIB} MiB spooled file: worker, {n} part(s) at a time",
            f"{rate[f'worker {n}']:,.0f} MB/s",
            "",
            None,
        )
        for n in concurrencies
    ]
    ratio = rate[f"worker {default}"] / rate["boto3"]
    same = rate[f"worker {default}"] / rate["boto3 sha256"]
    return [
        *rows,
        Row(
            "S3 upload alone: boto3 upload_file, default TransferConfig (CRC32 per part)",
            f"{rate['boto3']:,.0f} MB/s",
            "",
            None,
        ),
        Row(
            "S3 upload alone: boto3 upload_file, default TransferConfig, SHA-256 per part",
            f"{rate['boto3 sha256']:,.0f} MB/s",
            "",
            None,
        ),
        Row(
            f"S3 upload ratio worker (upload_concurrency {default}) / boto3 upload_file",
            f"{ratio:.2f} (CRC32), {same:.2f} (SHA-256, as the worker)",
            ">= 1.0",
            ratio >= 1.0,
        ),
        Row(
            "S3 read back alone (the worker's, hashed as it comes)",
            f"{rate['read back']:,.0f} MB/s",
            "",
            None,
        ),
    ]


def read_back(store: S3Store, location: str, sha256: str) -> None:
    """Read a stored archive back through the store, hashed as it comes, as the worker's
    confirmation does where the store shows no checksum."""
    digest = hashlib.sha256()
    for chunk in store.read(location):
        digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise SystemExit(f"{location} does not hash to {sha256}")


def s3_store(bucket: Bucket, size: int, repeats: int) -> list[Row]:
    """A whole pass for an archive of ``size`` into the bucket: the worker's download,
    verification and upload, confirmed (by reading it back where the store shows no
    checksum of an upload in parts, as moto), against the same steps by hand with curl,
    sha256sum, boto3's ``upload_file`` and a read back; and the worker's peak RSS."""
    worker, by_hand, peaks = [], [], []
    for attempt in range(repeats):
        folder = fresh(f"s3-{attempt}")
        prefix = f"bench-pass-{os.getpid()}-{attempt}/"
        with Sandbox(folder / "sandbox", seed=False) as box:
            record = box.flexperto.add_archive(size=size, participants=[])
            config = config_file(folder, box)
            events, peak = run_once(config, bucket.worker_env(prefix))
            listed = next(e for e in events if e["event"] == "archive.listed")
            stored = next(e for e in events if e["event"] == "archive.stored")
            worker.append(event_time(stored) - event_time(listed))
            peaks.append(peak)
            by_hand.append(copy_by_hand(config, record["id"], folder, bucket, prefix))
        bucket.empty(prefix)
        shutil.rmtree(folder)
    ours, theirs = statistics.median(worker), statistics.median(by_hand)
    ratio = theirs / ours
    return [
        Row(
            f"download+verify+upload+read back {size // MIB} MiB to S3 (worker)",
            f"{size / ours / MIB:,.0f} MB/s",
            "",
            None,
        ),
        Row(
            "by hand: curl to a file, sha256sum, boto3 upload_file, read back",
            f"{size / theirs / MIB:,.0f} MB/s",
            "",
            None,
        ),
        Row("S3 whole pass ratio worker / by hand", f"{ratio:.2f}", ">= 1.0", ratio >= 1.0),
        Row(
            f"peak RSS of run-once, {size // MIB} MiB archive to S3",
            f"{max(peaks):.0f} MiB",
            "< 100 MiB",
            max(peaks) < 100,
        ),
    ]


def copy_by_hand(config: Path, archive_id: str, folder: Path, bucket: Bucket, prefix: str) -> float:
    """Seconds to do what the worker does with standard tools, one step after another."""
    settings = load_config(config, env={})
    client = FlexpertoClient(settings.flexperto, settings.http, SystemClock())
    url = client.download_url(archive_id)
    client.close()
    copy, key = folder / "by-hand.zip", f"{prefix}by-hand.zip"
    s3 = bucket.client()
    started = time.perf_counter()
    subprocess.run(["curl", "-s", "-o", str(copy), url], check=True)
    subprocess.run(["sha256sum", str(copy)], check=True, stdout=subprocess.DEVNULL)
    s3.upload_file(str(copy), bucket.name, key)
    body = s3.get_object(Bucket=bucket.name, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in body.iter_chunks(MIB):
        digest.update(chunk)
    return time.perf_counter() - started


def s3_rows(args: argparse.Namespace) -> list[Row]:
    q = args.quick
    with s3_bucket(args.s3_endpoint, args.s3_bucket) as bucket:
        return [
            *s3_upload(
                bucket, 64 * MIB if q else 2 * GIB, 1 if q else 3, [1, 4] if q else [1, 2, 4, 8]
            ),
            *s3_store(bucket, 64 * MIB if q else 2 * GIB, 1 if q else 3),
        ]


# --- 8. webhook latency ------------------------------------------------------------------


def latency(archives: int, interval: int) -> list[Row]:
    """Seconds from "an archive becomes available" to "stored", for the daemon polling every
    ``interval`` seconds, without and with the webhook. Each archive comes at a random
    moment of the interval, as they do in life."""
    rng = random.Random(11)
    polled = daemon_latencies(archives, interval, webhook=False, rng=rng)
    hooked = daemon_latencies(archives, interval, webhook=True, rng=rng)
    return [
        Row(
            f"available -> stored, polling every {interval} s ({archives} archives)",
            f"median {statistics.median(polled):.2f} s, max {max(polled):.2f} s",
            "",
            None,
        ),
        Row(
            "available -> stored, with the webhook",
            f"median {statistics.median(hooked):.2f} s, max {max(hooked):.2f} s",
            "max < 5 s",
            max(hooked) < 5,
        ),
    ]


def daemon_latencies(
    archives: int, interval: int, webhook: bool, rng: random.Random
) -> list[float]:
    folder = fresh(f"latency-{'webhook' if webhook else 'polling'}")
    with Sandbox(folder / "sandbox", seed=False) as sandbox:
        add_backlog(sandbox, 0, contacts=10)
        port = free_port()
        extra = f"[schedule]\ninterval_seconds = {interval}\n"
        if webhook:
            extra += (
                f'[webhook]\nlisten = "127.0.0.1:{port}"\n'
                f'public_url = "http://127.0.0.1:{port}/hooks"\n'
            )
        daemon = start_worker(
            "--log-format", "json", "run", config=config_file(folder, sandbox, extra)
        )
        latencies = []
        try:
            wait_for(daemon, lambda e: e["event"] == "run.finished" and e["jobs"] == ["archives"])
            if webhook:
                while not sandbox.flexperto.webhooks.subscriptions():
                    time.sleep(0.05)
            for n in range(archives):
                time.sleep(rng.uniform(0, interval))
                became_available = time.time()
                record = sandbox.flexperto.add_archive(
                    moderator=EXPERT,
                    content=b"latency %d" % n,
                    participants=[{"account_id": "p", "email": "c0@example.org", "name": "P"}],
                )
                stored = wait_for(
                    daemon,
                    lambda e, rid=record["id"]: (
                        e["event"] == "archive.stored" and e["archive_id"] == rid
                    ),
                )
                latencies.append(event_time(stored) - became_available)
        finally:
            daemon.terminate()
            daemon.communicate(timeout=60)
    shutil.rmtree(folder)
    return latencies


def wait_for(process: subprocess.Popen, found) -> dict:
    """The first event of ``process`` that ``found`` accepts."""
    for line in process.stderr:
        if line.startswith("{") and found(event := json.loads(line)):
            return event
    raise RuntimeError("the daemon ended early")


# --- 9. two tenants, one limit ------------------------------------------------------------


def tenants_drain(archives_each: tuple[int, int], limit: int) -> list[Row]:
    """Two tenants with backlogs of different sizes on one TE limit, in one run: the rate
    they reach together, their 429s, and when the smaller backlog was done."""
    folder = fresh("tenants")
    a = Sandbox(folder / "sandbox-a", seed=False, te_requests_per_minute=limit).start()
    b = Sandbox(folder / "sandbox-b", seed=False).start()
    try:
        te = a.totalexpert
        add_backlog(a, archives_each[0], contacts=200)
        for n in range(archives_each[1]):
            b.flexperto.add_archive(
                moderator=EXPERT,
                content=b"tenant b %d" % n,
                participants=[{"account_id": "p", "email": f"c{n % 200}@example.org", "name": "P"}],
            )
        config = folder / "config.toml"
        config.write_text(tenants_toml(a, {"a": a, "b": b}))
        events, _peak = run_once(config)
        times = sorted(r.received_at for r in te.requests)
        rejected = te.rate_limited_count
    finally:
        a.stop()
        b.stop()
    shutil.rmtree(folder)
    ideal = 60.0 * ((len(times) - 1) // limit)
    actual = times[-1] - times[0]
    efficiency = ideal / actual if ideal else 1.0
    finished = {
        name: max(
            event_time(e) for e in events if e["event"] == "insight.sent" and e["tenant"] == name
        )
        - times[0]
        for name in ("a", "b")
    }
    return [
        Row(
            f"two tenants, {archives_each[0]} + {archives_each[1]} archives, one TE limit of "
            f"{limit}/min: time for {len(times)} requests",
            f"{actual:.0f} s (ideal {ideal:.0f} s); small backlog done at {finished['b']:.0f} s, "
            f"large at {finished['a']:.0f} s",
            "",
            None,
        ),
        Row("achieved rate of both / limit", f"{efficiency:.3f}", ">= 0.9", efficiency >= 0.9),
        Row("HTTP 429 answers while both drained", str(rejected), "0", rejected == 0),
    ]


# --- report ------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )


def report(rows: list[Row], elapsed: float, quick: bool) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- run: `python bench/run.py{' --quick' if quick else ''}` ({elapsed:.0f} s)",
        "",
        "| measure | figure | goal | |",
        "|---|---|---|---|",
        *(row.markdown() for row in rows),
    ]
    return "\n".join(lines) + "\n"


PARTS = {
    "throughput": lambda q, _a: throughput(64 * MIB if q else GIB, 1 if q else 3),
    "memory": lambda q, _a: memory([16 * MIB, 32 * MIB] if q else [256 * MIB, GIB, 2 * GIB]),
    "te": lambda q, _a: te_requests(100 if q else 1000, 2000 if q else 20_000, 5 if q else 10, 5),
    "small-org": lambda q, _a: small_org(300, 20 if q else 60, 3),
    "drain": lambda q, _a: drain(200 if q else 2000, 600),
    "bookkeeping": lambda q, _a: bookkeeping(500 if q else 10_000),
    "history": lambda q, _a: history([10**3, 10**4] if q else [10**3, 10**5, 10**6], 1 if q else 3),
    "s3": lambda _q, args: s3_rows(args),
    "latency": lambda q, _a: latency(3 if q else 10, 10 if q else 30),
    "tenants": lambda q, _a: tenants_drain((100, 50) if q else (1200, 400), 600),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the sync worker on loopback.")
    parser.add_argument("--quick", action="store_true", help="small sizes, to test the script")
    parser.add_argument(
        "--only",
        choices=list(PARTS),
        action="append",
        help="run only this part (may be repeated); the table is printed, no results file written",
    )
    parser.add_argument(
        "--s3-endpoint",
        help="the S3 rows against this endpoint (keys and region from BENCH_S3_ACCESS_KEY, "
        "BENCH_S3_SECRET_KEY, BENCH_S3_REGION) instead of a moto server started here",
    )
    parser.add_argument("--s3-bucket", default="bench", help="the bucket of the S3 rows")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = [row for name in args.only or PARTS for row in PARTS[name](args.quick, args)]
    text = report(rows, time.monotonic() - started, args.quick)
    print(text)
    if not args.only:
        (HERE / ("results-quick.md" if args.quick else "results.md")).write_text(text)
    shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
