"""Running one call in several threads at the same time, for tests of what must hold when
processes or connections race (opening, migrating)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def at_once(call: Callable[[], object], threads: int = 4) -> list[BaseException]:
    """Run ``call`` in ``threads`` threads started together; what each raised, if anything."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    started = [threading.Thread(target=run) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return raised
