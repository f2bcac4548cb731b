"""What both API clients share: sessions, answers, error types and the retry policy.

An answer's body is read here, in full but never beyond a limit (``http.max_answer_mib``
for a successful answer; an error's text is cut short instead): a service answering with
an endless or huge body is refused with a clear error rather than read into memory.
Archive downloads are streamed instead, by the Flexperto client.

Nothing here follows a redirect: an API's 3xx is an error naming where it pointed (the
api-key, the client secret and the bearer token stay with the host they are meant for),
and the one redirect the worker takes, the archive download's, is read as an answer by the
Flexperto client. Every API answer must be complete within ``http.deadline_seconds`` of the
worker's clock, its body included; bodies are read as they arrive, so that a peer sending a
byte now and then (each within the read timeout) is noticed. A download is held to a
minimum rate instead (:class:`RateFloor`).

Retries are for faults that a moment's wait may cure: connection errors, timeouts, 429 and
500/502/503/504 (neither vendor documents 500; it is taken as a passing fault). A
``Retry-After`` header is honoured; when it asks for longer than the policy's
longest wait, the call gives up so that the pass can move on and a later pass tries again.
"""

from __future__ import annotations

import json
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import tenacity
import urllib3

from sync_worker.config import HttpConfig
from sync_worker.core import logs
from sync_worker.core.errors import ItemError
from sync_worker.core.network import Route
from sync_worker.core.untrusted import MAX_INT_DIGITS

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# A server or gateway error may hide a request the service did process.
MAYBE_PROCESSED_STATUSES = frozenset({500, 502, 504})
USER_AGENT = "flexperto-te-sync/0.1"
ERROR_TEXT_LIMIT = 300
# Of an error answer, only this much is read: its text is cut short anyway.
ERROR_BODY_LIMIT = 64 * 1024
READ_CHUNK = 64 * 1024
REDIRECT_STATUSES = range(300, 400)
# A download's rate is measured from marks this far apart (a fraction of the window).
MARKS_PER_WINDOW = 16
# Checks the address a connection reached: (scheme, host, port, peer address); raises to
# refuse it, with an exception that is no OSError (so that it reaches the caller as it is).
Guard = Callable[[str, str, int, str], None]


class ApiError(ItemError):
    """A request failed for good: the service refused it or answered nonsense. With
    ``host``, the message names it: ``flexperto api.example.com: connection refused``."""

    def __init__(
        self, service: str, message: str, status: int | None = None, host: str | None = None
    ) -> None:
        where = f"{service} {host}" if host else service
        # A service's text may hold half a UTF-16 pair (JSON escapes one): escaped here, as
        # the text is kept in the state file, whose UTF-8 cannot take it as it is.
        super().__init__(f"{where}: {message}".encode(errors="backslashreplace").decode())
        self.service = service
        self.status = status


class UnreadableAnswer(ApiError):
    """An answer that is JSON but nested too deeply to read."""


@dataclass(frozen=True)
class OversizedNumber:
    """Stands in a JSON answer for an integer of more than MAX_INT_DIGITS digits: no
    reader takes it for a number, and the record gate refuses a record holding one."""

    digits: int

    def __str__(self) -> str:
        return f"a number of {self.digits} digits"


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
        host: str | None = None,
    ) -> None:
        super().__init__(service, message, status, host)
        self.retry_after = retry_after
        self.maybe_processed = maybe_processed


