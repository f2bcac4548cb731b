"""monitoring/: the alert rules, valid and firing when they should (promtool, when it is
installed: CI installs it), and the Grafana dashboard; both name only metrics the worker
exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sync_worker.ops import metrics

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


@pytest.mark.fast
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


# Grafana's variables, as PromQL that promtool can parse in their place.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$tenant": ".*"}
TOPICS = {"Backlog", "Throughput", "Failures", "Total Expert budget", "Audits"}


def dashboard() -> dict:
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())


def queries() -> list[tuple[str, str]]:
    """Every PromQL expression of the dashboard, as (panel title, expression)."""
    found = []
    for panel in dashboard()["panels"]:
        found += [(panel["title"], target["expr"]) for target in panel.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"${variable['name']}", variable["query"]["query"]))
    return found


@pytest.mark.fast
def test_every_dashboard_query_names_only_exported_metrics():
    exported = exported_names()
    for title, expr in queries():
        used = set(re.findall(r"\bsync_worker_\w+", expr))
        assert used and used <= exported, f"{title!r} uses {used - exported}"


@pytest.mark.fast
def test_the_dashboard_covers_each_topic_from_a_chosen_datasource():
    document = dashboard()
    assert document["schemaVersion"] >= 39  # Grafana 10 and later
    rows = [panel["title"] for panel in document["panels"] if panel["type"] == "row"]
    assert set(rows) == TOPICS
    variables = {variable["name"]: variable for variable in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    graphs = [panel for panel in document["panels"] if panel["type"] != "row"]
    assert len({panel["id"] for panel in document["panels"]}) == len(document["panels"])
    for panel in graphs:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_promtool_parses_every_dashboard_query(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:  # not installable here: the names are checked above
        assert queries()
        return
    recorded = []
    for index, (_title, expr) in enumerate(queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        if not expr.startswith("label_values("):  # Grafana's own function, not PromQL
            recorded.append({"record": f"dashboard:query_{index}", "expr": expr})
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": recorded}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
