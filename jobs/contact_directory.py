"""Who a participant's insight goes to: the TE contacts with that email, preferring those of
the moderator when the moderator is a TE user.

Answers come from the local copy of the organisation's contacts and users (state.directory)
once that copy is worth having: it is filled when copying (one request per page of 100
contacts) costs no more than the lookups already made in the past day plus those at hand.
Until then each email is looked up on its own and the answer is kept for a day. Like renting
skis until the rent would have bought them, this never spends more than twice what the
better choice in hindsight would have.

How the copy stays current depends on what TE can do, which the documents do not say:

- with the ``internal_updated_at_start`` filter, each pass asks only for what changed since
  the previous one (two requests), and the copy is re-read whole once a week, which also
  drops the contacts TE deleted;
- without it (TE refuses the filter, or ignores it), the copy is good for a day after it
  was read whole; then it is re-read, or addresses are looked up one by one when that is
  cheaper, by the same rule as above. ``te.capability_missing`` says so, once, and the
  decision is remembered (state.capabilities) and checked again after a week.

If TE fails while the copy is being prepared, this pass looks addresses up one by one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import structlog

from sync_worker.adapters.http import ApiError
from sync_worker.adapters.totalexpert import (
    FILTER_REJECTED,
    FILTER_SUPPORTED,
    UPDATED_SINCE_FILTER,
    Contact,
    CredentialsRejected,
    User,
)
from sync_worker.jobs.context import JobContext
from sync_worker.state import capabilities, directory
from sync_worker.state.db import Database

# Ask for changes since a little before the last sync: clocks differ.
SYNC_OVERLAP = timedelta(minutes=10)
DAY = 24 * 3600
LOOKUP_TTL_SECONDS = DAY
PAGES_RECHECK_SECONDS = DAY
# Without the updated-since filter, a copy read whole is trusted this long.
COPY_TTL_SECONDS = DAY
# With it, the copy is still read whole this often, to drop deleted contacts.
FULL_REREAD_SECONDS = 7 * DAY
# Whether the filter works is asked again after this long.
RECHECK_SECONDS = 7 * DAY
BATCH_SIZE = 500

log = structlog.get_logger(job="insights")


class AmbiguousAddress(Exception):
    """More TE contacts share an address than ``totalexpert.max_contacts_per_address``:
    whom the participant is, an operator decides."""

    def __init__(self, email: str, ceiling: int) -> None:
        super().__init__(
            f"more than {ceiling} Total Expert contacts share the address {email} "
            "(totalexpert.max_contacts_per_address): merge them in TE or raise the ceiling, "
            "then `sync-worker retry`"
        )


class ContactDirectory:
    def __init__(self, ctx: JobContext) -> None:
        self._db = ctx.db
        self._client = ctx.totalexpert
        self._clock = ctx.clock
        self._ceiling = ctx.config.totalexpert.max_contacts_per_address
        self.indexed = False

    def prepare(self, emails: set[str]) -> None:
        """Make the local copy fit to answer for ``emails``, or decide to look them up one
        by one; see the module docstring."""
        try:
            self.indexed = self._prepare(emails)
        except CredentialsRejected:
            raise  # no look-up would fare better
        except ApiError as exc:
            log.warning("te.directory_unavailable", error=str(exc), fallback="lookups")
            self.indexed = False

    def contacts_for(self, email: str, moderator_email: str | None) -> list[Contact]:
        """The contacts the participant's insights go to; AmbiguousAddress when more than
        the ceiling share the address (reading stops at the first one past it)."""
        contacts = [c for c in self._contacts(email) if c.owner_id is not None]
        if len({contact.owner_id for contact in contacts}) <= 1 or not moderator_email:
            return contacts  # nothing to prefer: spare the user lookup
        moderator = self._user(moderator_email)
        own = [c for c in contacts if moderator is not None and c.owner_id == moderator.id]
        return own or contacts

    def forget(self, contact_id: int) -> None:
        """TE no longer knows this contact."""
        directory.forget_contact(self._db, contact_id)

    def _prepare(self, emails: set[str]) -> bool:
        """True when the copy answers this pass's questions."""
        if directory.get_meta(self._db, directory.CONTACTS_SYNCED_AT) is not None:
            age = self._clock.now() - float(
                directory.get_meta(self._db, directory.FULL_READ_AT) or 0
            )
            if self._updated_since_works():
                if age >= FULL_REREAD_SECONDS:
                    self._fill()
                    return True
                if self._refresh():
                    return True
            if age < COPY_TTL_SECONDS:
                return True
        if self._contact_pages() <= self._lookups(emails):
            self._fill()
            return True
        return False

    def _lookups(self, emails: set[str]) -> int:
        """What looking addresses up one by one costs: those of the past day, and these."""
        since = self._clock.now() - LOOKUP_TTL_SECONDS
        return len(emails) + directory.contact_lookups_since(self._db, since)

    def _updated_since_works(self) -> bool:
        """Whether TE has the updated-since filter: remembered, and asked again weekly."""
        decision = capabilities.get(self._db, capabilities.UPDATED_SINCE)
        if decision is not None and not decision.older_than(RECHECK_SECONDS, self._clock.now()):
            return decision.value == FILTER_SUPPORTED
        verdict = self._client.probe_updated_since()
        self._decide(verdict)
        return verdict == FILTER_SUPPORTED

    def _decide(self, verdict: str) -> None:
        previous = capabilities.put(
            self._db, capabilities.UPDATED_SINCE, verdict, self._clock.now()
        )
        was_missing = previous is not None and previous.value != FILTER_SUPPORTED
        if verdict != FILTER_SUPPORTED and not was_missing:
            log.warning(
                "te.capability_missing",
                capability=f"filter {UPDATED_SINCE_FILTER}",
                answer=verdict,
                fallback="contacts re-read whole at most daily, or looked up one by one",
            )

    def _contacts(self, email: str) -> list[Contact]:
        rows = directory.contacts_by_email(self._db, email, self._ceiling + 1)
        fresh_since = self._clock.now() - LOOKUP_TTL_SECONDS
        known = (self.indexed and rows) or directory.looked_up_since(
            self._db, email, "contact", fresh_since
        )
        if not known:  # not in the copy (or no copy): ask TE about this one address
            found = self._client.find_contacts(email, self._ceiling)
            if len(found) > self._ceiling:  # not kept: only part of them was read
                raise AmbiguousAddress(email, self._ceiling)
            directory.replace_contacts_of(
                self._db, email, map(_contact_row, found), self._clock.now()
            )
            rows = directory.contacts_by_email(self._db, email, self._ceiling + 1)
        if len(rows) > self._ceiling:
            raise AmbiguousAddress(email, self._ceiling)
        return [Contact(row["contact_id"], row["email"], row["owner_id"]) for row in rows]

    def _user(self, email: str) -> User | None:
        now = self._clock.now()
        if not self.indexed and not directory.looked_up_since(
            self._db, email, "user", now - LOOKUP_TTL_SECONDS
        ):
            user = self._client.find_user(email)
            if user is not None:
                directory.upsert_users(self._db, [_user_row(user)], now)
            directory.note_lookup(self._db, email, "user", now)
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
        """Read every contact and user; drop from the copy those TE no longer has."""
        started = self._clock.now()
        log.info("te.directory_filling")
        _upsert_in_batches(self._db, self._client.contacts_from_page(1), started)
        directory.upsert_users(
            self._db, map(_user_row, self._client.users_updated_since(None)), started
        )
        dropped = directory.drop_unseen(self._db, started)
        self._mark_synced(started, full=True)
        log.info(
            "te.directory_filled", seconds=round(self._clock.now() - started, 3), dropped=dropped
        )

    def _refresh(self) -> bool:
        """Bring the copy up to date with what changed; False if TE refuses the filter."""
        started = self._clock.now()
        contacts_since = self._since(directory.CONTACTS_SYNCED_AT)
        users_since = self._since(directory.USERS_SYNCED_AT)
        try:
            _upsert_in_batches(
                self._db, self._client.contacts_updated_since(contacts_since), started
            )
            users = self._client.users_updated_since(users_since)
            directory.upsert_users(self._db, map(_user_row, users), started)
        except ApiError as exc:
            if exc.status != 400:
                raise
            self._decide(FILTER_REJECTED)
            return False
        self._mark_synced(started, full=False)
        return True

    def _since(self, key: str) -> datetime:
        synced_at = float(directory.get_meta(self._db, key) or 0)
        return datetime.fromtimestamp(synced_at, UTC) - SYNC_OVERLAP

    def _mark_synced(self, started: float, full: bool) -> None:
        marks = {
            directory.CONTACTS_SYNCED_AT: str(started),
            directory.USERS_SYNCED_AT: str(started),
        }
        if full:
            marks[directory.FULL_READ_AT] = str(started)
        directory.set_meta(self._db, marks)


def _upsert_in_batches(db: Database, contacts: Iterable[Contact], now: float) -> None:
    """Store contacts a page or so at a time: one transaction each, little memory."""
    batch: list[dict[str, object]] = []
    for contact in contacts:
        batch.append(_contact_row(contact))
        if len(batch) >= BATCH_SIZE:
            directory.upsert_contacts(db, batch, now)
            batch = []
    directory.upsert_contacts(db, batch, now)


def _contact_row(contact: Contact) -> dict[str, object]:
    return {"contact_id": contact.id, "email": contact.email, "owner_id": contact.owner_id}


def _user_row(user: User) -> dict[str, object]:
    return {"user_id": user.id, "email": user.email}
