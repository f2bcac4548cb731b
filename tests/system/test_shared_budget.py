"""Several workers of one host, each with its own Flexperto tenant and state file, share one
Total Expert (same client) through a shared budget file: together they stay under TE's
per-minute limit, and one token serves them all.

Real processes on the real clock: the limit binds, so the test takes a minute (TE's window).
"""

from __future__ import annotations

import json
from pathlib import Path

from sync_worker.sandbox import Sandbox
from sync_worker.sandbox.worker_process import start_worker

WORKERS = 3
ARCHIVES_EACH = 3
LIMIT = 15  # TE requests per minute, for the three workers together
EXPERT = {"account_id": "e-1", "email": "expert@bank.example", "name": "Expert"}


def shared_te_config(own: Sandbox, shared: Sandbox, folder: Path, budget: Path) -> Path:
    """A config for ``own``'s Flexperto and ``shared``'s TE, with the shared budget."""
    text = own.config_toml("archives", "state.db")
    for mine, theirs in (
        (own.totalexpert_url, shared.totalexpert_url),
        (own.client_id, shared.client_id),
        (own.client_secret, shared.client_secret),
    ):
        text = text.replace(json.dumps(mine), json.dumps(theirs))
    text = text.replace("requests_per_minute = 1000", f"requests_per_minute = {LIMIT}").replace(
        "[storage]", f"shared_budget = {json.dumps(str(budget))}\n[storage]"
    )
    path = folder / "config.toml"
    path.write_text(text)
    return path


def test_three_workers_with_one_shared_budget_drain_without_a_429(tmp_path):
    budget = tmp_path / "te-budget.db"
    boxes = [
        Sandbox(tmp_path / f"tenant-{n}" / "sandbox", seed=False, te_requests_per_minute=LIMIT)
        for n in range(WORKERS)
    ]
    try:
        for box in boxes:
            box.start()
        te = boxes[0].totalexpert
        expert = te.add_user(EXPERT["email"])
        te.add_insight_type("flexperto_conference_archived")
        for n, box in enumerate(boxes):
            for k in range(ARCHIVES_EACH):
                email = f"client-{n}-{k}@example.org"
                te.add_contact(email, expert["id"])
                box.flexperto.add_archive(
                    moderator=EXPERT,
                    content=b"archive %d %d" % (n, k),
                    participants=[{"account_id": "p", "email": email, "name": "P"}],
                )
        workers = [
            start_worker(
                "--log-format",
                "json",
                "run-once",
                config=shared_te_config(box, boxes[0], tmp_path / f"tenant-{n}", budget),
            )
            for n, box in enumerate(boxes)
        ]
        outputs = [worker.communicate(timeout=300) for worker in workers]
        assert [worker.returncode for worker in workers] == [0] * WORKERS, outputs
        assert len(te.insights()) == WORKERS * ARCHIVES_EACH
        assert len(te.requests) > LIMIT  # the limit bound: the workers had to share it
        assert te.rate_limited_count == 0
        assert te.max_requests_in_window(60) <= LIMIT
        assert te.token_requests == te.tokens_issued == 1
    finally:
        for box in boxes:
            box.stop()
