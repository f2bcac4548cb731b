"""Who a participant's insight goes to: the TE contacts with that email, preferring those of
the moderator when the moderator is a TE user.

Answers come from the local copy of the organisation's contacts and users (state.directory)
once that copy is worth having: it is filled when copying (one request per page of 100
contacts) costs no more than the lookups already made in the past day plus those at hand,
and then brought up to date on every pass by asking only for what changed since the
previous one. Until then each email is looked up on its own and the answer is kept for a
day. Like renting skis until the rent would have bought them, this never spends more than
twice what the better choice in hindsight would have.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import sqlite_utils
import structlog

from jobs.context import JobContext
from state import directory
from sync_worker.totalexpert import Contact, User

# Ask for changes since a little before the last sync: clocks differ.
SYNC_OVERLAP = timedelta(minutes=10)
LOOKUP_TTL_SECONDS = 24 * 3600
PAGES_RECHECK_SECONDS = 24 * 3600
BATCH_SIZE = 500

log = structlog.get_logger(job="insights")


class ContactDirectory:
    def __init__(self, ctx: JobContext) -> None:
        self._db = ctx.db
        self._client = ctx.totalexpert
        self._clock = ctx.clock
        self.indexed = False

    def prepare(self, emails: set[str]) -> None:
        """Make the local copy current, or build it once looking addresses up one by one
        would cost more: the lookups of the past day plus those at hand."""
        if directory.get_meta(self._db, directory.CONTACTS_SYNCED_AT) is not None:
            self._refresh()
        else:
            since = self._clock.now() - LOOKUP_TTL_SECONDS
            lookups = len(emails) + directory.contact_lookups_since(self._db, since)
            if self._contact_pages() <= lookups:
                self._fill()
        self.indexed = directory.get_meta(self._db, directory.CONTACTS_SYNCED_AT) is not None

    def contacts_for(self, email: str, moderator_email: str | None) -> list[Contact]:
        contacts = [c for c in self._contacts(email) if c.owner_id is not None]
        if len({contact.owner_id for contact in contacts}) <= 1 or not moderator_email:
            return contacts  # nothing to prefer: spare the user lookup
        moderator = self._user(moderator_email)
        own = [c for c in contacts if moderator is not None and c.owner_id == moderator.id]
        return own or contacts

    def forget(self, contact_id: int) -> None:
        """TE no longer knows this contact."""
        directory.forget_contact(self._db, contact_id)

    def _contacts(self, email: str) -> list[Contact]:
        rows = directory.contacts_by_email(self._db, email)
        fresh_since = self._clock.now() - LOOKUP_TTL_SECONDS
        known = (self.indexed and rows) or directory.looked_up_since(
            self._db, email, "contact", fresh_since
        )
        if not known:  # not in the copy (or no copy): ask TE about this one address
            found = self._client.find_contacts(email)
            directory.replace_contacts_of(
                self._db, email, map(_contact_row, found), self._clock.now()
            )
            rows = directory.contacts_by_email(self._db, email)
        return [Contact(row["contact_id"], row["email"], row["owner_id"]) for row in rows]

    def _user(self, email: str) -> User | None:
        fresh_since = self._clock.now() - LOOKUP_TTL_SECONDS
        if not self.indexed and not directory.looked_up_since(self._db, email, "user", fresh_since):
            user = self._client.find_user(email)
            if user is not None:
                directory.store_users(self._db, [_user_row(user)])
            directory.record_lookup(self._db, email, "user", self._clock.now())
        row = directory.user_by_email(self._db, email)
        return None if row is None else User(row["user_id"], row["email"])

    def _contact_pages(self) -> int:
        """How many pages of contacts the organisation has (asked at most once a day)."""
        seen_at = directory.get_meta(self._db, directory.CONTACT_PAGES_SEEN_AT)
        if seen_at is not None and float(seen_at) > self._clock.now() - PAGES_RECHECK_SECONDS:
            return int(directory.get_meta(self._db, directory.CONTACT_PAGES) or 0)
        _contacts, pages = self._client.contacts_page(1)
        directory.set_meta(
            self._db,
            {
                directory.CONTACT_PAGES: str(pages),
                directory.CONTACT_PAGES_SEEN_AT: str(self._clock.now()),
            },
        )
        return pages

    def _fill(self) -> None:
        started = self._clock.now()
        log.info("te.directory_filling")
        _store_in_batches(self._db, self._client.contacts_from_page(1))
        directory.store_users(self._db, map(_user_row, self._client.users_updated_since(None)))
        self._mark_synced(started)
        log.info("te.directory_filled", seconds=round(self._clock.now() - started, 3))

    def _refresh(self) -> None:
        started = self._clock.now()
        since = self._since(directory.CONTACTS_SYNCED_AT)
        _store_in_batches(self._db, self._client.contacts_updated_since(since))
        directory.store_users(
            self._db,
            map(
                _user_row, self._client.users_updated_since(self._since(directory.USERS_SYNCED_AT))
            ),
        )
        self._mark_synced(started)

    def _since(self, key: str) -> datetime:
        synced_at = float(directory.get_meta(self._db, key) or 0)
        return datetime.fromtimestamp(synced_at, UTC) - SYNC_OVERLAP

    def _mark_synced(self, started: float) -> None:
        directory.set_meta(
            self._db,
            {directory.CONTACTS_SYNCED_AT: str(started), directory.USERS_SYNCED_AT: str(started)},
        )


def _store_in_batches(db: sqlite_utils.Database, contacts: Iterable[Contact]) -> None:
    """Store contacts a page or so at a time: one transaction each, little memory."""
    batch: list[dict[str, object]] = []
    for contact in contacts:
        batch.append(_contact_row(contact))
        if len(batch) >= BATCH_SIZE:
            directory.store_contacts(db, batch)
            batch = []
    directory.store_contacts(db, batch)


def _contact_row(contact: Contact) -> dict[str, object]:
    return {"contact_id": contact.id, "email": contact.email, "owner_id": contact.owner_id}


def _user_row(user: User) -> dict[str, object]:
    return {"user_id": user.id, "email": user.email}
