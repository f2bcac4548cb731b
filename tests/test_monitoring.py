"""monitoring/alerts.yml: valid rules that fire when they should (promtool, when it is
installed: CI installs it), and that name only metrics the worker exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from sync_worker import metrics

MONITORING = Path(__file__).parents[1] / "monitoring"


def rules() -> list[dict]:
    document = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def exported_names() -> set[str]:
    names = set()
    for family in metrics.families().values():
        suffix = "_total" if family.type == "counter" else ""
        names.add(family.name + suffix)
    return names


def test_every_rule_is_complete_and_names_only_exported_metrics():
    exported = exported_names()
    for rule in rules():
        assert rule["alert"].startswith("SyncWorker")
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        used = set(re.findall(r"\bsync_worker_\w+", rule["expr"]))
        assert used and used <= exported, f"{rule['alert']} uses {used - exported}"


def test_promtool_accepts_the_rules_and_their_unit_tests():
    promtool = shutil.which("promtool")
    if promtool is None:  # not installable here: the checks above are what we have
        assert rules()
        return
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        done = subprocess.run(
            [promtool, *command], cwd=MONITORING, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
