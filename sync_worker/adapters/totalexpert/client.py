"""Total Expert's endpoints, as the jobs use them, and paging over ``links.next``.

Shapes the documents do not give, each with a way back (docs/assumptions.md, "What we assume
about the APIs"): the ``internal_updated_at_start`` filter (:meth:`probe_updated_since`
tells whether TE has it; jobs.contact_directory does without), the answer to
``POST /insights`` (totalexpert.shapes) and ``data`` echoed by ``GET /insights``
(:class:`InsightSearch` says when a search cannot be trusted).

Paging is bounded: an empty page ends it; a page that shows only ids seen before (a TE
repeating itself) and more pages than a ceiling are an ApiError rather than an answer cut
short, since the caller would trust it as whole (an insight not found among the pages read
may be on the next one, and posting it again would double it). Reading TE's directory whole
may take ``totalexpert.max_list_pages`` pages, anything else LOOKUP_PAGES.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import structlog

from sync_worker.adapters.http import ApiError, TransientError
from sync_worker.adapters.totalexpert.session import (
    SERVICE,
    CredentialsRejected,
    TotalExpertSession,
)
from sync_worker.adapters.totalexpert.shapes import (
    Contact,
    InsightSearch,
    User,
    as_int,
    created_id,
    for_contact,
    page_ids,
    read_contact,
    read_contacts,
    read_user,
    te_time,
)

UPDATED_SINCE_FILTER = "internal_updated_at_start"
# Answers of probe_updated_since.
FILTER_SUPPORTED, FILTER_REJECTED, FILTER_IGNORED = "supported", "rejected", "ignored"
PAGE_SIZE = 100
# Pages of one look-up (an address's contacts, a contact's insights): 2,000 items.
LOOKUP_PAGES = 20


class TotalExpertClient:
    """TE's endpoints; every request goes through :attr:`session` (token, budgets,
    retries, counts)."""

    def __init__(self, session: TotalExpertSession) -> None:
        self.session = session
        self._directory_pages = session.config.max_list_pages
        self._clock = session.clock
        self._log = structlog.get_logger(service=SERVICE)

    def close(self) -> None:
        self.session.close()

    # --- endpoints -------------------------------------------------------------------

    def heartbeat(self) -> None:
        self.session.json("GET", "/heartbeat", authenticated=False)

    def contacts_page(self, page: int) -> tuple[list[Contact], int]:
        """One page of all the organisation's contacts, and how many pages there are."""
        items, links = self._page("/contacts", {}, page)
        return read_contacts(items), as_int(links.get("last")) or page

    def contacts_from_page(self, page: int) -> Iterator[Contact]:
        """Every contact from ``page`` on."""
        for item in self._pages("/contacts", {}, page, whole=True):
            yield from read_contacts([item])

    def contacts_updated_since(self, since: datetime) -> Iterator[Contact]:
        filters = {UPDATED_SINCE_FILTER: te_time(since)}
        for item in self._pages("/contacts", filters, whole=True):
            yield from read_contacts([item])

    def probe_updated_since(self) -> str:
        """Whether TE filters contacts by ``internal_updated_at_start`` (not documented):
        asks for those changed after tomorrow, which must be none. Answers
        FILTER_SUPPORTED, FILTER_REJECTED (400) or FILTER_IGNORED (contacts came back).
        An organisation without contacts looks supported, and costs nothing either way."""
        tomorrow = datetime.fromtimestamp(self._clock.now() + 86_400, UTC)
        try:
            items, _links = self._page("/contacts", {UPDATED_SINCE_FILTER: te_time(tomorrow)}, 1)
        except CredentialsRejected:
            raise  # the token's 400, not the filter's
        except ApiError as exc:
            if exc.status == 400:
                return FILTER_REJECTED
            raise
        return FILTER_IGNORED if items else FILTER_SUPPORTED

    def users_updated_since(self, since: datetime | None) -> Iterator[User]:
        filters = {UPDATED_SINCE_FILTER: te_time(since)} if since else {}
        for item in self._pages("/users", filters, whole=True):
            user = read_user(item)
            if user is not None:
                yield user

    def find_contacts(self, email: str, limit: int) -> list[Contact]:
        """The contacts with ``email``; reading stops past ``limit`` of them (at most
        ``limit + 1`` come back)."""
        found: list[Contact] = []
        for item in self._pages("/contacts", {"email": email}):
            contact = read_contact(item)
            if contact is not None and contact.email == email.lower():
                found.append(contact)
                if len(found) > limit:
                    break
        return found

    def find_user(self, email: str) -> User | None:
        for item in self._pages("/users", {"email": email}):
            user = read_user(item)
            if user is not None and user.email == email.lower():
                return user
        return None

    def insight_type_id(self, name: str) -> int | None:
        for item in self._pages("/insight-types", {"type": name}):
            if isinstance(item, dict) and item.get("type") == name:
                return as_int(item.get("id"))
        return None

    def create_insight(self, body: dict[str, Any]) -> int | None:
        """Post one insight; returns its id, or None when TE accepted it without saying
        which. Only an answer of TE's shape proves the insight created (see
        ``shapes.created_id``); any other, whatever its status (a proxy's or a firewall's
        page), is a TransientError that may have been processed. TE does not deduplicate: a
        POST that may have been processed is not repeated here (the caller looks for it
        first on its next try)."""
        answer = self.session.answer("POST", "/insights", idempotent=False, json=body)
        try:
            return created_id(answer.body)
        except ValueError:
            kind = answer.headers.get("Content-Type", "no Content-Type")[:60]
            raise TransientError(
                SERVICE,
                f"POST /insights answered HTTP {answer.status} ({kind}) with a body that is "
                "not TE's answer: the insight may or may not exist, it is looked for",
                answer.status,
                maybe_processed=True,
            ) from None

    def lists_insight_data(self, type_id: int) -> bool | None:
        """Whether ``GET /insights`` shows each insight's ``data`` (what a search for a
        possibly posted insight relies on); None when no insight of the type exists yet."""
        items, _links = self._page("/insights", {"type_id": type_id}, 1)
        listed = [item for item in items if isinstance(item, dict)]
        return None if not listed else all(isinstance(i.get("data"), dict) for i in listed)

    def find_insight(self, contact_id: int, type_id: int, archive_id: str) -> InsightSearch:
        """Look for the contact's insight carrying ``data.flexperto_archive_id``."""
        verifiable = True
        for item in self._pages("/insights", {"contact_id": contact_id, "type_id": type_id}):
            if not isinstance(item, dict):  # not TE's list: it proves nothing either way
                raise ApiError(SERVICE, "GET /insights listed an item that is not an insight")
            data = item.get("data")
            if not isinstance(data, dict):
                verifiable = False
            elif data.get("flexperto_archive_id") == archive_id and for_contact(item, contact_id):
                return InsightSearch(True, as_int(item.get("id")))
        return InsightSearch(False, verifiable=verifiable)

    # --- plumbing --------------------------------------------------------------------

    def _pages(
        self, path: str, filters: dict[str, Any], page: int = 1, whole: bool = False
    ) -> Iterator[Any]:
        """The items of every page from ``page`` on, at most LOOKUP_PAGES pages, or with
        ``whole`` (reading the directory) ``totalexpert.max_list_pages``; see the module
        docstring."""
        ceiling = self._directory_pages if whole else LOOKUP_PAGES
        seen: set[int] = set()
        for _ in range(ceiling):
            items, links = self._page(path, filters, page)
            ids = page_ids(items)
            if not items:
                return
            if ids and ids <= seen:  # what it has not shown may be there all the same
                self._log.warning("te.paging_repeated", path=path, page=page)
                raise ApiError(SERVICE, f"list {path} repeats its pages from page {page}")
            seen |= ids
            yield from items
            next_page = as_int(links.get("next"))
            if next_page is None or next_page <= page:
                return
            page = next_page
        key = {"key": "totalexpert.max_list_pages"} if whole else {}
        self._log.warning("te.paging_truncated", path=path, ceiling=ceiling, **key)
        raise ApiError(SERVICE, f"list {path} goes on past {ceiling} pages")

    def _page(
        self, path: str, filters: dict[str, Any], page: int
    ) -> tuple[list[Any], dict[str, Any]]:
        params: dict[str, Any] = {"page[number]": page, "page[size]": PAGE_SIZE}
        if filters:
            params["filter"] = ",".join(f"{key}={value}" for key, value in filters.items())
        body = self.session.json("GET", path, params=params)
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ApiError(SERVICE, f"list {path} answered without an items list")
        links = body.get("links")
        return items, links if isinstance(links, dict) else {}
