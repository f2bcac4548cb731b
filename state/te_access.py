"""What Total Expert lets this host do: its per-minute request budget, its hourly
token-request budget, and the cached access token.

They are kept in the state, or, with ``totalexpert.shared_budget``, in a budget file
that every worker on the host shares whatever its state file: TE counts requests per
source IP, not per client. Buckets are keyed by TE host, tokens by base URL and client id.
A state in PostgreSQL is shared by workers on several hosts: those behind one source
address spend from one budget, and ``totalexpert.egress`` names the address when the
workers of one database leave by several (each name its own budget; the token is shared).
Every process using the same state (the daemon, a cron run, ``check``, another tenant's
worker) shares them, through the buckets of state.rate_limit and the token of state.tokens.
A spent slot comes back a minute (or an hour) and a second after it was spent: the second
covers the difference between our clock and TE's, and the request's travel time. Every
token that passes through here is registered with the log redaction, whichever process
obtained it.
"""

from __future__ import annotations

import hashlib
import secrets
from urllib.parse import urlsplit

from sync_worker.config import TotalExpertConfig
from sync_worker.core import logs
from sync_worker.state import rate_limit, tokens
from sync_worker.state.db import Database, open_budget_database

WINDOW_MARGIN_SECONDS = 1.0
REQUEST_WINDOW = 60.0 + WINDOW_MARGIN_SECONDS
TOKEN_WINDOW = 3600.0 + WINDOW_MARGIN_SECONDS


def request_bucket(base_url: str, egress: str = "") -> str:
    return f"totalexpert:requests:{_host(base_url)}{_at(egress)}"


def token_bucket(base_url: str, egress: str = "") -> str:
    return f"totalexpert:tokens:{_host(base_url)}{_at(egress)}"


def _at(egress: str) -> str:
    """The egress address's name in a bucket's key: none for the state's one budget."""
    return f"@{egress}" if egress else ""


def _host(base_url: str) -> str:
    """What TE's limits follow as far as we can tell: the host we reach it at."""
    return urlsplit(base_url).netloc.lower()


class SharedAccess:
    """Total Expert's budgets and token for one client (base URL and client id), shared
    through ``db``. Not for use from several threads at once (one connection)."""

    def __init__(
        self,
        db: Database,
        base_url: str,
        client_id: str,
        requests_per_minute: int,
        token_requests_per_hour: int,
        owns_db: bool = False,
        egress: str = "",
    ) -> None:
        self._db = db
        self._owns_db = owns_db
        self._token_key = hashlib.sha256(f"{base_url}\n{client_id}".encode()).hexdigest()[:32]
        self._holder = secrets.token_hex(8)  # this object, as a token-lease holder
        self._request_bucket = request_bucket(base_url, egress)
        self._token_bucket = token_bucket(base_url, egress)
        self._requests_per_minute = requests_per_minute
        self._token_requests_per_hour = token_requests_per_hour

    @classmethod
    def for_config(
        cls, state_db: Database, config: TotalExpertConfig, busy_timeout: float
    ) -> SharedAccess:
        """Kept in the shared budget file if one is configured, else in ``state_db``."""
        budget_file = config.shared_budget_file
        return cls(
            state_db if budget_file is None else open_budget_database(budget_file, busy_timeout),
            config.base_url,
            config.client_id,
            config.requests_per_minute,
            config.token_requests_per_hour,
            owns_db=budget_file is not None,
            egress=config.egress,
        )

    def close(self) -> None:
        """Close the budget file, if this opened one."""
        if self._owns_db:
            self._db.close()

    def spend_request(self, now: float) -> float | None:
        """Take a request slot; None if taken, else when the next one comes back."""
        return rate_limit.try_spend(
            self._db, self._request_bucket, self._requests_per_minute, REQUEST_WINDOW, now
        )

    def spend_token_request(self, now: float) -> float | None:
        """Take a token-request slot; None if taken, else when the next one comes back."""
        return rate_limit.try_spend(
            self._db, self._token_bucket, self._token_requests_per_hour, TOKEN_WINDOW, now
        )

    def requests_left(self, now: float) -> int:
        """Request slots free right now."""
        used = rate_limit.used(self._db, self._request_bucket, REQUEST_WINDOW, now)
        return max(self._requests_per_minute - used, 0)

    def token_requests_left(self, now: float) -> int:
        """Token-request slots free right now."""
        used = rate_limit.used(self._db, self._token_bucket, TOKEN_WINDOW, now)
        return max(self._token_requests_per_hour - used, 0)

    def token_expiry(self) -> float | None:
        """When the cached token expires (TE's word), if one is cached."""
        return tokens.expiry(self._db, self._token_key)

    def take_token_lease(self, now: float, seconds: float) -> float | None:
        """Become, for ``seconds``, the one process requesting a token for this client:
        None if so, else until when another process is at it."""
        return tokens.take_lease(self._db, self._token_key, self._holder, now, seconds)

    def release_token_lease(self) -> None:
        tokens.release_lease(self._db, self._token_key, self._holder)

    def cached_token(self, now: float) -> tuple[str, float] | None:
        """The cached token and until when to use it (a little before it expires)."""
        cached = tokens.lookup(self._db, self._token_key, now)
        if cached is None:
            return None
        logs.add_secret(cached[0])
        return cached[0], cached[1] - tokens.EXPIRY_MARGIN_SECONDS

    def keep_token(self, token: str, expires_at: float, now: float) -> float:
        """Cache a new token for every process; returns until when to use it."""
        logs.add_secret(token)
        tokens.remember(self._db, self._token_key, token, expires_at, now)
        return expires_at - tokens.EXPIRY_MARGIN_SECONDS

    def drop_token(self, token: str) -> None:
        """Forget ``token``, rejected by TE (unless another process replaced it already)."""
        tokens.drop(self._db, self._token_key, token)
