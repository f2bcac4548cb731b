"""Sample data for the sandbox, the same every time.

Total Expert: users Anna Expert and Bernd Berater; contacts max.kunde@example.org (one owned
by Anna, one by Bernd: TE deduplicates per owner), erika.muster@example.org (Bernd) and
lena.lang@example.org (Anna); the insight type ``flexperto_conference_archived``.

Flexperto, one archive per conference (c-4701 to c-4705), meetings of 45 minutes an hour
apart from 2026-11-20 09:00 UTC; the moderator is listed among the participants:

- AVAILABLE, moderated by Anna: Max Kunde (two TE contacts, Anna's is chosen) and
  nobody@nowhere.example (no TE contact: ``no_match``);
- AVAILABLE, moderated by Bernd: Erika Muster;
- AVAILABLE, moderated by kim.extern@partner.example (not a TE user): Lena Lang;
- PACKING, moderated by Anna: Max Kunde; turns AVAILABLE after ``packing_listings`` listings
  (by default: after the first pass);
- FAILED, moderated by Bernd, with error "recording missing".

Archive ids are fixed (uuid5 of ``sandbox-seed-N``), and so are the files and checksums.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sync_worker.sandbox.flexperto import FakeFlexperto
from sync_worker.sandbox.totalexpert import FakeTotalExpert

INSIGHT_TYPE = "flexperto_conference_archived"


def person(account_id: str, email: str, name: str) -> dict[str, Any]:
    """A Flexperto account as it appears in an archive's subject."""
    return {"account_id": account_id, "email": email, "name": name}


ANNA = person("e-17", "anna.expert@bank.example", "Anna Expert")
BERND = person("e-18", "bernd.berater@bank.example", "Bernd Berater")
KIM = person("e-90", "kim.extern@partner.example", "Kim Extern")
MAX = person("p-99", "max.kunde@example.org", "Max Kunde")
ERIKA = person("p-100", "erika.muster@example.org", "Erika Muster")
LENA = person("p-101", "lena.lang@example.org", "Lena Lang")
NOBODY = person("p-102", "nobody@nowhere.example", "No Body")


def seed_archive_id(number: int) -> str:
    """The fixed id of the ``number``-th seeded archive (counting from 1)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-seed-{number}"))


def seed_totalexpert(te: FakeTotalExpert) -> None:
    """Add the sample users, contacts and insight type."""
    anna = te.add_user(ANNA["email"], "anna.expert", "e-17")
    bernd = te.add_user(BERND["email"], "bernd.berater", "e-18")
    te.add_contact(MAX["email"], anna["id"], "Max", "Kunde")
    te.add_contact(MAX["email"], bernd["id"], "Max", "Kunde")
    te.add_contact(ERIKA["email"], bernd["id"], "Erika", "Muster")
    te.add_contact(LENA["email"], anna["id"], "Lena", "Lang")
    te.add_insight_type(INSIGHT_TYPE, "Flexperto: Conference archived")


def seed_flexperto(flexperto: FakeFlexperto) -> None:
    """Add the five sample archives; call it before adding any other archive."""
    day = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    meetings = [
        ("AVAILABLE", ANNA, [MAX, NOBODY], None),
        ("AVAILABLE", BERND, [ERIKA], None),
        ("AVAILABLE", KIM, [LENA], None),
        ("PACKING", ANNA, [MAX], None),
        ("FAILED", BERND, [ERIKA], "recording missing"),
    ]
    for hour, (status, moderator, participants, error) in enumerate(meetings):
        start = day + timedelta(hours=hour)
        flexperto.add_archive(
            archive_id=seed_archive_id(hour + 1),
            status=status,
            moderator=moderator,
            participants=[moderator, *participants],
            start=start,
            end=start + timedelta(minutes=45),
            error=error,
        )


def seed_sandbox(flexperto: FakeFlexperto, te: FakeTotalExpert) -> None:
    """All the sample data."""
    seed_totalexpert(te)
    seed_flexperto(flexperto)
