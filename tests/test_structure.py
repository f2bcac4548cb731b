"""The shape of the code: each folder is a layer, imports go down only and never round in
a circle, and everything installs under sync_worker.

One rule per folder (:data:`MAY_IMPORT`): what its modules may import of the project
besides their own folder. Lowest first: ``core`` (the helpers), ``config``, ``adapters``
(one per external system; the API clients and the stores do not import each other), the
state file, the jobs, the operator's commands (``ops``), then what runs it all (``app``).
The sandbox is imported by ``app`` alone, and only by the commands that use it.
"""

from __future__ import annotations

import ast
import tomllib
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
# Where the installed subpackages live in the repository (pyproject's package-dir).
FOLDERS = {"sync_worker.jobs": ROOT / "jobs", "sync_worker.state": ROOT / "state"}
CORE = "sync_worker.core"
CONFIG = "sync_worker.config"
HTTP = "sync_worker.adapters.http"
RECORDS = "sync_worker.adapters.flexperto.records"
BELOW_JOBS = (CORE, CONFIG, "sync_worker.adapters", "sync_worker.state")
MAY_IMPORT = {
    CORE: (),
    CONFIG: (CORE,),
    "sync_worker.adapters": (CORE, CONFIG, HTTP, RECORDS),
    "sync_worker.adapters.flexperto": (CORE, CONFIG, HTTP),
    "sync_worker.adapters.totalexpert": (CORE, CONFIG, HTTP),
    "sync_worker.adapters.stores": (CORE, CONFIG, HTTP),
    # the archive record, parsed once at the boundary, is what the state file keeps
    "sync_worker.state": (CORE, CONFIG, RECORDS),
    "sync_worker.jobs": BELOW_JOBS,
    "sync_worker.ops": (*BELOW_JOBS, "sync_worker.jobs"),
    "sync_worker.app": (*BELOW_JOBS, "sync_worker.jobs", "sync_worker.ops", "sync_worker.sandbox"),
    "sync_worker.sandbox": (CORE,),
    "sync_worker": ("sync_worker.app",),  # the package itself and __main__
}


def modules() -> dict[str, Path]:
    """Every module of the installed package, by name, and its file in the repository."""
    found = {}
    for package, folder in {"sync_worker": ROOT / "sync_worker", **FOLDERS}.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def folder_of(module: str) -> str:
    """The folder whose rule a module follows: the longest one holding it."""
    holding = [folder for folder in MAY_IMPORT if within(module, folder)]
    return max(holding, key=len)


def imports(path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``path`` imports, anywhere in it (a name imported from a
    package counts as the module of that name when there is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return {name for name in found if within(name, "sync_worker")}


MODULES = modules()


def allowed(module: str, target: str) -> bool:
    """Whether ``module`` may import ``target``: from its own folder, or by its rule."""
    own = folder_of(module)
    if own != "sync_worker" and within(target, own):
        return True
    return any(within(target, lower) for lower in MAY_IMPORT[own])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_rule_of_their_folder(module):
    wrong = sorted(
        f"{module} ({folder_of(module)}) imports {target}"
        for target in imports(MODULES[module], set(MODULES))
        if not allowed(module, target)
    )
    assert wrong == []


def test_no_module_sits_outside_a_folder_with_a_rule():
    loose = [m for m in MODULES if folder_of(m) == "sync_worker"]
    assert sorted(loose) == ["sync_worker", "sync_worker.__main__"]


def test_imports_never_go_round_in_a_circle():
    # A module importing the package it belongs to is no circle: the package is loaded
    # first (it may import the module back only inside a function, as open_store does).
    graph = {
        module: {t for t in imports(path, set(MODULES)) if t in MODULES and not within(module, t)}
        for module, path in MODULES.items()
    }
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"imports go round: {' -> '.join(exc.args[1])}")


def test_only_sync_worker_is_installed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "sync_worker" or p.startswith("sync_worker.") for p in setuptools["packages"])
    declared = {name: ROOT / folder for name, folder in setuptools["package-dir"].items()}
    assert declared == FOLDERS
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages == set(setuptools["packages"])


def test_tests_mirror_the_source_tree():
    """A test of a module sits in the folder that mirrors the module's (tests/sync_worker/
    for sync_worker/, tests/jobs/ and tests/state/ for jobs/ and state/)."""
    tests = ROOT / "tests"
    sources = {"sync_worker": ROOT / "sync_worker", "jobs": ROOT / "jobs", "state": ROOT / "state"}
    astray = []
    for top, source in sources.items():
        for test in (tests / top).rglob("test_*.py"):
            folder = test.parent.relative_to(tests / top)
            if not (source / folder).is_dir():
                astray.append(str(test.relative_to(ROOT)))
    assert astray == []
