"""What Total Expert's answers hold, read defensively: contacts, users, insight searches,
ids and counts (ints, or strings of ASCII digits only), and the answer to ``POST /insights``
(``{"id": N, ...}``, or ``{}``: then the insight still counts as created; any other answer
proves nothing, and the insight is looked for)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sync_worker.core.untrusted import storable

# ASCII digits only ("²".isdigit() is true, and int() reads "٣" as 3), within 64 bits.
ASCII_INT = re.compile(r"[0-9]{1,18}")
INT_RANGE = range(-(2**63), 2**63)


@dataclass(frozen=True)
class Contact:
    id: int
    email: str
    owner_id: int | None


@dataclass(frozen=True)
class User:
    id: int
    email: str


@dataclass(frozen=True)
class InsightSearch:
    """What a search of a contact's insights for one archive found.

    ``verifiable`` is False when TE listed insights without their ``data``: then "not
    found" proves nothing, and posting again could double the insight.
    """

    found: bool
    insight_id: int | None = None
    verifiable: bool = True


def created_id(body: bytes) -> int | None:
    """The id in an answer to ``POST /insights``; None for the empty object. Raises
    ValueError for any other answer: TE's is assumed ``{"id": N, "created": "<url>"}``
    (API-NOTES), the strict sandbox's ``{}``."""
    created = json.loads(body)
    if created == {}:
        return None
    number = as_int(created.get("id")) if isinstance(created, dict) else None
    if number is None:
        raise ValueError("not an answer of TE's shape")
    return number


def read_contacts(items: Iterable[object]) -> list[Contact]:
    return [contact for contact in map(read_contact, items) if contact is not None]


def read_user(item: object) -> User | None:
    if not isinstance(item, dict):
        return None
    user_id, email = as_int(item.get("id")), _email(item.get("email"))
    if user_id is None or email is None:
        return None
    return User(user_id, email)


def for_contact(insight: dict[str, Any], contact_id: int) -> bool:
    """Whether a listed insight belongs to the contact, as far as it says (in case TE
    ignores the contact filter and lists other contacts' insights too)."""
    contact = insight.get("contact")
    shown = (
        as_int(contact.get("id"))
        if isinstance(contact, dict)
        else as_int(insight.get("contact_id"))
    )
    return shown is None or shown == contact_id


def te_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def read_contact(item: object) -> Contact | None:
    if not isinstance(item, dict):
        return None
    contact_id = as_int(item.get("id"))
    email = _email(item.get("email"))
    if contact_id is None or email is None:
        return None
    owner = item.get("owner")
    owner_id = as_int(owner.get("id")) if isinstance(owner, dict) else None
    return Contact(contact_id, email, owner_id)


def _email(value: object) -> str | None:
    """An address as TE sent it, in lower case, if it is text the state file can keep."""
    return value.lower() if storable(value) else None


def page_ids(items: list[Any]) -> set[int]:
    """The ids the items of a page show."""
    found = (as_int(item.get("id")) for item in items if isinstance(item, dict))
    return {ident for ident in found if ident is not None}


def as_int(value: object) -> int | None:
    """An id or count as TE sent it, if it is one (see ASCII_INT)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value in INT_RANGE else None
    if isinstance(value, str) and ASCII_INT.fullmatch(value):
        return int(value)
    return None
