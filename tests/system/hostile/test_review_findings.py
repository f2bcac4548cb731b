"""Findings of the adversarial review of issue 17: each test failed before its fix."""

from __future__ import annotations

import pytest

from sync_worker.sandbox import Fault
from sync_worker.state import archives
from sync_worker.state.db import open_database

GOOD = {"account_id": "p", "email": "lena.lang@example.org", "name": "Lena"}
LIST = "/communication/conferences/archives$"


def abandons(sandbox, conference_id: str) -> int:
    return sum(
        1
        for r in sandbox.flexperto.requests
        if r.method == "POST" and r.path.endswith(f"/{conference_id}/archive/abandon")
    )


@pytest.mark.lenient_only  # the listing asks for each status in turn
def test_a_listing_that_fails_half_way_abandons_nothing(sandbox, config, run):
    """The listing fails after its first page: the statuses it never read may hold a
    sibling still being packed, which no ledger row nor held record knows of yet."""
    stored = sandbox.flexperto.add_archive(conference_id="c-r1", participants=[GOOD])
    packing = sandbox.flexperto.add_archive(
        conference_id="c-r1", status="PACKING", participants=[GOOD]
    )

    def fail_the_rest(_service) -> None:
        sandbox.add_fault("flexperto", Fault(method="GET", path=LIST, status=503, times=None))

    sandbox.add_fault(
        "flexperto", Fault(method="GET", path=LIST, action="call", callback=fail_the_rest)
    )
    run()
    db = open_database(config.state.database)
    assert archives.get(db, stored["id"]).state == archives.STORED  # stored all the same
    db.close()
    assert abandons(sandbox, "c-r1") == 0
    assert sandbox.flexperto.record(packing["id"])["status"] == "PACKING"

    sandbox.service("flexperto").faults.clear()  # the listing is read whole again
    sandbox.flexperto.set_status(packing["id"], "AVAILABLE")
    run()
    assert abandons(sandbox, "c-r1") == 1
