"""Total Expert: the API's shapes and a client that stays inside its limits.

No request follows a redirect (a 3xx is an error naming its host): the client secret and
the bearer token go to TE's host only. Every request first spends a slot of the per-minute
budget; a token request also one of the hourly token budget, and is never retried in the
same pass (each try would spend another). The budgets and the cached token are kept by an
:class:`Access` the client is given: state.te_access shares them with every process through
the state file, or through the host's shared budget file.

Shapes the documents do not give, each with a way back (docs/assumptions.md, "What we assume
about the APIs"): the ``internal_updated_at_start`` filter (:meth:`probe_updated_since`
tells whether TE has it; jobs.contact_directory does without), the answer to
``POST /insights`` (``{"id": N, ...}``, or ``{}``: then the insight still counts as created;
any other answer proves nothing, and the insight is looked for), ``data`` echoed by
``GET /insights`` (:class:`InsightSearch` says when a search cannot be trusted), and
``expires_in`` (the documented hour when it is missing or not a number; kept within
bounds).

Paging over ``links.next`` is bounded: an empty page ends it; a page that shows only ids
seen before (a TE repeating itself) and more pages than a ceiling are an ApiError rather
than an answer cut short, since the caller would trust it as whole (an insight not found
among the pages read may be on the next one, and posting it again would double it).
Reading TE's directory whole may take ``totalexpert.max_list_pages`` pages, anything else
LOOKUP_PAGES. Ids and counts are ints, or strings of ASCII digits only.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import requests
import structlog

from sync_worker import logs
from sync_worker.clock import Clock, iso_time
from sync_worker.config import HttpConfig, NetworkConfig, TotalExpertConfig
from sync_worker.errors import JobStop
from sync_worker.http import (
    Answer,
    ApiError,
    Deadline,
    NetworkTime,
    TransientError,
    json_body,
    new_session,
    raise_for_status,
    retry_policy,
    send,
)
from sync_worker.untrusted import storable

SERVICE = "totalexpert"
# "Once you have retrieved a token, that token is valid for 1 hour." (getting-started guide)
DOCUMENTED_TOKEN_LIFETIME = 3600
# Bounds on what an answer's expires_in makes of a token's life: the least leaves a pass
# minutes of use after state.tokens' margin; the most keeps a token no longer than a day.
MIN_TOKEN_LIFETIME = 600.0
MAX_TOKEN_LIFETIME = 86_400.0
UPDATED_SINCE_FILTER = "internal_updated_at_start"
# Answers of probe_updated_since.
FILTER_SUPPORTED, FILTER_REJECTED, FILTER_IGNORED = "supported", "rejected", "ignored"
PAGE_SIZE = 100
# Pages of one look-up (an address's contacts, a contact's insights): 2,000 items.
LOOKUP_PAGES = 20
# ASCII digits only ("²".isdigit() is true, and int() reads "٣" as 3), within 64 bits.
ASCII_INT = re.compile(r"[0-9]{1,18}")
INT_RANGE = range(-(2**63), 2**63)
OAUTH_CODE = re.compile(r"[a-z_]{1,40}")  # an OAuth error code, as RFC 6749 spells them
TOKEN_WAIT_SECONDS = 0.2  # looking again for the token another process is requesting


class TokenBudgetExhausted(JobStop):
    """No token request is allowed before ``next_allowed_at`` (epoch seconds)."""

    def __init__(self, next_allowed_at: float) -> None:
        super().__init__(f"token request budget spent until {iso_time(next_allowed_at)}")
        self.next_allowed_at = next_allowed_at


class CredentialsRejected(ApiError, JobStop):
    """TE refused the client id and secret at ``/token`` (HTTP 401, or an OAuth
    ``invalid_client``): no request will succeed until they are corrected."""

    def __init__(self, status: int, code: str) -> None:
        self.reason = f"credentials rejected ({status} {code})"
        super().__init__(SERVICE, f"{self.reason}: check totalexpert.client_id and client_secret")
        self.status = status


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


class Access(Protocol):
    """Where the client's budgets and access token are kept (state.te_access.SharedAccess).
    A spend returns None when the slot is taken, else when the next one comes back."""

    def spend_request(self, now: float) -> float | None: ...

    def spend_token_request(self, now: float) -> float | None: ...

    def take_token_lease(self, now: float, seconds: float) -> float | None:
        """Be the one to request a token: None if so, else until when another one is."""

    def release_token_lease(self) -> None: ...

    def cached_token(self, now: float) -> tuple[str, float] | None:
        """The token, and until when to use it."""

    def keep_token(self, token: str, expires_at: float, now: float) -> float:
        """Keep a new token; returns until when to use it."""

    def drop_token(self, token: str) -> None: ...


class TotalExpertClient:
    def __init__(
        self,
        config: TotalExpertConfig,
        http: HttpConfig,
        access: Access,
        clock: Clock,
        network: NetworkConfig | None = None,
    ) -> None:
        self._config = config
        logs.add_basic_credentials(config.client_id, config.client_secret)  # as /token gets them
        self._directory_pages = config.max_list_pages
        self._access = access
        self._clock = clock
        self._timeout = http.timeout_seconds
        self._deadline_seconds = http.deadline_seconds
        # Long enough for the token request's connection and answer; if the holder dies,
        # the others go on after this.
        self._token_lease_seconds = 2 * http.timeout_seconds + 5
        self._answer_limit = http.max_answer_bytes
        self._retrying = retry_policy(http, clock.sleep)
        self._retrying_once_only = retry_policy(http, clock.sleep, idempotent=False)
        self._session = new_session(
            {"Accept": "application/json"}, route=(network or NetworkConfig()).route("totalexpert")
        )
        self._log = structlog.get_logger(service=SERVICE)
        self.requests_sent = 0
        self.tokens_requested = 0
        self.rate_limited = 0  # 429 answers
        self.network = NetworkTime()
        self._remembered: tuple[str, float] | None = None  # token, and until when to use it

    def close(self) -> None:
        self._session.close()

    # --- endpoints -------------------------------------------------------------------

    def heartbeat(self) -> None:
        self._request("GET", "/heartbeat", authenticated=False)

    def token_usable_until(self) -> float | None:
        """Until when the cached access token is used, if there is one."""
        cached = self._access.cached_token(self._clock.now())
        return None if cached is None else cached[1]

    def fetch_token(self) -> None:
        """Make sure a token is cached, requesting one only if none is."""
        self._token()

    def contacts_page(self, page: int) -> tuple[list[Contact], int]:
        """One page of all the organisation's contacts, and how many pages there are."""
        items, links = self._page("/contacts", {}, page)
        return _contacts(items), _int(links.get("last")) or page

    def contacts_from_page(self, page: int) -> Iterator[Contact]:
        """Every contact from ``page`` on."""
        for item in self._pages("/contacts", {}, page, whole=True):
            yield from _contacts([item])

    def contacts_updated_since(self, since: datetime) -> Iterator[Contact]:
        filters = {UPDATED_SINCE_FILTER: _te_time(since)}
        for item in self._pages("/contacts", filters, whole=True):
            yield from _contacts([item])

    def probe_updated_since(self) -> str:
        """Whether TE filters contacts by ``internal_updated_at_start`` (not documented):
        asks for those changed after tomorrow, which must be none. Answers
        FILTER_SUPPORTED, FILTER_REJECTED (400) or FILTER_IGNORED (contacts came back).
        An organisation without contacts looks supported, and costs nothing either way."""
        tomorrow = datetime.fromtimestamp(self._clock.now() + 86_400, UTC)
        try:
            items, _links = self._page("/contacts", {UPDATED_SINCE_FILTER: _te_time(tomorrow)}, 1)
        except CredentialsRejected:
            raise  # the token's 400, not the filter's
        except ApiError as exc:
            if exc.status == 400:
                return FILTER_REJECTED
            raise
        return FILTER_IGNORED if items else FILTER_SUPPORTED

    def users_updated_since(self, since: datetime | None) -> Iterator[User]:
        filters = {UPDATED_SINCE_FILTER: _te_time(since)} if since else {}
        for item in self._pages("/users", filters, whole=True):
            user = _user(item)
            if user is not None:
                yield user

    def find_contacts(self, email: str, limit: int) -> list[Contact]:
        """The contacts with ``email``; reading stops past ``limit`` of them (at most
        ``limit + 1`` come back)."""
        found: list[Contact] = []
        for item in self._pages("/contacts", {"email": email}):
            contact = _contact(item)
            if contact is not None and contact.email == email.lower():
                found.append(contact)
                if len(found) > limit:
                    break
        return found

    def find_user(self, email: str) -> User | None:
        for item in self._pages("/users", {"email": email}):
            user = _user(item)
            if user is not None and user.email == email.lower():
                return user
        return None

    def insight_type_id(self, name: str) -> int | None:
        for item in self._pages("/insight-types", {"type": name}):
            if isinstance(item, dict) and item.get("type") == name:
                return _int(item.get("id"))
        return None

    def create_insight(self, body: dict[str, Any]) -> int | None:
        """Post one insight; returns its id, or None when TE accepted it without saying
        which. Only an answer of TE's shape proves the insight created (see
        :func:`_created_id`); any other, whatever its status (a proxy's or a firewall's
        page), is a TransientError that may have been processed. TE does not deduplicate: a
        POST that may have been processed is not repeated here (the caller looks for it
        first on its next try)."""
        answer = self._request_answer("POST", "/insights", idempotent=False, json=body)
        try:
            return _created_id(answer.body)
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
            elif data.get("flexperto_archive_id") == archive_id and _for_contact(item, contact_id):
                return InsightSearch(True, _int(item.get("id")))
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
            ids = _ids(items)
            if not items:
                return
            if ids and ids <= seen:  # what it has not shown may be there all the same
                self._log.warning("te.paging_repeated", path=path, page=page)
                raise ApiError(SERVICE, f"list {path} repeats its pages from page {page}")
            seen |= ids
            yield from items
            next_page = _int(links.get("next"))
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
        body = self._request("GET", path, params=params)
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ApiError(SERVICE, f"list {path} answered without an items list")
        links = body.get("links")
        return items, links if isinstance(links, dict) else {}

    def _request(self, method: str, path: str, authenticated: bool = True, **kwargs: Any) -> Any:
        """The JSON answer of a request (see :meth:`_request_answer`)."""
        return json_body(SERVICE, self._request_answer(method, path, authenticated, **kwargs))

    def _request_answer(
        self,
        method: str,
        path: str,
        authenticated: bool = True,
        idempotent: bool = True,
        **kwargs: Any,
    ) -> Answer:
        """A successful answer, after retries; a rejected token is replaced once."""

        def attempt() -> Answer:
            token = self._token() if authenticated else None
            answer = self._send(method, path, token, **kwargs)
            if answer.status == 401 and token is not None:
                self._drop_token(token)
                answer = self._send(method, path, self._token(), **kwargs)
            if answer.status == 429:
                self.rate_limited += 1
                self._log.warning("te.rate_limited", path=path)
            raise_for_status(SERVICE, answer)
            return answer

        return (self._retrying if idempotent else self._retrying_once_only)(attempt)

    def _send(self, method: str, path: str, token: str | None, **kwargs: Any) -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self._spend_request_slot()
        self.requests_sent += 1
        return send(
            SERVICE,
            lambda: self._session.request(
                method,
                self._config.base_url + path,
                headers=headers,
                timeout=self._timeout,
                stream=True,
                **kwargs,
            ),
            self.network,
            self._answer_limit,
            self._deadline(),
        )

    def _deadline(self) -> Deadline:
        return Deadline(self._deadline_seconds, self._clock.now)

    def _spend_request_slot(self) -> None:
        """Take a slot from the per-minute budget, waiting for one to come back if needed."""
        while True:
            now = self._clock.now()
            next_at = self._access.spend_request(now)
            if next_at is None:
                return
            self._log.info("te.throttled", wait_seconds=round(next_at - now, 3))
            self._clock.sleep(next_at - now)

    def _token(self) -> str:
        """The access token: remembered for this pass, else the one kept for every
        process, else a new one."""
        now = self._clock.now()
        if self._remembered is None or self._remembered[1] <= now:
            self._remembered = self._shared_or_new_token()
        return self._remembered[0]

    def _shared_or_new_token(self) -> tuple[str, float]:
        """The token kept for every process, else a new one. One process at a time asks
        for one (it holds the lease); the others wait for it and use the same token."""
        while True:
            now = self._clock.now()
            if (cached := self._access.cached_token(now)) is not None:
                return cached
            held_until = self._access.take_token_lease(now, self._token_lease_seconds)
            if held_until is None:
                break
            self._clock.sleep(min(TOKEN_WAIT_SECONDS, held_until - now))
        try:
            return self._access.cached_token(self._clock.now()) or self._request_token()
        finally:
            self._access.release_token_lease()

    def _request_token(self) -> tuple[str, float]:
        now = self._clock.now()
        next_at = self._access.spend_token_request(now)
        if next_at is not None:
            raise TokenBudgetExhausted(next_at)
        self._spend_request_slot()
        self.requests_sent += 1
        self.tokens_requested += 1
        self._log.info("te.token_requested")
        try:
            answer = send(
                SERVICE, self._post_token, self.network, self._answer_limit, self._deadline()
            )
            if answer.status == 429:
                self.rate_limited += 1
                self._log.warning("te.rate_limited", path="/token")
            _refuse_rejected_credentials(answer)
            raise_for_status(SERVICE, answer)
        except TransientError as exc:
            # Not retried here: every try would spend one of the few token requests.
            raise ApiError(SERVICE, f"token request failed: {exc}", exc.status) from None
        body = json_body(SERVICE, answer)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ApiError(SERVICE, "token answer lacks access_token")
        expires_in = _token_lifetime(body.get("expires_in"))
        return token, self._access.keep_token(token, now + expires_in, now)

    def _post_token(self) -> requests.Response:
        credentials = f"{self._config.client_id}:{self._config.client_secret}".encode()
        return self._session.post(
            self._config.base_url + "/token",
            headers={"Authorization": "Basic " + base64.b64encode(credentials).decode()},
            json={"grant_type": "client_credentials"},
            timeout=self._timeout,
            stream=True,
        )

    def _drop_token(self, token: str) -> None:
        """TE rejected ``token`` (401): forget it, here and for every process."""
        self._access.drop_token(token)
        self._remembered = None
        self._log.warning("te.token_rejected")


