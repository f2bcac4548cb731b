"""The lifecycles are declared once (state.lifecycles): every state has its moves, every
named set is made of the lifecycle's states, and no module names a state as a literal.
Whether the worker's moves are the declared ones is checked where it runs: the job tests
and the fault matrix record every move (tests/lifecycle_moves.py)."""

from __future__ import annotations

import ast
from enum import StrEnum
from pathlib import Path

import pytest

from sync_worker.state import lifecycles

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent.parent
KINDS = tuple(lifecycles.MOVES)
STATES = {state.value for kind in KINDS for state in kind}
# Where states may be written out: their declaration, and the migrations, which are history.
DECLARED = {ROOT / "state" / "lifecycles.py", ROOT / "state" / "migrations.py"}


def sources() -> list[Path]:
    found = [*ROOT.joinpath("state").glob("*.py"), *ROOT.joinpath("jobs").glob("*.py")]
    found += [p for p in ROOT.joinpath("sync_worker").rglob("*.py") if "sandbox" not in p.parts]
    return sorted(set(found) - DECLARED)


def strays(path: Path) -> list[str]:
    """Literals of a state: quoted in SQL (``'pending'``), compared with or given as a
    state, or two or more of them in one tuple, list or set."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [f"'{s}' in SQL" for s in STATES if f"'{s}'" in node.value]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if "state" in ast.unparse(node) and any(_is_state(side) for side in sides):
                found.append(ast.unparse(node))
        elif (isinstance(node, ast.keyword) and node.arg == "state" and _is_state(node.value)) or (
            isinstance(node, ast.Tuple | ast.List | ast.Set) and _states_in(node) >= 2
        ):
            found.append(ast.unparse(node))
    return [f"{path.name}: {stray}" for stray in found]


def _states_in(node: ast.Tuple | ast.List | ast.Set) -> int:
    return sum(_is_state(item) for item in node.elts)


def _is_state(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in STATES


def test_no_state_is_written_as_a_literal_outside_its_declaration():
    assert [stray for path in sources() for stray in strays(path)] == []


def test_the_stray_finder_finds_strays(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        "db.execute(\"update archives set state = 'claimed'\")\n"
        "if row.state == 'stored': pass\n"
        "close(db, state='matched')\n"
        "OPEN = ('pending', 'failed')\n"
    )
    assert len(strays(planted)) == 4


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
def test_every_state_has_its_moves_and_starts_are_its_states(kind: type[StrEnum]):
    assert set(lifecycles.MOVES[kind]) == set(kind)
    for targets in lifecycles.MOVES[kind].values():
        assert targets <= set(kind)
    assert lifecycles.STARTS[kind] <= set(kind)


@pytest.mark.parametrize(
    "named, kind",
    [
        ("ARCHIVE_OPEN", lifecycles.ArchiveState),
        ("ARCHIVE_SAFE", lifecycles.ArchiveState),
        ("ARCHIVE_UNSTORED", lifecycles.ArchiveState),
        ("ARCHIVE_FAILING", lifecycles.ArchiveState),
        ("PARTICIPANT_OPEN", lifecycles.ParticipantState),
        ("PARTICIPANT_FAILING", lifecycles.ParticipantState),
        ("PARTICIPANT_PARKED", lifecycles.ParticipantState),
        ("PARTICIPANT_WITHOUT_INSIGHT", lifecycles.ParticipantState),
        ("INSIGHT_OPEN", lifecycles.InsightState),
        ("INSIGHT_FAILING", lifecycles.InsightState),
        ("INSIGHT_RETRIED", lifecycles.InsightState),
    ],
)
def test_named_sets_are_made_of_their_lifecycles_states(named, kind):
    assert all(isinstance(state, kind) for state in getattr(lifecycles, named))


def test_safe_and_unstored_archives_split_the_states_but_claimed_is_final():
    safe, unstored = set(lifecycles.ARCHIVE_SAFE), set(lifecycles.ARCHIVE_UNSTORED)
    assert safe | unstored == set(lifecycles.ArchiveState) and not safe & unstored
    assert lifecycles.MOVES[lifecycles.ArchiveState][lifecycles.ArchiveState.CLAIMED] == set()
    # a safe archive never moves back to one that is not (it would be downloaded again)
    for state in safe:
        assert lifecycles.MOVES[lifecycles.ArchiveState][state] <= safe | {
            lifecycles.ArchiveState.GIVEN_UP
        }


def test_a_failure_leaves_an_item_in_a_declared_move():
    for kind, on_failure in (
        (lifecycles.ArchiveState, lifecycles.ARCHIVE_ON_FAILURE),
        (lifecycles.ParticipantState, lifecycles.PARTICIPANT_ON_FAILURE),
        (lifecycles.InsightState, lifecycles.INSIGHT_ON_FAILURE),
    ):
        for before, after in on_failure.items():
            assert after == before or after in lifecycles.MOVES[kind][before]
            assert lifecycles.GIVEN_UP in lifecycles.MOVES[kind][before]
