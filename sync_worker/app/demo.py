"""``sync-worker demo`` and ``sync-worker sandbox``: the worker against the built-in sandbox."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sync_worker.adapters.webhook_receiver import WebhookReceiver
from sync_worker.app.runner import run_pass
from sync_worker.config import Config, ConfigError, load_config
from sync_worker.core import logs
from sync_worker.core.clock import SystemClock
from sync_worker.jobs.webhook_subscription import accepted_secrets
from sync_worker.sandbox import LENIENT, Dialect, Fault, Sandbox, free_port
from sync_worker.sandbox.seed import ANNA, MAX
from sync_worker.state import reports
from sync_worker.state.db import open_database

MARKER = ".sync-worker-demo"
WEBHOOK_WAIT_SECONDS = 10.0


def run(folder: Path, dialect: Dialect = LENIENT, storage: str = "local") -> int:
    """Start the sandbox, run one pass against it, and say what happened; then show a
    new archive claimed on the sandbox's webhook call."""
    _fresh_folder(folder)
    with Sandbox(folder / "sandbox", dialect=dialect, storage=storage) as sandbox:
        config_file = folder / "config.toml"
        listen = f"127.0.0.1:{free_port()}"
        config_file.write_text(
            sandbox.config_toml("archives", "state.db")
            + f'[webhook]\nlisten = "{listen}"\n'
            + f'public_url = "http://{listen}/callbacks/flexperto"\n',
            encoding="utf-8",
        )
        config_file.chmod(0o600)
        config = load_config(config_file, env={})
        for secret in config.secrets():
            logs.add_secret(secret)
        result = run_pass(config, SystemClock())
        print(_report(sandbox, config.state.database, config_file))
        webhook_code, told = _webhook_round(sandbox, config)
        print(told)
    return max(result.exit_code, webhook_code)


def _webhook_round(sandbox: Sandbox, config: Config) -> tuple[int, str]:
    """Subscribe, add an archive to the sandbox, and claim it when its webhook comes, as
    the daemon does; says how long it took."""
    clock = SystemClock()
    woken = threading.Event()
    receiver = WebhookReceiver(config.webhook.listen, lambda _tenant: woken.set()).start()
    try:
        subscribed = run_pass(config, clock, jobs=["webhook"])
        receiver.accept(config.tenant, accepted_secrets(config, clock.now()))
        started = time.monotonic()
        record = sandbox.flexperto.add_archive(moderator=ANNA, participants=[MAX])
        if not woken.wait(WEBHOOK_WAIT_SECONDS):
            return 1, "Webhook: none came; the next poll would have claimed the archive"
        heard = time.monotonic() - started
        claimed = run_pass(config, clock)
        done = time.monotonic() - started
    finally:
        receiver.shutdown()
    status = sandbox.flexperto.record(record["id"])["status"]
    told = (
        f"Webhook: archive {record['id']} became available; Flexperto's call came "
        f"{heard * 1000:.0f} ms later, and the archive was stored and {status} "
        f"{done:.2f} s after it became available (polling: up to "
        f"{config.schedule.interval_seconds} s)."
    )
    return max(subscribed.exit_code, claimed.exit_code), told


def _fresh_folder(folder: Path) -> None:
    if folder.exists():
        if not (folder / MARKER).exists():
            raise ConfigError(f"{folder} exists and is not a demo folder; choose another --dir")
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700, parents=True)
    (folder / MARKER).touch()


def _report(sandbox: Sandbox, database: Path, config_file: Path) -> str:
    db = open_database(database)
    try:
        archives = list(reports.archives_with_insights(db))
    finally:
        db.close()
    lines = ["", "Demo pass against the sandbox", "============================="]
    for archive in archives:
        remote = sandbox.flexperto.record(archive["archive_id"])["status"]
        lines.append(
            f"archive {archive['archive_id']} (conference {archive['conference_id']}): "
            f"{archive['state']}; Flexperto now says {remote}"
        )
        if archive["path"]:
            lines.append(f"  stored at {archive['path']} ({archive['size']} bytes)")
            lines.append(f"  sha256 {archive['sha256']} verified")
        for item in archive["insights"]:
            target = f"contact {item['contact_id']}" if item["contact_id"] else "no TE contact"
            insight = f", TE insight {item['te_insight_id']}" if item["te_insight_id"] else ""
            lines.append(f"  participant {item['email']}: {target}, {item['state']}{insight}")
    created = sandbox.totalexpert.insights()
    lines.append(f"Insights in the sandbox Total Expert: {len(created)}")
    for insight in created:
        lines.append(
            f"  #{insight['id']} contact {insight['contact_id']}: "
            f"{insight['data'].get('description')}"
        )
    lines.append(
        f"Config used: {config_file}; inspect with: sync-worker --config {config_file} status"
    )
    return "\n".join(lines)


def serve_sandbox(
    folder: Path, fault_specs: Sequence[str], dialect: Dialect = LENIENT, storage: str = "local"
) -> int:
    """Serve the sandbox until SIGINT/SIGTERM, printing a config that points at it."""
    faults = [Fault.parse(spec) for spec in fault_specs]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Sandbox(folder, dialect=dialect, storage=storage) as sandbox:
        for server, fault in faults:
            sandbox.add_fault(server, fault)
        print(sandbox.config_toml(str(folder / "archives"), str(folder / "state.db")), flush=True)
        while not stop.wait(1.0):
            pass
    return 0
