"""The manual in docs/: it builds strictly, and what it names exists in the code."""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sync_worker.app.cli import build_parser
from sync_worker.config import keys
from tests.test_monitoring import exported_names, rules

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
# Global options that take a value, so that the word after them is not the subcommand.
VALUED = {"--config", "--log-format", "--log-level", "--tenant"}
SOURCES = ("sync_worker", "jobs", "state")
CRASH_TOOL = "tests.system.crash_tool"
# Dotted words that are file names, not config keys (`http.py`).
FILE_TYPES = {"py", "md", "toml", "json", "yml", "db", "lock", "zip", "service", "timer"}


def manual() -> dict[Path, str]:
    """Every page of the manual and the README, by path."""
    pages = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]
    return {page: page.read_text() for page in pages}


def code_spans(text: str) -> list[str]:
    """The inline code spans and the lines of fenced code blocks of a markdown text."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return spans + [line for block in blocks for line in block.splitlines()]


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of a config, into ``site``."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_manual_builds_strictly(tmp_path):
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "configuration.html").is_file()


def test_a_broken_link_or_anchor_fails_the_build(tmp_path):
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + "\n[gone](storage.md#no-such-section)\n")
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-section" in result.stdout + result.stderr


def test_the_readme_links_only_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert targets, "the README should point into the manual"
    assert [t for t in targets if not (ROOT / t).is_file()] == []


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name."""
    [action] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings}


def invocations(program: str) -> list[tuple[Path, list[str]]]:
    """The words after ``program`` wherever the docs run it (at the start of a command,
    after environment variables and a path), by page."""
    start = re.compile(rf"^(?:[A-Z_]+=\S+ +)*(?:\S*/)?{re.escape(program)}(?= |$)")
    found = []
    for page, text in manual().items():
        for span in code_spans(text):
            for command in re.split(r"&&|;|(?<!\\)\||\$\(", span):
                command = command.strip().removeprefix("$ ")
                if match := start.match(command):
                    words = command[match.end() :].split("#")[0].split()
                    found.append((page, [w.strip("[]()\\") for w in words]))
    return found


def written_commands() -> list[tuple[Path, str, list[str]]]:
    """Each ``sync-worker ...`` the docs write: page, subcommand (or "") and its flags."""
    found = []
    for page, words in invocations("sync-worker"):
        command, flags, skip = "", [], False
        for word in words:
            if skip:
                skip = False
            elif word.startswith("--"):
                flags.append(word.split("=")[0])
                skip = not command and word in VALUED
            elif not command and re.fullmatch(r"[a-z][a-z-]*", word):
                command = word
        found.append((page, command, flags))
    return found


def test_every_command_and_flag_the_docs_write_exists():
    commands = subcommands()
    top = options(build_parser())
    wrong = []
    for page, command, flags in written_commands():
        if command and command not in commands:
            wrong.append(f"{page.name}: sync-worker {command}")
            continue
        known = top | (options(commands[command]) if command else set())
        wrong += [f"{page.name}: sync-worker {command} {f}" for f in flags if f not in known]
    assert wrong == []


@pytest.fixture(scope="module")
def crash_tool_flags() -> set[str]:
    """The crash tool's options, from its own ``--help``."""
    result = subprocess.run(
        [sys.executable, "-m", CRASH_TOOL, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(re.findall(r"--[a-z][a-z-]*", result.stdout))


def test_every_crash_tool_flag_the_docs_write_exists(crash_tool_flags):
    runs = [words for _, words in invocations("python") if words[:2] == ["-m", CRASH_TOOL]]
    assert runs, "the docs should show how to run the crash tool"
    written = {word for words in runs for word in words if word.startswith("--")}
    assert written - crash_tool_flags == set()


def test_every_flag_written_alone_exists(crash_tool_flags):
    every = options(build_parser()).union(*(options(p) for p in subcommands().values()))
    written = {
        (page.name, span.split()[0])
        for page, text in manual().items()
        for span in code_spans(text)
        if re.fullmatch(r"--[a-z][a-z0-9-]*( [A-Z_]+)?", span)
    }
    assert written, "the docs should name some flags"
    assert sorted(w for w in written if w[1] not in every | crash_tool_flags) == []


def source_names() -> set[str]:
    """Dotted names written as string literals in the code (event names, mostly)."""
    names = set()
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"\"([a-z_]+\.[a-z_]+)\"", path.read_text()))
    return names


@pytest.fixture(scope="module")
def declared() -> set[str]:
    return {f"{section}.{key.name}" for section, key in keys()}


def test_every_config_key_the_docs_write_exists(declared):
    sections = {name.split(".")[0] for name in declared}
    events = source_names()
    written = {
        (page.name, name)
        for page, text in manual().items()
        for span in code_spans(text)
        for name in re.findall(r"(?<![\w./-])([a-z_]+\.[a-z_]+)(?![\w./-])", span)
        if name.split(".")[0] in sections and name.split(".")[1] not in FILE_TYPES
    }
    assert any(name in declared for _, name in written)
    assert sorted(w for w in written if w[1] not in declared | events) == []


# Paths the docs write that the worker or the demo makes, not the repository.
MADE = ("demo-data/",)


def test_every_test_and_file_the_docs_cite_exists():
    tests = ROOT / "tests"
    defined = {
        name
        for path in tests.rglob("*.py")
        for name in re.findall(r"def (test_\w+)", path.read_text())
    }
    path_pattern = r"(?<![\w/.-])((?:[\w.-]+/)+[\w.-]+\.(?:py|yml|md|toml|service|timer|json))"
    missing = set()
    for page, text in manual().items():
        for span in code_spans(text):
            missing |= {
                (page.name, name)
                for name in re.findall(r"\b(test_\w+)\b", span)
                if name not in defined and not any(tests.rglob(f"{name}.py"))
            }
            missing |= {
                (page.name, path)
                for path in re.findall(path_pattern, span)
                if not path.startswith(MADE)
                and not (ROOT / path).exists()
                and not (tests / path).exists()
            }
    assert sorted(missing) == []


def logged_events() -> set[str]:
    """The event names the code logs, as written in its log calls."""
    call = re.compile(
        r"\.(?:debug|info|warning|error|exception|critical)\(\s*\"([a-z_]+\.[a-z_]+)\""
    )
    return {
        name
        for folder in SOURCES
        for path in (ROOT / folder).rglob("*.py")
        for name in call.findall(path.read_text())
    }


def test_the_manual_names_every_event_metric_and_alert():
    text = "\n".join(manual().values())
    events = logged_events()
    assert len(events) > 20  # the pattern still finds the log calls
    named = events | exported_names() | {rule["alert"] for rule in rules()}
    assert sorted(name for name in named if not re.search(rf"\b{re.escape(name)}\b", text)) == []
