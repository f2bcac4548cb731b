"""The fast tier keeps its promise: a test marked ``fast`` that starts a process or sleeps
fails, saying so (``make test-fast`` stays well under a minute)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.fast

CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.mark.parametrize(
    "body, refused",
    [
        ("import time\n    time.sleep(0.01)", "time.sleep"),
        ("import subprocess\n    subprocess.run(['true'])", "subprocess.Popen"),
    ],
)
def test_a_fast_test_that_waits_or_starts_a_process_fails(pytester, body, refused):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        f"import pytest\npytestmark = pytest.mark.fast\ndef test_it():\n    {body}\n"
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*a fast-tier test may not call {refused}*"])


def test_a_thread_of_a_fast_test_may_wait(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        "import threading, time, pytest\npytestmark = pytest.mark.fast\n"
        "def test_it():\n"
        "    t = threading.Thread(target=time.sleep, args=(0.01,))\n"
        "    t.start(); t.join()\n"
    )
    pytester.runpytest_inprocess().assert_outcomes(passed=1)
