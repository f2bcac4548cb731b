"""Total Expert: the API's shapes and a client that stays inside its limits.

Every request first spends a token from the shared per-minute bucket; a token request also
spends one from the per-hour token bucket, and is never retried in the same pass (each try
would spend another). The access token is cached in SQLite for every process and pass.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
import sqlite_utils
import structlog

from state import rate_limit, tokens
from sync_worker import logs
from sync_worker.clock import Clock
from sync_worker.config import HttpConfig, TotalExpertConfig
from sync_worker.http import (
    ApiError,
    NetworkTime,
    TransientError,
    json_body,
    new_session,
    raise_for_status,
    retry_policy,
    send,
)

SERVICE = "totalexpert"
REQUEST_BUCKET = "totalexpert:requests"
TOKEN_BUCKET = "totalexpert:tokens"
MINUTE = 60.0
HOUR = 3600.0
# Our clock and the service's differ by the request's travel time: keep a safety margin.
WINDOW_MARGIN_SECONDS = 1.0
PAGE_SIZE = 100


class TokenBudgetExhausted(Exception):
    """No token request is allowed before ``next_allowed_at`` (epoch seconds)."""

    def __init__(self, next_allowed_at: float) -> None:
        super().__init__(f"token request budget spent until {next_allowed_at:.0f}")
        self.next_allowed_at = next_allowed_at


@dataclass(frozen=True)
class Contact:
    id: int
    email: str
    owner_id: int | None


@dataclass(frozen=True)
class User:
    id: int
    email: str


class TotalExpertClient:
    def __init__(
        self,
        config: TotalExpertConfig,
        http: HttpConfig,
        db: sqlite_utils.Database,
        clock: Clock,
    ) -> None:
        self._config = config
        self._db = db
        self._clock = clock
        self._timeout = http.timeout_seconds
        self._retrying = retry_policy(http, clock.sleep)
        self._retrying_once_only = retry_policy(http, clock.sleep, idempotent=False)
        self._session = new_session({"Accept": "application/json"})
        self._token_key = hashlib.sha256(
            f"{config.base_url}\n{config.client_id}".encode()
        ).hexdigest()[:32]
        self._log = structlog.get_logger(service=SERVICE)
        self.requests_sent = 0
        self.tokens_requested = 0
        self.network = NetworkTime()
        self._remembered: tuple[str, float] | None = None  # token, and until when to use it

    def close(self) -> None:
        self._session.close()

    # --- endpoints -------------------------------------------------------------------

    def heartbeat(self) -> None:
        self._request("GET", "/heartbeat", authenticated=False)

    def token_expiry(self) -> float | None:
        """When the cached access token expires, if there is one still good."""
        cached = tokens.lookup(self._db, self._token_key, self._clock.now())
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
        for item in self._pages("/contacts", {}, page):
            yield from _contacts([item])

    def contacts_updated_since(self, since: datetime) -> Iterator[Contact]:
        filters = {"internal_updated_at_start": _te_time(since)}
        for item in self._pages("/contacts", filters):
            yield from _contacts([item])

    def users_updated_since(self, since: datetime | None) -> Iterator[User]:
        filters = {"internal_updated_at_start": _te_time(since)} if since else {}
        for item in self._pages("/users", filters):
            user = _user(item)
            if user is not None:
                yield user

    def find_contacts(self, email: str) -> list[Contact]:
        found = _contacts(self._pages("/contacts", {"email": email}))
        return [contact for contact in found if contact.email == email.lower()]

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

    def create_insight(self, body: dict[str, Any]) -> int:
        """Post one insight. TE does not deduplicate: a POST that may have been processed is
        not repeated here (the caller looks for it first on its next try)."""
        answer = self._request("POST", "/insights", idempotent=False, json=body)
        insight_id = _int(answer.get("id")) if isinstance(answer, dict) else None
        if insight_id is None:
            raise ApiError(SERVICE, "insight created but the answer has no id")
        return insight_id

    def find_insight(self, contact_id: int, type_id: int, archive_id: str) -> int | None:
        """The id of the contact's insight carrying ``data.flexperto_archive_id``, if any."""
        for item in self._pages("/insights", {"contact_id": contact_id, "type_id": type_id}):
            data = item.get("data") if isinstance(item, dict) else None
            if isinstance(data, dict) and data.get("flexperto_archive_id") == archive_id:
                return _int(item.get("id"))
        return None

    # --- plumbing --------------------------------------------------------------------

    def _pages(self, path: str, filters: dict[str, Any], page: int = 1) -> Iterator[Any]:
        """The items of every page from ``page`` on."""
        while True:
            items, links = self._page(path, filters, page)
            yield from items
            next_page = _int(links.get("next"))
            if next_page is None or next_page <= page:
                return
            page = next_page

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

    def _request(
        self,
        method: str,
        path: str,
        authenticated: bool = True,
        idempotent: bool = True,
        **kwargs: Any,
    ) -> Any:
        def attempt() -> Any:
            response = self._send(method, path, authenticated, **kwargs)
            if response.status_code == 401 and authenticated:
                self._drop_token(response)
                response = self._send(method, path, authenticated, **kwargs)
            if response.status_code == 429:
                self._log.warning("te.rate_limited", path=path)
            raise_for_status(SERVICE, response)
            return json_body(SERVICE, response)

        return (self._retrying if idempotent else self._retrying_once_only)(attempt)

    def _send(
        self, method: str, path: str, authenticated: bool, **kwargs: Any
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {self._token()}"} if authenticated else {}
        self._spend_request_slot()
        self.requests_sent += 1
        return send(
            SERVICE,
            lambda: self._session.request(
                method,
                self._config.base_url + path,
                headers=headers,
                timeout=self._timeout,
                **kwargs,
            ),
            self.network,
        )

    def _spend_request_slot(self) -> None:
        """Take a slot from the per-minute bucket, waiting for one to come back if needed."""
        while True:
            now = self._clock.now()
            next_at = rate_limit.try_spend(
                self._db,
                REQUEST_BUCKET,
                self._config.requests_per_minute,
                MINUTE + WINDOW_MARGIN_SECONDS,
                now,
            )
            if next_at is None:
                return
            self._log.info("te.throttled", wait_seconds=round(next_at - now, 3))
            self._clock.sleep(next_at - now)

    def _token(self) -> str:
        """The access token: remembered for this pass, shared through the state file."""
        now = self._clock.now()
        if self._remembered is not None and self._remembered[1] > now:
            return self._remembered[0]
        token, expires_at = tokens.lookup(self._db, self._token_key, now) or self._request_token()
        self._remembered = (token, expires_at - tokens.EXPIRY_MARGIN_SECONDS)
        return token

    def _request_token(self) -> tuple[str, float]:
        now = self._clock.now()
        next_at = rate_limit.try_spend(
            self._db,
            TOKEN_BUCKET,
            self._config.token_requests_per_hour,
            HOUR + WINDOW_MARGIN_SECONDS,
            now,
        )
        if next_at is not None:
            raise TokenBudgetExhausted(next_at)
        self._spend_request_slot()
        self.requests_sent += 1
        self.tokens_requested += 1
        self._log.info("te.token_requested")
        try:
            response = send(SERVICE, self._post_token, self.network)
            raise_for_status(SERVICE, response)
        except TransientError as exc:
            # Not retried here: every try would spend one of the few token requests.
            raise ApiError(SERVICE, f"token request failed: {exc}", exc.status) from None
        body = json_body(SERVICE, response)
        token = body.get("access_token") if isinstance(body, dict) else None
        expires_in = _int(body.get("expires_in")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token or expires_in is None:
            raise ApiError(SERVICE, "token answer lacks access_token or expires_in")
        logs.add_secret(token)
        tokens.store(self._db, self._token_key, token, now + expires_in, now)
        return token, now + expires_in

    def _post_token(self) -> requests.Response:
        credentials = f"{self._config.client_id}:{self._config.client_secret}".encode()
        return self._session.post(
            self._config.base_url + "/token",
            headers={"Authorization": "Basic " + base64.b64encode(credentials).decode()},
            json={"grant_type": "client_credentials"},
            timeout=self._timeout,
        )

    def _drop_token(self, response: requests.Response) -> None:
        sent = response.request.headers.get("Authorization", "").removeprefix("Bearer ")
        tokens.drop(self._db, self._token_key, sent)
        self._remembered = None
        self._log.warning("te.token_rejected")


def _contacts(items: Iterable[object]) -> list[Contact]:
    return [contact for contact in map(_contact, items) if contact is not None]


def _user(item: object) -> User | None:
    if not isinstance(item, dict):
        return None
    user_id, email = _int(item.get("id")), item.get("email")
    if user_id is None or not isinstance(email, str):
        return None
    return User(user_id, email.lower())


def _te_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _contact(item: object) -> Contact | None:
    if not isinstance(item, dict):
        return None
    contact_id = _int(item.get("id"))
    email = item.get("email")
    if contact_id is None or not isinstance(email, str):
        return None
    owner = item.get("owner")
    owner_id = _int(owner.get("id")) if isinstance(owner, dict) else None
    return Contact(contact_id, email.lower(), owner_id)


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
