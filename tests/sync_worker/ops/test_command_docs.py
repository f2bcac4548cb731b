"""The command line about itself: --version, shell completion and the man page, each made
from the parser and checked by the program that reads it (bash, zsh, groff), when here."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from importlib.metadata import version

import pytest

from sync_worker.app.cli import build_parser
from sync_worker.sandbox.worker_process import run_worker


def commands() -> list[str]:
    """Every subcommand the parser knows."""
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(action.choices)


def commands_and_theirs() -> set[str]:
    """Every subcommand, and every subcommand of one (``config show``)."""
    found = set(commands())
    [action] = [a for a in build_parser()._actions if a.dest == "command"]
    for name, parser in action.choices.items():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        found.update(f"{name} {sub}" for a in nested for sub in a.choices)
    return found


def test_version_comes_from_the_installed_package():
    done = run_worker("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"sync-worker {version('flexperto-te-sync')}\n"


def test_bash_completes_the_commands_and_their_options(tmp_path):
    done = run_worker("completion", "bash")
    assert done.returncode == 0, done.stderr
    script = tmp_path / "sync-worker.bash"
    script.write_text(done.stdout)
    # what bash offers after "sync-worker " and after "sync-worker audit --"
    ask = (
        f"source {script}; "
        'COMP_WORDS=(sync-worker "$1"); COMP_CWORD=1; COMP_LINE="sync-worker $1"; '
        'COMP_POINT=${#COMP_LINE}; _shtab_sync_worker sync-worker "$1" sync-worker; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    offered = subprocess.run(
        ["bash", "-c", ask, "bash", ""], capture_output=True, text=True, timeout=30
    )
    assert offered.stderr == ""
    assert set(commands()) <= set(offered.stdout.split())
    ask_option = ask.replace('(sync-worker "$1")', '(sync-worker audit "$1")').replace(
        "COMP_CWORD=1", "COMP_CWORD=2"
    )
    options = subprocess.run(
        ["bash", "-c", ask_option, "bash", "--"], capture_output=True, text=True, timeout=30
    )
    assert {"--sample", "--all", "--max-bytes-per-second"} <= set(options.stdout.split())


@pytest.mark.parametrize("shell", ["zsh", "tcsh"])
def test_other_shells_get_a_script_naming_every_command(shell, tmp_path):
    done = run_worker("completion", shell)
    assert done.returncode == 0, done.stderr
    assert all(command in done.stdout for command in commands())
    program = shutil.which(shell)
    if program is not None:  # the shell reads it without a syntax error
        script = tmp_path / f"sync-worker.{shell}"
        script.write_text(done.stdout)
        checked = subprocess.run([program, "-n", str(script)], capture_output=True, timeout=30)
        assert checked.returncode == 0, checked.stderr


def test_an_unknown_shell_is_a_usage_error():
    done = run_worker("completion", "fish")
    assert done.returncode == 2
    assert "invalid choice: 'fish'" in done.stderr


def test_the_man_page_is_generated_with_every_command():
    done = run_worker("man")
    assert done.returncode == 0, done.stderr
    page = done.stdout
    assert page.startswith('.TH SYNC\\-WORKER "1"')
    assert f"flexperto\\-te\\-sync {version('flexperto-te-sync')}" in page
    described = set(re.findall(r"^\.SH COMMAND \\fI\\,'sync\\-worker (.+?)'", page, re.M))
    assert {command.replace("-", "\\-") for command in commands_and_theirs()} == described
    assert "exit codes" in page.lower()
    groff = shutil.which("groff")
    if groff is not None:  # roff that renders without a warning
        shown = subprocess.run(
            [groff, "-man", "-Tutf8", "-ww"], input=page, capture_output=True, text=True
        )
        assert shown.returncode == 0 and shown.stderr == "", shown.stderr
        assert "audit" in shown.stdout