def new_session(
    headers: dict[str, str] | None = None,
    pool_size: int = 8,
    guard: Guard | None = None,
    route: Route | None = None,
) -> requests.Session:
    """A pooled session that never takes proxies or credentials from the environment and
    never follows a redirect; with ``guard``, every connection is checked once made. Its
    connections cut an answer whose status line and headers are not in by the deadline of
    the call in hand (see :func:`send`). ``route``: the proxy that https goes through
    (CONNECT) and the CA bundle to verify with (see :mod:`sync_worker.core.network`)."""
    session = _Session()
    session.trust_env = False
    route = route or Route()
    session.verify = route.verify
    proxy = route.proxy_url()
    if proxy:
        # https only: a proxy would see a plain http request's headers (loopback anyway).
        session.proxies = {"https": proxy}
        logs.add_secret(route.password)
        logs.add_basic_credentials(route.user, route.password)
    adapter = _Adapter(guard, pool_connections=2, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.headers.update(headers or {})
    return session


class _Session(requests.Session):
    """A session to which no answer is a redirect: a 3xx is handed back as it came, even
    to a call that forgets ``allow_redirects=False``."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


class _Adapter(requests.adapters.HTTPAdapter):
    """An adapter whose connections are this module's (checked by ``guard`` once
    connected, when there is one; their headers watched)."""

    def __init__(self, guard: Guard | None, **kwargs: Any) -> None:
        self._guard = guard  # before the base class makes the pool manager
        super().__init__(**kwargs)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager = _PoolManager(
            self._guard, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.ProxyManager:
        """requests' proxy manager, making this module's connections too."""
        if proxy not in self.proxy_manager:
            self.proxy_manager[proxy] = _ProxyManager(
                self._guard,
                proxy,
                proxy_headers=self.proxy_headers(proxy),
                num_pools=self._pool_connections,
                maxsize=self._pool_maxsize,
                block=self._pool_block,
                **proxy_kwargs,
            )
        return self.proxy_manager[proxy]


class _Pools:
    """Makes pools of this module's connections (mixed into urllib3's managers)."""

    _guard: Guard | None

    def _new_pool(
        self,
        scheme: str,
        host: str,
        port: int,
        request_context: dict[str, Any] | None = None,
    ) -> urllib3.HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)  # type: ignore[misc]
        pool.ConnectionCls = _CONNECTIONS[scheme]
        pool.conn_kw["guard"] = self._guard
        return pool


class _PoolManager(_Pools, urllib3.PoolManager):
    def __init__(self, guard: Guard | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard


class _ProxyManager(_Pools, urllib3.ProxyManager):
    def __init__(self, guard: Guard | None, proxy_url: str, **kwargs: Any) -> None:
        super().__init__(proxy_url, **kwargs)
        self._guard = guard


# The deadline of the call this thread is making, for its connection to watch the headers.
_calling = threading.local()


class _Checked:
    """A connection that checks the address it reached with ``guard`` (if any), before TLS
    or any byte is sent; and shuts itself down when the status line and headers of an
    answer are not in by the deadline of the call in hand, however slowly they come (a
    peer sending a byte now and then, each within the read timeout). Through a proxy, the
    address reached is the proxy's, which the operator chose: not checked (the proxy
    resolves the target's name; the URL's host was checked before)."""

    scheme = ""

    def __init__(self, *args: Any, guard: Guard | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()
        if self._guard is None or getattr(self, "_tunnel_host", None):
            return sock
        try:
            self._guard(self.scheme, self.host, self.port, sock.getpeername()[0])
        except BaseException:
            sock.close()
            raise
        return sock

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        deadline: Deadline | None = getattr(_calling, "deadline", None)
        sock = self.sock
        if deadline is None or sock is None:
            return super().getresponse(*args, **kwargs)
        watchdog = threading.Timer(deadline.left(), deadline.cut, [sock])
        watchdog.daemon = True
        watchdog.start()
        try:
            return super().getresponse(*args, **kwargs)
        finally:
            watchdog.cancel()


class _Connection(_Checked, urllib3.connection.HTTPConnection):
    scheme = "http"


class _TLSConnection(_Checked, urllib3.connection.HTTPSConnection):
    scheme = "https"


_CONNECTIONS = {"http": _Connection, "https": _TLSConnection}


class Deadline:
    """When an answer must be complete, on the worker's clock (``now``)."""

    def __init__(self, seconds: float, now: Callable[[], float]) -> None:
        self._seconds = seconds
        self._now = now
        self._at = now() + seconds
        self.was_cut = False

    def left(self) -> float:
        return max(self._at - self._now(), 0.0)

    def cut(self, sock: socket.socket) -> None:
        """Shut ``sock`` down (from a watchdog thread): its answer is past the deadline."""
        self.was_cut = True
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def check(self, service: str) -> None:
        if self.was_cut or self._now() > self._at:
            raise TransientError(
                service,
                f"answer not complete within the deadline of {self._seconds:g} s",
                maybe_processed=True,
            )


