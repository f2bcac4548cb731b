"""Flexperto's archive API: the HTTP client, and the forms of request it may take.

Assumed rather than documented, each with a way back (docs/assumptions.md, "What we assume
about the APIs"): the ``/api/v2`` prefix, the list's ``status`` filter and its
``limit``/``offset`` paging. :class:`ListingForm` names a combination; when the service
refuses one (400/404) the next is tried, down to the plain request the guide shows, and a
service that ignores paging is noticed. No API call follows a redirect (a 3xx is an error
naming its host: the api-key goes nowhere else); the download's redirect is followed by a
session that never carries the api-key, and only to a target that
:mod:`sync_worker.core.download_targets` allows, checked again on the address
connected to. A download is cut when it falls below the minimum rate (``[http]``).

A paged listing is bounded: at a page that shows no archive id not seen before (a service
that ignores ``offset``, however it stamps its answers) it asks once for everything, the
plain request the guide shows, and ends; and after
``flexperto.max_list_pages`` pages (a listing that never ends) with what it has, so that
what was listed is stored in this pass; the next pass lists again. A page nested too
deeply to read is skipped (the same record would poison it on every pass, hiding the pages
after it), and two in a row end the listing; either way it then ends with an ApiError.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin

import requests
import structlog
import urllib3

from sync_worker.adapters.http import (
    Answer,
    ApiError,
    Deadline,
    NetworkTime,
    RateFloor,
    TransientError,
    UnreadableAnswer,
    arriving,
    json_body,
    new_session,
    open_stream,
    raise_for_status,
    read_answer,
    retry_policy,
    send,
)
from sync_worker.config import FlexpertoConfig, HttpConfig, NetworkConfig
from sync_worker.core.clock import Clock
from sync_worker.core.download_targets import Refused

SERVICE = "flexperto"
API_PREFIX = "/api/v2"
LIST_PATH = "/communication/conferences/archives"
RECORD_PATH = "/communication/archives/archives/{archive_id}"
DOWNLOAD_PATH = "/communication/archives/archives/{archive_id}/download"
ABANDON_PATH = "/communication/conferences/conferences/{conference_id}/archive/abandon"
SUBSCRIBE_PATH = "/communication/subscriptions/subscriptions/webhook"
# Assumed: the guide tells of deleting a subscription, not of the endpoint.
SUBSCRIPTION_PATH = "/communication/subscriptions/subscriptions/{subscription_id}"

DOWNLOAD_CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class ListingForm:
    """How the archive list is asked for: under which path prefix, and with which of the
    query parameters that the documents do not promise for this endpoint."""

    prefix: str = API_PREFIX
    status_filter: bool = True
    paging: bool = True

    def text(self) -> str:
        return json.dumps(
            {"prefix": self.prefix, "status_filter": self.status_filter, "paging": self.paging}
        )

    @classmethod
    def from_text(cls, text: str) -> ListingForm | None:
        """The form :meth:`text` wrote, or None if ``text`` is not one."""
        try:
            fields = json.loads(text)
            return cls(fields["prefix"], bool(fields["status_filter"]), bool(fields["paging"]))
        except (ValueError, TypeError, KeyError):
            return None

    def summary(self) -> str:
        parts = [
            f"prefix {self.prefix or '(none)'}",
            "status filter" if self.status_filter else "no status filter (filtered here)",
            "limit/offset paging" if self.paging else "no paging (one request)",
        ]
        return ", ".join(parts)


PREFERRED_LISTING = ListingForm()
# Tried in this order; the last of each prefix is the plain request the guide shows.
LISTING_FORMS = tuple(
    ListingForm(prefix, status_filter, paging)
    for prefix in (API_PREFIX, "")
    for status_filter, paging in ((True, True), (False, True), (True, False), (False, False))
)


class FlexpertoClient:
    """The archive endpoints, authenticated by the tenant's api-key.

    The endpoints live under the prefix of the listing form in use (:meth:`use`), by
    default ``/api/v2``.
    """

    def __init__(
        self,
        config: FlexpertoConfig,
        http: HttpConfig,
        clock: Clock,
        network: NetworkConfig | None = None,
    ) -> None:
        network = network or NetworkConfig()
        self._root = config.base_url
        self._form = PREFERRED_LISTING
        # An unpaged probe answer is the whole listing: kept for the listing that follows it
        # (form, filters, items), rather than asking for everything twice.
        self._probed: tuple[ListingForm, dict[str, str], list[object]] | None = None
        self._page_size = config.page_size
        self._max_pages = config.max_list_pages
        self._timeout = http.timeout_seconds
        self._answer_limit = http.max_answer_bytes
        self._http = http
        self._clock = clock
        self._retrying = retry_policy(http, clock.sleep)
        self._session = new_session(
            {"api-key": config.api_key, "Accept": "application/json"},
            route=network.route("flexperto"),
        )
        self._targets = config.download_targets
        # The pre-signed download URL points at another host: never send it the api-key.
        # Identity: the bytes are hashed as sent, so they must come as Flexperto hashed them.
        self._download_session = new_session(
            {"Accept-Encoding": "identity"},
            guard=self._targets.check_peer,
            route=network.route("storage_host"),
        )
        self.network = NetworkTime()
        # Whether the last listing read every page (see list_records).
        self.listed_whole = True
        self._log = structlog.get_logger(service=SERVICE)

    @property
    def _base(self) -> str:
        return self._root + self._form.prefix

    def close(self) -> None:
        self._session.close()
        self._download_session.close()

    def use(self, form: ListingForm) -> None:
        """Speak ``form`` from now on (its prefix applies to every endpoint)."""
        self._form = form

    @property
    def filters_by_status(self) -> bool:
        return self._form.status_filter

    def negotiate_listing(self) -> ListingForm:
        """The first form of archive list request the service accepts, trying the forms
        that rely on undocumented parameters first. Each try is one small request; a 400
        or 404 moves on to the next form, any other failure is raised."""
        for form in LISTING_FORMS:
            filters = _probe_filters(form)
            try:
                items = self._list_page(form, filters, 1)
            except ApiError as exc:
                if exc.status in (400, 404):
                    continue
                raise
            self._probed = None if form.paging else (form, filters, items)
            return form
        raise ApiError(SERVICE, "the archive list refused every form of request (400/404)")

    def list_records(self, statuses: Sequence[str]) -> Iterator[object]:
        """The records listed with any of ``statuses`` (or, without a status filter, every
        record listed), page by page; items are raw and unvalidated. Pages that could not
        be read are skipped, and raised as one ApiError at the end. Afterwards
        :attr:`listed_whole` says whether every page was read (not when the ceiling was
        reached: records may lie beyond)."""
        skipped: list[UnreadableAnswer] = []
        self.listed_whole = True
        listings = [{"status": s} for s in statuses] if self.filters_by_status else [{}]
        for filters in listings:
            yield from self._list(self._form, filters, skipped)
        if skipped:
            raise ApiError(SERVICE, f"{len(skipped)} archive list page(s) skipped: {skipped[0]}")

    def first_record(self) -> object | None:
        """The first record of a listing (one small request when the form pages), raw."""
        items = self._list_page(self._form, _probe_filters(self._form), 1)
        return items[0] if items else None

    def _list(
        self, form: ListingForm, filters: dict[str, str], skipped: list[UnreadableAnswer]
    ) -> Iterator[object]:
        """One listing, bounded as the module docstring says; unreadable pages skipped
        are added to ``skipped``."""
        if not form.paging:
            yield from self._list_page(form, filters, None)
            return
        seen: set[str] = set()
        unreadable_before = False
        for offset in range(0, self._max_pages * self._page_size, self._page_size):
            try:
                items = self._list_page(form, filters, self._page_size, offset)
            except UnreadableAnswer as exc:
                self._log.error("flexperto.page_unreadable", offset=offset, error=str(exc))
                skipped.append(exc)
                if unreadable_before:
                    return  # two in a row: the rest is no better (or offset is ignored)
                unreadable_before = True
                continue
            unreadable_before = False
            ids = set(map(_archive_id, items)) - {None}
            if ids and ids <= seen:
                # The service ignores offset: ask once for everything, as the guide does.
                self._log.warning("flexperto.listing_repeated", offset=offset, **filters)
                yield from self._list_page(form, filters, None)
                return
            seen |= ids
            yield from items
            if len(items) != self._page_size:
                return  # the last page, or a service that ignores limit sent everything
        self.listed_whole = False
        self._log.warning(
            "flexperto.listing_truncated",
            ceiling=self._max_pages,
            key="flexperto.max_list_pages",
            **filters,
        )

    def _list_page(
        self, form: ListingForm, filters: dict[str, str], limit: int | None, offset: int = 0
    ) -> list[object]:
        if not form.paging and self._probed is not None and self._probed[:2] == (form, filters):
            items, self._probed = self._probed[2], None
            return items
        params: dict[str, Any] = dict(filters)
        if form.paging and limit is not None:
            params.update(limit=limit, offset=offset)
        url = self._root + form.prefix + LIST_PATH
        body = json_body(SERVICE, self._call("GET", url, params=params))
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ApiError(SERVICE, f"archive list page at offset {offset} has no items list")
        return items

    def get_record(self, archive_id: str) -> object:
        url = self._base + RECORD_PATH.format(archive_id=archive_id)
        return json_body(SERVICE, self._call("GET", url))

    def download_url(self, archive_id: str) -> str:
        """The pre-signed URL the download endpoint redirects to (not followed here)."""
        endpoint = self._base + DOWNLOAD_PATH.format(archive_id=archive_id)
        answer = self._call("GET", endpoint, redirect_expected=True)
        if answer.status not in (301, 302, 303, 307, 308):
            raise ApiError(
                SERVICE, f"download answered HTTP {answer.status}, not a redirect", answer.status
            )
        location = answer.headers.get("Location", "")
        url = urljoin(endpoint, location)
        with _refusals():
            self._targets.check_url(url)
        return url

    def open_download(self, url: str, offset: int = 0) -> requests.Response:
        """Start streaming the archive bytes from ``url``, without the api-key."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with _refusals():
            response = open_stream(
                SERVICE,
                lambda: self._download_session.get(
                    url, stream=True, timeout=self._timeout, headers=headers
                ),
                self.network,
                self._deadline(),  # for the headers: the body is held to the minimum rate
            )
        if response.status_code >= 300:
            answer = read_answer(SERVICE, response, self._answer_limit, self._deadline())
            raise_for_status(SERVICE, answer, redirect_expected=True)  # not followed either
            raise ApiError(SERVICE, f"download URL answered HTTP {answer.status}")
        return response

    def iter_chunks(self, response: requests.Response) -> Iterator[bytes]:
        """The body of an open download as it arrives, exactly the bytes sent (a
        ``Content-Encoding`` is not undone: they must hash as Flexperto hashed them); a
        broken stream, or one slower than the minimum rate, is transient."""
        chunks = arriving(response, DOWNLOAD_CHUNK_SIZE, decode=False)
        floor = RateFloor(
            SERVICE,
            self._http.min_download_bytes_per_second,
            self._http.download_rate_window_seconds,
            self._clock.now,
        )
        while True:
            try:
                with self.network.measure():
                    chunk = next(chunks, None)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise TransientError(
                    SERVICE, f"download interrupted: {type(exc).__name__}"
                ) from None
            if chunk is None:
                return
            yield chunk
            floor.passed(len(chunk))  # once stored: a download cut keeps all it received

    def abandon(self, conference_id: str) -> None:
        """Claim the conference's archive. Tried once: the caller checks the outcome."""
        url = self._base + ABANDON_PATH.format(conference_id=conference_id)
        answer = send(
            SERVICE,
            lambda: self._session.post(url, timeout=self._timeout, stream=True),
            self.network,
            self._answer_limit,
            self._deadline(),
        )
        raise_for_status(SERVICE, answer)

    def subscribe_webhook(self, url: str, topic: str) -> str | None:
        """Register a webhook subscription; its id, if the answer gives one (the body
        ``{"url", "topic"}`` and the ``id`` are assumed). Tried once: a repeat could make a
        second subscription."""
        answer = send(
            SERVICE,
            lambda: self._session.post(
                self._base + SUBSCRIBE_PATH,
                json={"url": url, "topic": topic},
                timeout=self._timeout,
                stream=True,
            ),
            self.network,
            self._answer_limit,
            self._deadline(),
        )
        raise_for_status(SERVICE, answer)
        body = json_body(SERVICE, answer) if answer.body.strip() else None
        ident = body.get("id") if isinstance(body, dict) else None
        return str(ident) if isinstance(ident, str | int) and str(ident).isprintable() else None

    def unsubscribe_webhook(self, subscription_id: str) -> None:
        """Delete a webhook subscription (the endpoint is assumed)."""
        path = SUBSCRIPTION_PATH.format(subscription_id=quote(subscription_id, safe=""))
        self._call("DELETE", self._base + path)

    def _call(
        self, method: str, url: str, redirect_expected: bool = False, **kwargs: Any
    ) -> Answer:
        def attempt() -> Answer:
            answer = send(
                SERVICE,
                lambda: self._session.request(
                    method, url, timeout=self._timeout, stream=True, **kwargs
                ),
                self.network,
                self._answer_limit,
                self._deadline(),
            )
            raise_for_status(SERVICE, answer, redirect_expected)
            return answer

        return self._retrying(attempt)

    def _deadline(self) -> Deadline:
        return Deadline(self._http.deadline_seconds, self._clock.now)


def _archive_id(item: object) -> str | None:
    """The id a raw listed record shows, if any (for noticing repeated pages)."""
    ident = item.get("id") if isinstance(item, dict) else None
    return ident if isinstance(ident, str) else None


def _probe_filters(form: ListingForm) -> dict[str, str]:
    return {"status": "AVAILABLE"} if form.status_filter else {}


@contextmanager
def _refusals() -> Iterator[None]:
    """A download target the policy refuses, as an ApiError (not worth retrying)."""
    try:
        yield
    except Refused as exc:
        raise ApiError(SERVICE, f"download redirect to {exc}") from None
