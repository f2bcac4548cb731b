"""What the command line tells about itself, all made from its own parser: the version,
shell completion scripts and the man page."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version

import shtab
from argparse_manpage.manpage import Manpage

DISTRIBUTION = "flexperto-te-sync"
SHELLS = ("bash", "zsh", "tcsh")


def version() -> str:
    """The installed package's version, from its metadata."""
    try:
        return installed_version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``shell`` for every command and option of ``parser``."""
    return shtab.complete(parser, shell=shell)


def man_page(parser: argparse.ArgumentParser) -> str:
    """The man page (roff, section 1) of ``parser`` and each of its commands."""
    page = Manpage(parser)
    page.source = f"{DISTRIBUTION} {version()}"
    page.manual = "sync-worker manual"
    page.description = "claim Flexperto archives and record them as Total Expert insights"
    return str(page)
