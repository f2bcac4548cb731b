"""What Total Expert lets this host do, kept in the state file: its per-minute request budget,
its hourly token-request budget, and the cached access token.

Every process using the same state file (the daemon, a cron run, ``check``) shares them,
through the buckets of state.rate_limit and the token of state.tokens. A spent slot comes
back a minute (or an hour) and a second after it was spent: the second covers the
difference between our clock and TE's, and the request's travel time. Every token that
passes through here is registered with the log redaction, whichever process obtained it.
"""

from __future__ import annotations

import hashlib

import sqlite_utils

from sync_worker import logs
from sync_worker.config import TotalExpertConfig
from sync_worker.state import rate_limit, tokens

REQUEST_BUCKET = "totalexpert:requests"
TOKEN_BUCKET = "totalexpert:tokens"
WINDOW_MARGIN_SECONDS = 1.0
REQUEST_WINDOW = 60.0 + WINDOW_MARGIN_SECONDS
TOKEN_WINDOW = 3600.0 + WINDOW_MARGIN_SECONDS


class SharedAccess:
    """Total Expert's budgets and token for one client (base URL and client id), shared
    through ``db``. Not for use from several threads at once (one connection)."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        base_url: str,
        client_id: str,
        requests_per_minute: int,
        token_requests_per_hour: int,
    ) -> None:
        self._db = db
        self._token_key = hashlib.sha256(f"{base_url}\n{client_id}".encode()).hexdigest()[:32]
        self._requests_per_minute = requests_per_minute
        self._token_requests_per_hour = token_requests_per_hour

    @classmethod
    def for_config(cls, db: sqlite_utils.Database, config: TotalExpertConfig) -> SharedAccess:
        return cls(
            db,
            config.base_url,
            config.client_id,
            config.requests_per_minute,
            config.token_requests_per_hour,
        )

    def spend_request(self, now: float) -> float | None:
        """Take a request slot; None if taken, else when the next one comes back."""
        return rate_limit.try_spend(
            self._db, REQUEST_BUCKET, self._requests_per_minute, REQUEST_WINDOW, now
        )

    def spend_token_request(self, now: float) -> float | None:
        """Take a token-request slot; None if taken, else when the next one comes back."""
        return rate_limit.try_spend(
            self._db, TOKEN_BUCKET, self._token_requests_per_hour, TOKEN_WINDOW, now
        )

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