class RateFloor:
    """Cuts a transfer that averages less than ``bytes_per_second`` over ``window``
    seconds of the worker's clock (``now``): call :meth:`passed` with every piece."""

    def __init__(
        self, service: str, bytes_per_second: float, window: float, now: Callable[[], float]
    ) -> None:
        self._service = service
        self._rate = bytes_per_second
        self._window = window
        self._now = now
        self._total = 0
        self._marks: deque[tuple[float, int]] = deque([(now(), 0)])  # (when, bytes by then)

    def passed(self, count: int) -> None:
        """Count ``count`` more bytes; TransientError when the rate fell below the floor."""
        now = self._now()
        self._total += count
        if now - self._marks[-1][0] >= self._window / MARKS_PER_WINDOW:
            self._marks.append((now, self._total))
        while len(self._marks) > 1 and self._marks[1][0] <= now - self._window:
            self._marks.popleft()
        since, then = self._marks[0]
        elapsed = now - since
        if elapsed >= self._window and self._total - then < self._rate * elapsed:
            raise TransientError(
                self._service,
                f"download slower than {self._rate / 1024:g} KiB/s over "
                f"{self._window:g} s: cut, to be resumed",
            )


def arriving(response: requests.Response, size: int, decode: bool) -> Iterator[bytes]:
    """A streamed body as it arrives, at most ``size`` bytes a piece: each read returns
    what came rather than waiting to fill a piece, so that the caller sees a trickle as
    one. ``decode``: undo a ``Content-Encoding``."""
    while piece := response.raw.read1(size, decode_content=decode):
        yield piece


@dataclass(frozen=True)
class Answer:
    """An HTTP answer with its body read (see :func:`send`)."""

    status: int
    headers: Mapping[str, str]  # case-insensitive, as requests gives them
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def raise_for_status(service: str, answer: Answer, redirect_expected: bool = False) -> None:
    """Turn a non-2xx answer into TransientError or ApiError carrying the service's text; a
    3xx is an ApiError naming where it pointed, unless the caller ``redirect_expected``."""
    if answer.status in REDIRECT_STATUSES and not redirect_expected:
        raise ApiError(service, f"HTTP {answer.status}: {redirect_text(answer)}", answer.status)
    if answer.status < 400:
        return
    message = f"HTTP {answer.status}: {error_text(answer)}"
    if answer.status in RETRYABLE_STATUSES:
        raise TransientError(
            service,
            message,
            answer.status,
            parse_retry_after(answer),
            maybe_processed=answer.status in MAYBE_PROCESSED_STATUSES,
        )
    raise ApiError(service, message, answer.status)


def redirect_text(answer: Answer) -> str:
    """What a refused redirect said: the host it pointed to."""
    location = answer.headers.get("Location", "")
    try:
        host = urlsplit(location).hostname if location else None
    except ValueError:
        host = None
    target = host or ("the same host" if location else "nowhere (no Location)")
    return f"redirect to {target[:100]} refused: API calls follow no redirect"


def error_text(answer: Answer) -> str:
    """The service's own error text, shortened; JSON ``error``/``message`` fields preferred."""
    try:
        body = json.loads(answer.body, parse_int=_bounded_int)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        parts = [
            str(body[key])
            for key in ("error", "message", "error_description")
            if isinstance(body.get(key), str | int) and body[key]
        ]
        if parts:
            return " - ".join(parts)[:ERROR_TEXT_LIMIT]
    return " ".join(answer.text.split())[:ERROR_TEXT_LIMIT] or "(empty body)"


def parse_retry_after(answer: Answer) -> float | None:
    value = answer.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


def json_body(service: str, answer: Answer) -> Any:
    """The answer's JSON; ApiError if it is none.

    One bad value costs its item, not the answer: an integer longer than MAX_INT_DIGITS
    becomes an :class:`OversizedNumber`. Nesting deeper than the parser's stack fails the
    answer with :class:`UnreadableAnswer` (a clear error, not a RecursionError): checking
    depth before parsing would cost a Python loop over every byte, and a page that deep
    is no listing; what the parser does take, the record gate bounds in depth.
    """
    try:
        return json.loads(answer.body, parse_int=_bounded_int)
    except RecursionError:
        raise UnreadableAnswer(
            service, f"JSON nested too deeply to read (HTTP {answer.status})", answer.status
        ) from None
    except ValueError:
        raise ApiError(
            service, f"malformed JSON in answer (HTTP {answer.status})", answer.status
        ) from None


