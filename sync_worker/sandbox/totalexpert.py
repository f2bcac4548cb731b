"""The sandbox Total Expert: OAuth tokens, contacts, users, insight types and insights, with
TE's per-minute and token limits enforced by the sandbox clock.

Every request under ``/v1`` counts toward a sliding 60-second window of
``requests_per_minute``; token requests also count toward a sliding hour of
``token_requests_per_hour``. Over either limit the answer is 429 without ``Retry-After``.
Requests over a limit do not take a place in its window.

The :class:`~sync_worker.sandbox.dialect.Dialect` decides which query parameters and filter
attributes the lists take, which fields their items show, and what ``POST /insights``
answers. Records keep every field inside, whatever the dialect shows.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sync_worker.core.clock import Clock
from sync_worker.sandbox.dialect import Dialect
from sync_worker.sandbox.http import FakeService, Incoming, Reply

BASE = "/v1"
TOKEN_LIFETIME_SECONDS = 3600
MAX_PAGE_SIZE = 100
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
DATE_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
LIST_PARAMS = ("page[number]", "page[size]", "filter")
UPDATED_SINCE = "internal_updated_at_start"
UPDATED_AT = "internal_updated_at"
# The documented fields of each list's items (API-NOTES.md), in the order records keep them.
CONTACT_FIELDS = ("id", "email", "first_name", "last_name", "owner")
USER_FIELDS = ("id", "email", "username", "external_id")
TYPE_FIELDS = ("id", "type", "description")
INSIGHT_FIELDS = ("id", "type", "contact", "owner", "insight_date", "data")


class _BadQuery(Exception):
    """A query the dialect refuses; the message is the 400 answer's error."""


