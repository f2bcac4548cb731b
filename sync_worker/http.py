"""What both API clients share: sessions, error types and the retry policy.

Retries are for faults that a moment's wait may cure: connection errors, timeouts, 429 and
500/502/503/504 (neither vendor documents 500; it is taken as a passing fault). A
``Retry-After`` header is honoured; when it asks for longer than the policy's
longest wait, the call gives up so that the pass can move on and a later pass tries again.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
import tenacity
import urllib3

from sync_worker.config import HttpConfig

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# A server or gateway error may hide a request the service did process.
MAYBE_PROCESSED_STATUSES = frozenset({500, 502, 504})
USER_AGENT = "flexperto-te-sync/0.1"
ERROR_TEXT_LIMIT = 300


class ApiError(Exception):
    """A request failed for good: the service refused it or answered nonsense."""

    def __init__(self, service: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.status = status


class TransientError(ApiError):
    """A request failed in a way that may pass: worth retrying.

    ``maybe_processed`` says whether the service may have acted on the request anyway (a
    timeout after sending it, a gateway error): such a request is only safe to repeat if it
    is idempotent.
    """

    def __init__(
        self,
        service: str,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        maybe_processed: bool = False,
    ) -> None:
        super().__init__(service, message, status)
        self.retry_after = retry_after
        self.maybe_processed = maybe_processed


def new_session(headers: dict[str, str] | None = None, pool_size: int = 8) -> requests.Session:
    """A pooled session that never takes proxies or credentials from the environment."""
    session = requests.Session()
    session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.headers.update(headers or {})
    return session


def raise_for_status(service: str, response: requests.Response) -> None:
    """Turn a non-2xx answer into TransientError or ApiError carrying the service's text."""
    if response.status_code < 400:
        return
    message = f"HTTP {response.status_code}: {error_text(response)}"
    if response.status_code in RETRYABLE_STATUSES:
        raise TransientError(
            service,
            message,
            response.status_code,
            parse_retry_after(response),
            maybe_processed=response.status_code in MAYBE_PROCESSED_STATUSES,
        )
    raise ApiError(service, message, response.status_code)


def error_text(response: requests.Response) -> str:
    """The service's own error text, shortened; JSON ``error``/``message`` fields preferred."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        parts = [
            str(body[key]) for key in ("error", "message", "error_description") if body.get(key)
        ]
        if parts:
            return " - ".join(parts)[:ERROR_TEXT_LIMIT]
    return " ".join(response.text.split())[:ERROR_TEXT_LIMIT] or "(empty body)"


def parse_retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


def json_body(service: str, response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ApiError(
            service, f"malformed JSON in answer (HTTP {response.status_code})", response.status_code
        ) from None


class NetworkTime:
    """Seconds spent waiting on the network, summed over threads (for the pass summary)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    @contextmanager
    def measure(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.seconds += elapsed


def send(
    service: str, call: Callable[[], requests.Response], network: NetworkTime
) -> requests.Response:
    """Run one HTTP call, mapping network failures to TransientError."""
    try:
        with network.measure():
            return call()
    except requests.ConnectTimeout:
        raise TransientError(service, "timed out connecting") from None
    except requests.Timeout as exc:
        raise TransientError(
            service, f"timed out: {type(exc).__name__}", maybe_processed=True
        ) from None
    except requests.ConnectionError as exc:
        raise TransientError(
            service,
            f"connection failed: {type(exc).__name__}",
            maybe_processed=not _never_connected(exc),
        ) from None
    except requests.RequestException as exc:
        raise ApiError(service, f"request failed: {type(exc).__name__}") from None


def _never_connected(exc: requests.ConnectionError) -> bool:
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def retry_policy(
    config: HttpConfig, sleep: Callable[[float], None], idempotent: bool = True
) -> tenacity.Retrying:
    """Exponential backoff with jitter for TransientError, ``config.retries`` extra attempts.

    For a request that is not ``idempotent``, only failures the service surely did not act
    on are retried.
    """

    def worth_retrying(exc: BaseException) -> bool:
        if not isinstance(exc, TransientError):
            return False
        return idempotent or not exc.maybe_processed

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(worth_retrying),
        stop=_stop(config),
        wait=_wait(config),
        sleep=sleep,
        reraise=True,
    )


def _stop(config: HttpConfig) -> Callable[[tenacity.RetryCallState], bool]:
    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number > config.retries:
            return True
        retry_after = _retry_after(state)
        return retry_after is not None and retry_after > config.retry_max_wait_seconds

    return stop


def _wait(config: HttpConfig) -> Callable[[tenacity.RetryCallState], float]:
    def wait(state: tenacity.RetryCallState) -> float:
        retry_after = _retry_after(state)
        if retry_after is not None:
            return retry_after
        ceiling = min(
            config.retry_wait_seconds * 2 ** (state.attempt_number - 1),
            config.retry_max_wait_seconds,
        )
        return random.uniform(ceiling / 2, ceiling)

    return wait


def _retry_after(state: tenacity.RetryCallState) -> float | None:
    outcome = state.outcome
    if outcome is None or not outcome.failed:
        return None
    exc = outcome.exception()
    return exc.retry_after if isinstance(exc, TransientError) else None