def _bounded_int(text: str) -> int | OversizedNumber:
    digits = len(text.lstrip("-"))
    return int(text) if digits <= MAX_INT_DIGITS else OversizedNumber(digits)


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
    service: str,
    call: Callable[[], requests.Response],
    network: NetworkTime,
    limit: int,
    deadline: Deadline | None = None,
) -> Answer:
    """Run one HTTP call made with ``stream=True`` and read its answer, at most ``limit``
    bytes of a successful one (a larger one is refused: ApiError), complete by the
    ``deadline``; network failures, the body's included, become TransientError."""
    with network.measure():
        with _headers_by(service, deadline), _mapped_failures(service):
            response = call()
        return read_answer(service, response, limit, deadline)


@contextmanager
def _headers_by(service: str, deadline: Deadline | None) -> Iterator[None]:
    """The call's answer must have its status line and headers by ``deadline``: this
    thread's connection shuts down then (:class:`_Checked`), and the failure says why."""
    _calling.deadline = deadline
    try:
        yield
    except TransientError:
        if deadline is not None:
            deadline.check(service)
        raise
    finally:
        _calling.deadline = None


def read_answer(
    service: str, response: requests.Response, limit: int, deadline: Deadline | None = None
) -> Answer:
    """Read and close a streamed response: at most ``limit`` bytes of a successful answer
    (more is refused: ApiError), the first ERROR_BODY_LIMIT bytes of an error's, all of it
    by the ``deadline``; network failures on the way become TransientError."""
    ok = response.status_code < 400
    try:
        with _mapped_failures(service):
            body = _read(
                service, response, limit if ok else ERROR_BODY_LIMIT, refuse=ok, deadline=deadline
            )
    finally:
        response.close()
    return Answer(response.status_code, response.headers, body)


def open_stream(
    service: str,
    call: Callable[[], requests.Response],
    network: NetworkTime,
    deadline: Deadline | None = None,
) -> requests.Response:
    """Run one HTTP call made with ``stream=True``, its status line and headers in by the
    ``deadline``, its body left for the caller to read (and close); network failures
    become TransientError."""
    with _headers_by(service, deadline), _mapped_failures(service), network.measure():
        response = call()
    if deadline is not None and deadline.was_cut:  # the headers came as the deadline cut
        response.close()
        deadline.check(service)
    return response


def _read(
    service: str,
    response: requests.Response,
    limit: int,
    refuse: bool,
    deadline: Deadline | None,
) -> bytes:
    """At most ``limit`` bytes of the body; with ``refuse``, more is an error, else cut."""
    declared = response.headers.get("Content-Length", "")
    length_given = declared.isascii() and declared.isdigit()  # not "²", which int() refuses
    if refuse and length_given and (len(declared) > MAX_INT_DIGITS or int(declared) > limit):
        raise _too_large(service, response.status_code, limit)
    body = bytearray()
    if deadline is not None:
        deadline.check(service)
    for chunk in arriving(response, READ_CHUNK, decode=True):
        body += chunk
        if deadline is not None:
            deadline.check(service)
        if len(body) > limit:
            if refuse:
                raise _too_large(service, response.status_code, limit)
            return bytes(body[:limit])
    return bytes(body)


def _too_large(service: str, status: int, limit: int) -> ApiError:
    return ApiError(service, f"answer larger than {limit} bytes refused (HTTP {status})", status)


