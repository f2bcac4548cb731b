"""The shape of the code: imports go one way only, and everything installs under
sync_worker.

Layers, lowest first: helpers (clock, config, logs, ...), then the adapters (the API
clients, the archive stores, the state file), then the jobs, then what runs them (runner,
check, status, manifest), the daemon and the demo, and the command line on top. A module
may import from lower layers, and from its own subpackage (state, jobs, sandbox,
flexperto, stores); nothing imports upwards, and the API clients and the state file do
not import each other.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
# Where the installed subpackages live in the repository (pyproject's package-dir).
FOLDERS = {"sync_worker.jobs": ROOT / "jobs", "sync_worker.state": ROOT / "state"}
LAYERS = {
    "sync_worker.clock": 0,
    "sync_worker.errors": -1,
    "sync_worker.closed_stdout": 0,
    "sync_worker.config": 0,
    "sync_worker.config_show": 1,
    "sync_worker.logs": 0,
    "sync_worker.private_files": 0,
    "sync_worker.untrusted": 0,
    # the download policy imports nothing of ours; config validates its entries with it
    "sync_worker.flexperto.download_targets": -1,
    # how each service is reached (proxy, CA bundle); config validates its keys with it
    "sync_worker.network": -1,
    "sync_worker.http": 1,
    "sync_worker.locks": 1,
    "sync_worker.progress": 1,
    "sync_worker.flexperto.records": 1,
    "sync_worker.sandbox": 1,
    "sync_worker.flexperto.client": 2,
    "sync_worker.totalexpert": 2,
    "sync_worker.stores": 2,
    "sync_worker.healthcheck": 2,
    "sync_worker.state": 2,
    "sync_worker.jobs": 3,
    # the passes' rendering (the jobs' outcomes), for status and the history command
    "sync_worker.history": 4,
    "sync_worker.runner": 4,
    "sync_worker.checks": 4,
    "sync_worker.status": 5,
    "sync_worker.metrics": 4,
    "sync_worker.webhook_receiver": 2,
    "sync_worker.manifest": 4,
    "sync_worker.scheduler": 5,
    "sync_worker.demo": 5,
    "sync_worker.command_docs": 5,
    "sync_worker.cli": 6,
    "sync_worker.__main__": 7,
    "sync_worker": 7,
}
SUBPACKAGES = (
    "sync_worker.config",
    "sync_worker.state",
    "sync_worker.jobs",
    "sync_worker.sandbox",
    "sync_worker.flexperto",
    "sync_worker.stores",
    "sync_worker.totalexpert",
)


def modules() -> dict[str, Path]:
    """Every module of the installed package, by name, and its file in the repository."""
    found = {}
    for package, folder in {"sync_worker": ROOT / "sync_worker", **FOLDERS}.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def layer(module: str) -> int:
    """The layer of a module: that of the longest declared prefix of its name."""
    prefixes = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    assert prefixes, f"{module} has no layer: add it to LAYERS"
    return LAYERS[max(prefixes, key=len)]


def subpackage(module: str) -> str | None:
    return next((p for p in SUBPACKAGES if module == p or module.startswith(p + ".")), None)


def imports(path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``path`` imports (a name imported from a package counts
    as the module of that name when there is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return {name for name in found if name.split(".")[0] == "sync_worker"}


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_only(module):
    wrong = []
    for target in imports(MODULES[module], set(MODULES)):
        same_subpackage = subpackage(module) is not None and subpackage(module) == subpackage(
            target
        )
        if not same_subpackage and layer(target) >= layer(module):
            wrong.append(f"{module} (layer {layer(module)}) imports {target} ({layer(target)})")
    assert wrong == []


def test_only_sync_worker_is_installed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "sync_worker" or p.startswith("sync_worker.") for p in setuptools["packages"])
    declared = {name: ROOT / folder for name, folder in setuptools["package-dir"].items()}
    assert declared == FOLDERS
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages == set(setuptools["packages"])
