"""A closed stdout (the reader of a pipe gone, as in ``sync-worker export | head -1``) ends
a command quietly, as it ends any Unix tool: no traceback, no error line, exit 141.

141 is what a shell reports for a tool that SIGPIPE ended (128 + 13), so scripts reading
``PIPESTATUS`` see the worker as they see ``cat`` or ``grep``, and it stays apart from the
worker's own codes (1: an item failed). Python ignores SIGPIPE, so a write to the closed
pipe raises BrokenPipeError instead; it is told apart from a peer's closed socket by
polling stdout itself.
"""

from __future__ import annotations

import os
import select
import sys

EXIT_CLOSED_PIPE = 141


def ended_by_reader(exc: BaseException) -> bool:
    """Whether ``exc`` is a write to a stdout that nobody reads any more; if so, stdout is
    silenced, so that exit has nothing left to flush."""
    if not isinstance(exc, BrokenPipeError) or not _stdout_closed():
        return False
    _silence_stdout()
    return True


def flush_stdout(code: int) -> int:
    """Flush stdout before exit, where a closed pipe shows for buffered output: ``code``,
    or 141 if the output of a command that succeeded could not be delivered. Without a
    stdout at all (``>&-``), there is nothing to flush."""
    if sys.stdout is None:
        return code
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return code or EXIT_CLOSED_PIPE
    return code


def _stdout_closed() -> bool:
    """A pipe or socket whose reader is gone polls as an error or a hang-up."""
    if sys.__stdout__ is None:
        return True
    poller = select.poll()
    poller.register(sys.__stdout__.fileno(), select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _silence_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for it is dropped at exit
    instead of raising a second BrokenPipeError while the interpreter shuts down."""
    if sys.__stdout__ is None:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.__stdout__.fileno())
    finally:
        os.close(devnull)