@contextmanager
def _mapped_failures(service: str) -> Iterator[None]:
    """Network failures as TransientError (or ApiError when no retry can help)."""
    try:
        yield
    except requests.ConnectTimeout as exc:
        raise TransientError(service, "timed out connecting", host=_host(exc)) from None
    except requests.Timeout as exc:
        raise TransientError(
            service, f"timed out: {type(exc).__name__}", maybe_processed=True, host=_host(exc)
        ) from None
    except requests.ConnectionError as exc:
        raise TransientError(
            service,
            connection_cause(exc),
            maybe_processed=not _never_connected(exc),
            host=_host(exc),
        ) from None
    except requests.exceptions.ChunkedEncodingError as exc:  # the answer broke off
        raise TransientError(
            service, f"answer cut short: {type(exc).__name__}", maybe_processed=True
        ) from None
    except requests.RequestException as exc:
        raise ApiError(service, f"request failed: {type(exc).__name__}") from None
    # What the body's reads raise, which requests has not wrapped.
    except urllib3.exceptions.ReadTimeoutError:
        raise TransientError(service, "timed out: ReadTimeoutError", maybe_processed=True) from None
    except urllib3.exceptions.DecodeError as exc:
        raise ApiError(service, f"request failed: {type(exc).__name__}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(
            service, f"answer cut short: {type(exc).__name__}", maybe_processed=True
        ) from None


def _never_connected(exc: requests.ConnectionError) -> bool:
    reason = _reason(exc)
    if isinstance(reason, urllib3.exceptions.ProxyError):
        return True  # no tunnel, so nothing reached the service
    if isinstance(reason, urllib3.exceptions.SSLError):  # refused in the handshake, or later?
        return bool(reason.args) and isinstance(reason.args[0], ssl.SSLCertVerificationError)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _reason(exc: requests.RequestException) -> BaseException | None:
    """What urllib3 said went wrong, under requests' wrapping."""
    inner = exc.args[0] if exc.args else None
    return getattr(inner, "reason", None) or (inner if isinstance(inner, BaseException) else None)


def _host(exc: requests.RequestException) -> str | None:
    """The ``host`` or ``host:port`` the failed request was for."""
    url = getattr(exc.request, "url", None)
    return urlsplit(url).netloc.rpartition("@")[2] or None if url else None


def connection_cause(exc: requests.ConnectionError) -> str:
    """Why a connection failed, in a few words (see :func:`cause_of`)."""
    reason = _reason(exc)
    if reason is None:
        return f"connection failed: {type(exc).__name__}"
    proxy = getattr(getattr(exc.args[0], "pool", None), "proxy", None)
    return cause_of(reason, f"{proxy.host}:{proxy.port}" if proxy else "")


def cause_of(reason: BaseException, proxy: str = "") -> str:
    """What urllib3 said went wrong, in a few words: DNS, refused, TLS verification, the
    ``proxy`` (its ``HOST:PORT``, never its credentials) unreachable or refusing..."""
    if isinstance(reason, urllib3.exceptions.ProxyError):
        inner = reason.args[1] if len(reason.args) > 1 else reason
        where = f"proxy {proxy}" if proxy else "proxy"
        text = str(inner)
        unreachable = isinstance(inner, urllib3.exceptions.NewConnectionError | OSError)
        if unreachable and "Tunnel connection failed" not in text:
            return f"{where} unreachable: {_socket_cause(inner)}"
        return f"{where} refused the tunnel: {text.removeprefix('Tunnel connection failed: ')}"
    if isinstance(reason, urllib3.exceptions.SSLError):
        return _tls_cause(reason)
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return f"DNS lookup failed: {reason.__cause__ or reason}"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):  # before its base class
        return _socket_cause(reason)
    if isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
        return "timed out connecting"
    if isinstance(reason, urllib3.exceptions.ProtocolError):
        return f"connection broken: {reason.args[-1] if reason.args else reason}"
    if isinstance(reason, OSError):
        return _socket_cause(reason)
    return f"connection failed: {type(reason).__name__}"


def _socket_cause(exc: BaseException) -> str:
    """A failed connect in words: ``connection refused``, or the system's error text."""
    cause = exc.__cause__ or exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, socket.gaierror):
        return f"DNS lookup failed: {cause}"
    if isinstance(cause, OSError) and cause.strerror:
        return f"could not connect: {cause.strerror}"
    return f"could not connect: {cause}"


def _tls_cause(exc: urllib3.exceptions.SSLError) -> str:
    """A failed handshake: the verification's own words when that is what failed."""
    cause = exc.args[0] if exc.args else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS verification failed: certificate verify failed: {cause.verify_message}"
    return f"TLS handshake failed: {cause}"


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
