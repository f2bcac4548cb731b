"""Every request to Total Expert, inside its limits: the bearer token (cached for every
process by the :class:`Access` given, one process at a time requesting one), the per-minute
and hourly token budgets, retries, the deadline, and what was spent.

No request follows a redirect (a 3xx is an error naming its host): the client secret and
the bearer token go to TE's host only. Every request first spends a slot of the per-minute
budget; a token request also one of the hourly token budget, and is never retried in the
same pass (each try would spend another). ``expires_in`` is not documented: the documented
hour when it is missing or not a number; kept within bounds (docs/assumptions.md).
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any, Protocol

import requests
import structlog

from sync_worker.adapters.http import (
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
from sync_worker.config import HttpConfig, NetworkConfig, TotalExpertConfig
from sync_worker.core import logs
from sync_worker.core.clock import Clock, iso_time
from sync_worker.core.errors import JobStop

SERVICE = "totalexpert"
# "Once you have retrieved a token, that token is valid for 1 hour." (getting-started guide)
DOCUMENTED_TOKEN_LIFETIME = 3600
# Bounds on what an answer's expires_in makes of a token's life: the least leaves a pass
# minutes of use after state.tokens' margin; the most keeps a token no longer than a day.
MIN_TOKEN_LIFETIME = 600.0
MAX_TOKEN_LIFETIME = 86_400.0
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


class TotalExpertSession:
    """Sends requests to TE within its limits and keeps count of what they spent."""

    def __init__(
        self,
        config: TotalExpertConfig,
        http: HttpConfig,
        access: Access,
        clock: Clock,
        network: NetworkConfig | None = None,
    ) -> None:
        self.config = config
        logs.add_basic_credentials(config.client_id, config.client_secret)  # as /token gets them
        self._access = access
        self.clock = clock
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

    def token_usable_until(self) -> float | None:
        """Until when the cached access token is used, if there is one."""
        cached = self._access.cached_token(self.clock.now())
        return None if cached is None else cached[1]

    def fetch_token(self) -> None:
        """Make sure a token is cached, requesting one only if none is."""
        self._token()

    def json(self, method: str, path: str, authenticated: bool = True, **kwargs: Any) -> Any:
        """The JSON answer of a request (see :meth:`answer`)."""
        return json_body(SERVICE, self.answer(method, path, authenticated, **kwargs))

    def answer(
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
                self.config.base_url + path,
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
        return Deadline(self._deadline_seconds, self.clock.now)

    def _spend_request_slot(self) -> None:
        """Take a slot from the per-minute budget, waiting for one to come back if needed."""
        while True:
            now = self.clock.now()
            next_at = self._access.spend_request(now)
            if next_at is None:
                return
            self._log.info("te.throttled", wait_seconds=round(next_at - now, 3))
            self.clock.sleep(next_at - now)

    def _token(self) -> str:
        """The access token: remembered for this pass, else the one kept for every
        process, else a new one."""
        now = self.clock.now()
        if self._remembered is None or self._remembered[1] <= now:
            self._remembered = self._shared_or_new_token()
        return self._remembered[0]

    def _shared_or_new_token(self) -> tuple[str, float]:
        """The token kept for every process, else a new one. One process at a time asks
        for one (it holds the lease); the others wait for it and use the same token."""
        while True:
            now = self.clock.now()
            if (cached := self._access.cached_token(now)) is not None:
                return cached
            held_until = self._access.take_token_lease(now, self._token_lease_seconds)
            if held_until is None:
                break
            self.clock.sleep(min(TOKEN_WAIT_SECONDS, held_until - now))
        try:
            return self._access.cached_token(self.clock.now()) or self._request_token()
        finally:
            self._access.release_token_lease()

    def _request_token(self) -> tuple[str, float]:
        now = self.clock.now()
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
        credentials = f"{self.config.client_id}:{self.config.client_secret}".encode()
        return self._session.post(
            self.config.base_url + "/token",
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