def _refuse_rejected_credentials(answer: Answer) -> None:
    """CredentialsRejected if the token answer says the client is not known: a 401, or
    OAuth's ``invalid_client`` (RFC 6749 5.2; TE's sandbox answers it with a 400)."""
    if answer.status not in (400, 401):
        return
    try:
        body = json.loads(answer.body)
    except (ValueError, RecursionError):
        body = None
    code = body.get("error") if isinstance(body, dict) else None
    if code == "invalid_client" or answer.status == 401:
        shown = code if isinstance(code, str) and OAUTH_CODE.fullmatch(code) else "unauthorized"
        raise CredentialsRejected(answer.status, shown)


def _created_id(body: bytes) -> int | None:
    """The id in an answer to ``POST /insights``; None for the empty object. Raises
    ValueError for any other answer: TE's is assumed ``{"id": N, "created": "<url>"}``
    (API-NOTES), the strict sandbox's ``{}``."""
    created = json.loads(body)
    if created == {}:
        return None
    created_id = _int(created.get("id")) if isinstance(created, dict) else None
    if created_id is None:
        raise ValueError("not an answer of TE's shape")
    return created_id


def _token_lifetime(expires_in: object) -> float:
    """How long to keep a token, from the answer's ``expires_in``: the documented hour
    when it is missing or not a number of seconds, else within the bounds (a token that
    seems to expire at once would spend the other token request of the hour)."""
    if isinstance(expires_in, str) and expires_in.isascii() and expires_in.isdigit():
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        return DOCUMENTED_TOKEN_LIFETIME
    if isinstance(expires_in, float) and math.isnan(expires_in):
        return DOCUMENTED_TOKEN_LIFETIME
    # compared before any conversion: a number of 400 digits is no float
    return float(min(max(expires_in, MIN_TOKEN_LIFETIME), MAX_TOKEN_LIFETIME))