class FakeTotalExpert(FakeService):
    """Users, contacts, insight types, insights and tokens, and the TE API over them."""

    name = "totalexpert"

    def __init__(
        self,
        clock: Clock,
        client_id: str,
        client_secret: str,
        requests_per_minute: int,
        token_requests_per_hour: int,
        dialect: Dialect,
    ) -> None:
        super().__init__(clock)
        self.dialect = dialect
        self.base_url = ""  # set once listening
        self._client = (client_id, client_secret)
        self.requests_per_minute = requests_per_minute
        self.token_requests_per_hour = token_requests_per_hour
        self._arrivals: deque[float] = deque()
        self._token_arrivals: deque[float] = deque()
        self._all_token_arrivals: list[float] = []
        self._tokens: dict[str, float] = {}
        self._users: dict[int, dict[str, Any]] = {}
        self._contacts: dict[int, dict[str, Any]] = {}
        self._contacts_by_email: dict[str, list[int]] = {}
        self._types: dict[int, dict[str, Any]] = {}
        self._insights: list[dict[str, Any]] = []
        self._next_id = {"user": 50, "contact": 450, "type": 7, "insight": 9000}
        self.token_requests = 0
        self.tokens_issued = 0
        self.issued_tokens: list[str] = []
        self.rate_limited_count = 0
        self._routes: dict[tuple[str, str], Callable[[Incoming], Reply]] = {
            ("GET", "/heartbeat"): lambda _request: Reply.json(200, {"status": "ok"}),
            ("POST", "/token"): self._token,
            ("GET", "/contacts"): self._list_contacts,
            ("GET", "/users"): self._list_users,
            ("GET", "/insight-types"): self._list_types,
            ("GET", "/insights"): self._list_insights,
            ("POST", "/insights"): self._create_insight,
        }
        extra = (UPDATED_AT,) if dialect.te_extra_fields else ()
        data = () if dialect.te_insight_data_listed else ("data",)
        self._contact_fields = frozenset(CONTACT_FIELDS + extra)
        self._user_fields = frozenset(USER_FIELDS + extra)
        self._type_fields = frozenset(TYPE_FIELDS)
        self._insight_fields = frozenset(INSIGHT_FIELDS).difference(data)

    # --- test and seed API --------------------------------------------------------

    def add_user(
        self, email: str, username: str | None = None, external_id: str | None = None
    ) -> dict[str, Any]:
        with self.lock:
            user = {
                "id": self._new_id("user"),
                "email": email,
                "username": username or email.split("@")[0],
                "external_id": external_id,
                "internal_updated_at": _format(self.clock.now()),
            }
            self._users[user["id"]] = user
            return dict(user)

    def add_contact(
        self,
        email: str,
        owner_id: int,
        first_name: str = "",
        last_name: str = "",
        updated_at: float | None = None,
    ) -> dict[str, Any]:
        updated = self.clock.now() if updated_at is None else updated_at
        with self.lock:
            owner = self._users[owner_id]
            contact = {
                "id": self._new_id("contact"),
                "email": email,
                "first_name": first_name,
                "last_name": last_name,
                "internal_updated_at": _format(updated),
                "owner": {k: owner[k] for k in ("id", "email", "username", "external_id")},
            }
            self._contacts[contact["id"]] = contact
            self._contacts_by_email.setdefault(email.lower(), []).append(contact["id"])
            return json.loads(json.dumps(contact))

    def update_contact(self, contact_id: int, owner_id: int) -> None:
        """Give a contact to another owner (it shows up in later delta queries)."""
        with self.lock:
            owner = self._users[owner_id]
            contact = self._contacts[contact_id]
            contact["owner"] = {k: owner[k] for k in ("id", "email", "username", "external_id")}
            contact["internal_updated_at"] = _format(self.clock.now())

    def delete_contact(self, contact_id: int) -> None:
        with self.lock:
            contact = self._contacts.pop(contact_id)
            self._contacts_by_email[contact["email"].lower()].remove(contact_id)

    def add_insight_type(self, type_name: str, description: str = "") -> dict[str, Any]:
        with self.lock:
            kind = {"id": self._new_id("type"), "type": type_name, "description": description}
            self._types[kind["id"]] = kind
            return dict(kind)

    def users(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(u) for u in self._users.values()]

    def contacts(self) -> list[dict[str, Any]]:
        with self.lock:
            return json.loads(json.dumps(list(self._contacts.values())))

    def insights(self) -> list[dict[str, Any]]:
        with self.lock:
            return json.loads(json.dumps(self._insights))

    def revoke_tokens(self) -> None:
        with self.lock:
            self._tokens.clear()

    def set_limits(
        self, requests_per_minute: int | None = None, token_requests_per_hour: int | None = None
    ) -> None:
        with self.lock:
            if requests_per_minute is not None:
                self.requests_per_minute = requests_per_minute
            if token_requests_per_hour is not None:
                self.token_requests_per_hour = token_requests_per_hour

    def max_requests_in_window(self, seconds: float = 60.0) -> int:
        """The most requests that arrived within any ``seconds``-long span."""
        return _max_in_window([r.received_at for r in self.requests], seconds)

    def max_token_requests_in_window(self, seconds: float = 3600.0) -> int:
        with self.lock:
            return _max_in_window(list(self._all_token_arrivals), seconds)

    # --- HTTP ---------------------------------------------------------------------

    def handle(self, request: Incoming) -> Reply:
        if not request.path.startswith(BASE + "/"):
            return self.error(404, "Not Found")
        path = request.path.removeprefix(BASE)
        now = self.clock.now()
        with self.lock:
            if not _admit(self._arrivals, now, 60.0, self.requests_per_minute):
                self.rate_limited_count += 1
                return self.error(429, "Too Many Requests")
        action = self._routes.get((request.method, path))
        if action is None:
            known = any(p == path for _, p in self._routes)
            return self._405() if known else self.error(404, "Not Found")
        if path not in ("/heartbeat", "/token") and not self._authorized(request, now):
            return self.error(401, "invalid_token")
        try:
            return action(request)
        except _BadQuery as problem:
            return self.error(400, str(problem))

    def _405(self) -> Reply:
        return self.error(405, "Method Not Allowed")

    def _token(self, request: Incoming) -> Reply:
        now = self.clock.now()
        with self.lock:
            self.token_requests += 1
            self._all_token_arrivals.append(now)
            if not _admit(self._token_arrivals, now, 3600.0, self.token_requests_per_hour):
                self.rate_limited_count += 1
                return self.error(429, "Too Many Requests")
        if not self._basic_auth_ok(request.headers.get("authorization", "")):
            return _oauth_error("invalid_client", "Client authentication failed")
        if "json" not in request.headers.get("content-type", ""):
            return self.error(415, "Unsupported Media Type")
        try:
            grant = request.json().get("grant_type")
        except (ValueError, AttributeError):
            return _oauth_error("invalid_request", "Unable to parse JSON")
        if grant != "client_credentials":
            return _oauth_error("unsupported_grant_type", f"grant_type {grant!r} not supported")
        token = secrets.token_urlsafe(24)
        with self.lock:
            self._tokens[token] = now + TOKEN_LIFETIME_SECONDS
            self.issued_tokens.append(token)
            self.tokens_issued += 1
        return Reply.json(
            200,
            {
                "access_token": token,
                "expires_in": TOKEN_LIFETIME_SECONDS,
                "token_type": "bearer",
                "scope": "admin",
            },
        )

    def _basic_auth_ok(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        client_id, _, client_secret = decoded.partition(":")
        return secrets.compare_digest(client_id, self._client[0]) and secrets.compare_digest(
            client_secret, self._client[1]
        )

    def _authorized(self, request: Incoming, now: float) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self.lock:
            expiry = self._tokens.get(token)
        return scheme.lower() == "bearer" and expiry is not None and now < expiry

    def _filters(self, request: Incoming, known: tuple[str, ...]) -> dict[str, str]:
        """The list filters of ``request`` that take effect; ``known``: the list's attributes.

        Raises _BadQuery for a parameter or a filter attribute the dialect refuses.
        """
        if self.dialect.te_strict_queries:
            unknown = [name for name in request.query if name not in LIST_PARAMS]
            if unknown:
                raise _BadQuery(f"unknown query parameter '{unknown[0]}'")
        filters = _filters(request)
        refused = [name for name in filters if self._refuses(name, known)]
        if refused:
            raise _BadQuery(f"unknown filter attribute {refused}")
        if UPDATED_SINCE in known and self.dialect.te_updated_since == "ignored":
            filters.pop(UPDATED_SINCE, None)
        return filters

    def _refuses(self, attribute: str, known: tuple[str, ...]) -> bool:
        """Whether the filter ``attribute`` is an error, on a list taking ``known`` ones."""
        if attribute == UPDATED_SINCE and attribute in known:
            return self.dialect.te_updated_since == "rejected"
        return self.dialect.te_strict_queries and attribute not in known

    def _list_contacts(self, request: Incoming) -> Reply:
        filters = self._filters(request, ("email", UPDATED_SINCE))
        with self.lock:
            if "email" in filters:
                ids = self._contacts_by_email.get(filters["email"].lower(), [])
                found = [self._contacts[i] for i in ids]
            else:
                found = list(self._contacts.values())
            since = filters.get(UPDATED_SINCE)
            if since:
                found = [c for c in found if c["internal_updated_at"] >= since]
            return self._page(request, found, self._contact_fields)

    def _list_users(self, request: Incoming) -> Reply:
        filters = self._filters(request, ("email", UPDATED_SINCE))
        email = filters.get("email", "").lower()
        since = filters.get(UPDATED_SINCE, "")
        with self.lock:
            found = [
                u
                for u in self._users.values()
                if (not email or u["email"].lower() == email) and u["internal_updated_at"] >= since
            ]
            return self._page(request, found, self._user_fields)

    def _list_types(self, request: Incoming) -> Reply:
        name = self._filters(request, ("type",)).get("type")
        with self.lock:
            found = [t for t in self._types.values() if name is None or t["type"] == name]
            return self._page(request, found, self._type_fields)

    def _list_insights(self, request: Incoming) -> Reply:
        filters = self._filters(request, ("contact_id", "type_id"))
        with self.lock:
            found = [
                i
                for i in self._insights
                if all(str(i.get(key)) == value for key, value in filters.items())
            ]
            return self._page(request, found, self._insight_fields)

    def _create_insight(self, request: Incoming) -> Reply:
        if "json" not in request.headers.get("content-type", ""):
            return self.error(415, "Unsupported Media Type")
        try:
            body = request.json()
        except ValueError:
            return self.error(400, "Unable to parse JSON")
        if not isinstance(body, dict):
            return self.error(400, "Unable to parse JSON")
        with self.lock:
            problem = self._insight_problem(body)
            if problem:
                return self.error(422, problem)
            kind = self._find_type(body["type"])
            insight = {
                "id": self._new_id("insight"),
                "type": {"id": kind["id"], "type": kind["type"]},
                "contact": {"id": body["contact"]["id"]},
                "owner": {"id": body["owner"]["id"]},
                "contact_id": body["contact"]["id"],
                "owner_id": body["owner"]["id"],
                "type_id": kind["id"],
                "insight_date": body["insight_date"],
                "data": body.get("data") or {},
                "created_at": self.clock.now(),
            }
            self._insights.append(insight)
        if not self.dialect.te_insight_answer_id:
            return Reply.json(201, {})
        return Reply.json(
            201, {"id": insight["id"], "created": f"{self.base_url}/insights/{insight['id']}"}
        )

    def _insight_problem(self, body: dict[str, Any]) -> str | None:
        if self._find_type(body.get("type")) is None:
            return "Unable to find target for relationship: 'type'"
        if _reference(body.get("contact")) not in self._contacts:
            return "Unable to find target for relationship: 'contact'"
        if body.get("owner") is None:
            return "owner is required when acting as admin"
        if _reference(body.get("owner")) not in self._users:
            return "Unable to find target for relationship: 'owner'"
        if not _is_date(body.get("insight_date")):
            return "insight_date must be formatted YYYY-MM-DD HH:MM:SS"
        if not isinstance(body.get("data", {}), dict):
            return "data must be an object"
        return None

    def _find_type(self, reference: Any) -> dict[str, Any] | None:
        if not isinstance(reference, dict):
            return None
        for kind in self._types.values():
            if reference.get("id") == kind["id"] or reference.get("type") == kind["type"]:
                return kind
        return None

    def _page(
        self, request: Incoming, items: list[dict[str, Any]], fields: frozenset[str]
    ) -> Reply:
        """One page of ``items``, each showing only ``fields``."""
        try:
            number = int(request.query.get("page[number]", 1))
            size = int(request.query.get("page[size]", MAX_PAGE_SIZE))
        except ValueError:
            return self.error(400, "page[number] and page[size] must be integers")
        if number < 1 or not 0 < size <= MAX_PAGE_SIZE:
            return self.error(400, f"page[size] must be 1..{MAX_PAGE_SIZE}")
        last = max(1, math.ceil(len(items) / size))
        chunk = items[(number - 1) * size : number * size]
        links = {
            "first": 1,
            "last": last,
            "next": number + 1 if number < last else None,
            "prev": number - 1 if number > 1 else None,
        }
        shown = [{key: value for key, value in i.items() if key in fields} for i in chunk]
        return Reply.json(200, {"items": json.loads(json.dumps(shown)), "links": links})

    def _new_id(self, kind: str) -> int:
        self._next_id[kind] += 1
        return self._next_id[kind]


def _admit(arrivals: deque[float], now: float, window: float, limit: int) -> bool:
    """Count an arrival against a sliding window; False if it is over the limit."""
    while arrivals and arrivals[0] <= now - window:
        arrivals.popleft()
    if len(arrivals) >= limit:
        return False
    arrivals.append(now)
    return True


def _max_in_window(times: list[float], seconds: float) -> int:
    times = sorted(times)
    best, first = 0, 0
    for last, moment in enumerate(times):
        while times[first] <= moment - seconds:
            first += 1
        best = max(best, last - first + 1)
    return best


def _filters(request: Incoming) -> dict[str, str]:
    filters = {}
    for part in request.query.get("filter", "").split(","):
        key, sep, value = part.partition("=")
        if sep:
            filters[key.strip()] = value.strip()
    return filters


def _reference(value: Any) -> int | None:
    """The integer id of a relationship object such as ``{"id": 451}``, else None."""
    target = value.get("id") if isinstance(value, dict) else None
    return target if isinstance(target, int) and not isinstance(target, bool) else None


def _is_date(value: Any) -> bool:
    """Whether ``value`` is a real date and time written ``YYYY-MM-DD HH:MM:SS``."""
    if not isinstance(value, str) or not DATE_SHAPE.fullmatch(value):
        return False
    try:
        datetime.strptime(value, DATE_FORMAT)
    except ValueError:
        return False
    return True


def _oauth_error(code: str, description: str) -> Reply:
    return Reply.json(400, {"error": code, "error_description": description})


def _format(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime(DATE_FORMAT)
