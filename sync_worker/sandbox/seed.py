"""Sample data for the sandbox, the same every time.

Total Expert: users Anna Expert and Bernd Berater; contacts max.kunde@example.org (one owned
by Anna, one by Bernd: TE deduplicates per owner), erika.muster@example.org (Bernd) and
lena.lang@example.org (Anna); the insight type ``flexperto_conference_archived``.

Flexperto, one archive per conference:

- AVAILABLE, moderated by Anna: Max Kunde (two TE contacts, Anna's is chosen) and
  nobody@nowhere.example (no TE contact: ``no_match``);
- AVAILABLE, moderated by Bernd: Erika Muster;
- AVAILABLE, moderated by kim.extern@partner.example (not a TE user): Lena Lang;
- PACKING, moderated by Anna: Max Kunde; turns AVAILABLE after the first pass;
- FAILED with error "recording missing".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sync_worker.sandbox.flexperto import FlexpertoState
from sync_worker.sandbox.totalexpert import TotalExpertState

INSIGHT_TYPE = "flexperto_conference_archived"


def person(account_id: str, email: str, name: str) -> dict[str, Any]:
    return {"account_id": account_id, "email": email, "name": name}


ANNA = person("e-17", "anna.expert@bank.example", "Anna Expert")
BERND = person("e-18", "bernd.berater@bank.example", "Bernd Berater")
KIM = person("e-90", "kim.extern@partner.example", "Kim Extern")
MAX = person("p-99", "max.kunde@example.org", "Max Kunde")
ERIKA = person("p-100", "erika.muster@example.org", "Erika Muster")
LENA = person("p-101", "lena.lang@example.org", "Lena Lang")
NOBODY = person("p-102", "nobody@nowhere.example", "No Body")


def seed_totalexpert(te: TotalExpertState) -> None:
    anna = te.add_user(ANNA["email"], "anna.expert", "e-17")
    bernd = te.add_user(BERND["email"], "bernd.berater", "e-18")
    te.add_contact(MAX["email"], anna["id"], "Max", "Kunde")
    te.add_contact(MAX["email"], bernd["id"], "Max", "Kunde")
    te.add_contact(ERIKA["email"], bernd["id"], "Erika", "Muster")
    te.add_contact(LENA["email"], anna["id"], "Lena", "Lang")
    te.add_insight_type(INSIGHT_TYPE, "Flexperto: Conference archived")


def seed_flexperto(flexperto: FlexpertoState) -> None:
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
            status=status,
            moderator=moderator,
            participants=[moderator, *participants],
            start=start,
            end=start + timedelta(minutes=45),
            error=error,
        )