def _contacts(items: Iterable[object]) -> list[Contact]:
    return [contact for contact in map(_contact, items) if contact is not None]


def _user(item: object) -> User | None:
    if not isinstance(item, dict):
        return None
    user_id, email = _int(item.get("id")), _email(item.get("email"))
    if user_id is None or email is None:
        return None
    return User(user_id, email)


def _for_contact(insight: dict[str, Any], contact_id: int) -> bool:
    """Whether a listed insight belongs to the contact, as far as it says (in case TE
    ignores the contact filter and lists other contacts' insights too)."""
    contact = insight.get("contact")
    shown = (
        _int(contact.get("id")) if isinstance(contact, dict) else _int(insight.get("contact_id"))
    )
    return shown is None or shown == contact_id


def _te_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _contact(item: object) -> Contact | None:
    if not isinstance(item, dict):
        return None
    contact_id = _int(item.get("id"))
    email = _email(item.get("email"))
    if contact_id is None or email is None:
        return None
    owner = item.get("owner")
    owner_id = _int(owner.get("id")) if isinstance(owner, dict) else None
    return Contact(contact_id, email, owner_id)


def _email(value: object) -> str | None:
    """An address as TE sent it, in lower case, if it is text the state file can keep."""
    return value.lower() if storable(value) else None


def _ids(items: list[Any]) -> set[int]:
    """The ids the items of a page show."""
    found = (_int(item.get("id")) for item in items if isinstance(item, dict))
    return {ident for ident in found if ident is not None}


def _int(value: object) -> int | None:
    """An id or count as TE sent it, if it is one (see ASCII_INT)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value in INT_RANGE else None
    if isinstance(value, str) and ASCII_INT.fullmatch(value):
        return int(value)
    return None
