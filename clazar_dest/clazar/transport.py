"""Send one request to Clazar and say exactly what happened. Network code only: no ORM.

``send()`` never raises for an HTTP answer or a network failure: it returns an ``AttemptResult`` that
`flows.outcomes.classify` turns into a decision. The hard part is telling "nothing reached Clazar" (safe to
send again, even a create) from "the request may have reached Clazar" (a create must not be re-sent
blindly). Exception types alone can't say that reliably (a TLS handshake timeout surfaces as a *read*
timeout, a stale keep-alive connection as a reset), so the connection classes below record whether a single
byte of the request was handed to the socket. ``error_kind`` is:

- ``None``: Clazar answered and the answer was read (any status; 3xx is ``redirect``).
- ``"connect"``: nothing was sent (refused, DNS, connect timeout, TLS handshake, deadline before sending).
- ``"invalid"``: nothing was sent because the request itself is unusable (URL, header values).
- ``"sent_then_failed"``: the connection broke after sending began: Clazar may have applied it.
- ``"read_timeout"``: sent, then no data for ``read_timeout`` seconds.
- ``"deadline"``: sent, then the total deadline passed (a server trickling bytes never trips the
  per-read timeout, so a watchdog closes the socket at the deadline).
- ``"redirect"``: a 3xx; it is never followed (the token would go wherever ``Location`` says).
- ``"too_large"``: the answer is longer than ``max_body``; the rest was not read (connection closed).
- ``"malformed"``: a 2xx (or a JSON content type) whose body is not valid JSON.

With ``sent_then_failed``, ``read_timeout`` or ``deadline`` the status may still be set when the failure
came while reading the body: Clazar answered, only the body is incomplete.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import http.client
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookiejar import DefaultCookiePolicy
from importlib import metadata
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH, requote_uri
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from clazar_dest.clazar.spec import RequestSpec

log = logging.getLogger(__name__)

CHUNK = 8192
MAX_SESSIONS = 32
# Connections kept alive per session unless the caller says (flows passes DELIVERY_THREADS, so each
# sending thread keeps its own). A pool smaller than the threads closes a connection after each send
# beyond its size (and urllib3 logs a warning each time): a new TCP connection, and a new thread in a
# threaded server, per request.
POOL_SIZE = 8
REDACTED = "****"

try:
    VERSION = metadata.version("clazar-dest")
except metadata.PackageNotFoundError:  # running from a tree that was never installed
    VERSION = "dev"
USER_AGENT = f"clazar-dest/{VERSION}"

# Set by the transport itself; a spec's extra headers can never replace them.
PROTECTED = frozenset(
    {
        "authorization",
        "content-type",
        "accept",
        "user-agent",
        "idempotency-key",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "proxy-authorization",
        "cookie",
    }
)
_SECRET_NAME = re.compile(
    r"(?i)(token|secret|passw|pwd|api[-_]?key|apikey|signature|^sig$|auth|credential|session|cookie|^code$)"
)
_SECRET_VALUE = re.compile(r"^(eyJ[\w-]+\.[\w-]+\.[\w-]*|[A-Za-z0-9_\-+/=.~]{40,})$")
_BAD_HEADER = re.compile(r"[\r\n\x00]")

# Error kinds that guarantee nothing reached Clazar ("auth_*" are set by flows.sending when no token
# could be had).
NOT_SENT = frozenset({"connect", "invalid", "auth_rejected", "auth_unavailable"})


@dataclass(frozen=True)
class AttemptResult:
    """What one request did. Safe to store and show: the token appears only as ``Bearer ****``."""

    method: str
    url: str  # sanitized
    status: int | None
    headers: dict[str, str]  # response headers
    body: str  # capped at max_body
    truncated: bool
    json: Any  # the parsed body, or None
    duration_ms: int
    error_kind: str | None
    error: str  # for people; "" when Clazar answered normally
    request_headers: dict[str, str]  # secret values redacted
    sent_at: datetime
    refreshed: bool = False  # the token was refreshed after a 401 and the request sent once more
    notes: tuple[str, ...] = field(default=())

    @property
    def sent(self) -> bool:
        """False only when nothing reached the socket: then sending again can't duplicate anything."""
        return self.error_kind not in NOT_SENT

    @property
    def location(self) -> str | None:
        for name, value in self.headers.items():
            if name.lower() == "location":
                return value
        return None


# -- knowing whether anything was sent, and enforcing the deadline ------------------------------------


class _Probe:
    """Per-call state shared with the connection classes (same thread) and the watchdog (another one)."""

    def __init__(self) -> None:
        self.sent = False
        self.expired = False
        self.conn: HTTPConnection | None = None
        self._lock = threading.Lock()
        self._done = False

    def expire(self) -> None:
        """The watchdog: wake a read that is blocked (or trickled) past the deadline by shutting the socket.
        A shut socket is detected as dropped by the pool and never reused."""
        with self._lock:
            if self._done:
                return
            self.expired = True
            sock = getattr(self.conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the fd, also under an SSLSocket

    def finish(self) -> None:
        with self._lock:
            self._done = True

    @property
    def finished(self) -> bool:
        return self._done


_local = threading.local()


class _Watchdog:
    """One thread per process that expires the probes whose deadline passed (a ``threading.Timer`` per
    call would start a thread for every request). Started on first use, and again in a forked child."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, _Probe]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None

    def arm(self, probe: _Probe, seconds: float) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._due, (time.monotonic() + seconds, self._seq, probe))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="clazar-watchdog", daemon=True)
                self._thread.start()
            elif self._due[0][2] is probe:
                self._cond.notify()  # the new deadline is the earliest: wake the thread to wait less

    def _run(self) -> None:
        while True:
            expired = []
            with self._cond:
                now = time.monotonic()
                while self._due and (self._due[0][0] <= now or self._due[0][2].finished):
                    expired.append(heapq.heappop(self._due)[2])
                if not expired:
                    self._cond.wait(self._due[0][0] - now if self._due else None)
                    continue
            for probe in expired:  # outside the lock: expire() shuts a socket
                probe.expire()

    def _after_fork(self) -> None:
        self._cond = threading.Condition()
        self._due = []
        self._thread = None


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_watchdog._after_fork)


class _Deadline(OSError):
    """Raised instead of writing the first byte once the deadline has passed: nothing is sent."""


class _Watched:
    """Mixin for urllib3 connections: notes the connection and the first byte written for the current call."""

    sock: Any
    auto_open: int

    def connect(self) -> None:
        probe: _Probe | None = getattr(_local, "probe", None)
        if probe is not None:
            probe.conn = self  # type: ignore[assignment]
        super().connect()  # type: ignore[misc]

    def send(self, data: Any) -> None:
        probe: _Probe | None = getattr(_local, "probe", None)
        if probe is not None:
            if self.sock is None and self.auto_open:
                self.connect()  # what http.client would do next; connect errors stay "not sent"
            probe.conn = self  # type: ignore[assignment]
            if probe.expired and not probe.sent:
                raise _Deadline("The deadline passed before the request was sent.")
            probe.sent = True  # before writing: a partial write may still reach Clazar
        super().send(data)  # type: ignore[misc]


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(HTTPAdapter):
    """requests' adapter with the watched connections; no retries (the engine decides those). The token
    call goes through requests; ``send`` takes a pool from the adapter's pool manager directly."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


# -- sessions -----------------------------------------------------------------------------------------


def new_session(pool_size: int = POOL_SIZE) -> requests.Session:
    """A keep-alive session with the watched adapter and no cookies (it is shared by threads, so no
    shared cookie state)."""
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment: calls go to the API base only
    adapter = _Adapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return session


_sessions: OrderedDict[str, requests.Session] = OrderedDict()
_sessions_lock = threading.Lock()


def session_for(credential_key: str, pool_size: int = POOL_SIZE) -> requests.Session:
    """The keep-alive session for one credential, shared by the threads of this process, keeping up to
    ``pool_size`` connections (set when the session is made). Bounded: the least recently used session
    is closed when more than MAX_SESSIONS credentials are in use."""
    with _sessions_lock:
        session = _sessions.get(credential_key)
        if session is not None:
            _sessions.move_to_end(credential_key)
            return session
        session = _sessions[credential_key] = new_session(pool_size)
        while len(_sessions) > MAX_SESSIONS:
            _, old = _sessions.popitem(last=False)
            old.close()  # idle connections only; a request in flight finishes on its own connection
        return session


def close_sessions() -> None:
    """Close every pooled session (tests, worker shutdown)."""
    with _sessions_lock:
        while _sessions:
            _sessions.popitem()[1].close()


# -- URLs and headers ---------------------------------------------------------------------------------


def sanitize_url(url: str) -> str:
    """The URL without userinfo or fragment, with secret-looking query values replaced by ``****``
    (by name: token, secret, key, signature...; or by shape: JWTs and long opaque strings)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc.rpartition("@")[2]
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        name, sep, value = pair.partition("=")
        plain_name, plain_value = unquote_plus(name), unquote_plus(value)
        if value and (_SECRET_NAME.search(plain_name) or _SECRET_VALUE.match(plain_value)):
            value = REDACTED
        pairs.append(f"{name}{sep}{value}")
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(pairs), ""))


def redact_headers(headers: Any) -> dict[str, str]:
    """Header names with their values, secrets replaced (Authorization keeps its scheme)."""
    out = {}
    for name, value in dict(headers).items():
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        lowered = name.lower()
        if lowered in ("authorization", "proxy-authorization"):
            scheme, _, rest = text.partition(" ")
            text = f"{scheme} {REDACTED}" if rest else REDACTED
        elif lowered != "idempotency-key" and _SECRET_NAME.search(lowered):
            text = REDACTED
        out[name] = text
    return out


@dataclass(frozen=True)
class _Target:
    """What a URL means to a send, worked out once per URL (a deliver run sends to few distinct ones)."""

    shown: str  # sanitized, for people
    host: str  # host[:port], for messages
    problem: str | None  # why it can't be sent, or None
    scheme: str = ""
    hostname: str = ""
    port: int | None = None
    request_uri: str = ""  # path and query, re-quoted as requests would


@functools.lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    shown = sanitize_url(url)
    try:
        host = urlsplit(url).netloc.rpartition("@")[2] or url
    except ValueError:
        host = url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a port out of range or not a number)
    except ValueError as exc:
        return _Target(shown, host, f"{shown} is not a valid URL ({exc}).")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return _Target(shown, host, f"{shown} is not an http(s) URL.")
    try:
        # A stray space or non-ASCII character is percent-encoded, as requests would.
        parsed = urllib3.util.parse_url(requote_uri(url))
    except (ValueError, urllib3.exceptions.HTTPError, UnicodeError) as exc:
        return _Target(shown, host, f"{shown} can't be used ({type(exc).__name__}).")
    scheme = (parsed.scheme or "").lower()
    return _Target(shown, host, None, scheme, parsed.host or "", parsed.port, parsed.request_uri)


def _headers(spec: RequestSpec, idempotency_key: str | None) -> tuple[dict[str, str], str | None]:
    """Our headers plus the spec's extras (never replacing ours). Returns (headers, problem)."""
    out: dict[str, str] = {}
    for name, value in spec.headers:
        if _BAD_HEADER.search(name) or _BAD_HEADER.search(value) or not name.strip():
            return {}, f"the header {name.strip()[:60]!r} is empty or has a line break."
        if name.strip().lower() not in PROTECTED:
            out[name.strip()] = value
    out["Accept"] = "application/json"
    if not any(name.lower() == "accept-encoding" for name in out):
        out["Accept-Encoding"] = "gzip, deflate"
    out["User-Agent"] = USER_AGENT
    if spec.body is not None:
        out["Content-Type"] = "application/json"
        out["Content-Length"] = str(len(spec.body))
    elif spec.method.upper() not in ("GET", "HEAD"):
        out["Content-Length"] = "0"
    if idempotency_key:
        if _BAD_HEADER.search(idempotency_key):
            return {}, "the idempotency key has a line break."
        out["Idempotency-Key"] = idempotency_key
    return out, None


# -- sending ------------------------------------------------------------------------------------------


def _in_chain(exc: BaseException, *types: type[BaseException]) -> bool:
    """Whether ``exc`` or anything it wraps (requests and urllib3 nest their causes) is one of ``types``."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, types):
            return True
        linked = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        todo.extend(item for item in linked if isinstance(item, BaseException))
    return False


def _failure(
    exc: BaseException, probe: _Probe, host: str, timeouts: tuple[float, float, float]
) -> tuple[str, str]:
    """(error_kind, message) for an exception raised while sending or reading."""
    connect_timeout, read_timeout, deadline = timeouts
    if not probe.sent:
        if probe.expired or _in_chain(exc, _Deadline):
            return "connect", f"Gave up after {deadline:g} s (the total time limit) before anything was sent."
        # urllib3's NewConnectionError is a ConnectTimeoutError too: the specific causes come first.
        if _in_chain(exc, urllib3.exceptions.NameResolutionError, socket.gaierror):
            reason = "the host name could not be resolved"
        elif _in_chain(exc, urllib3.exceptions.SSLError, ssl.SSLError):
            reason = "the TLS handshake failed"
        elif _in_chain(exc, ConnectionRefusedError):
            reason = "connection refused"
        elif _in_chain(exc, TimeoutError):  # the socket's own timeout, under ConnectTimeoutError
            reason = f"timed out connecting after {connect_timeout:g} s"
        elif _in_chain(exc, urllib3.exceptions.TimeoutError):
            reason = "timed out while connecting"
        else:
            reason = f"no connection could be made ({type(exc).__name__})"
        return "connect", f"Could not reach {host}: {reason}. Nothing was sent."
    if probe.expired:
        return (
            "deadline",
            f"{host} took longer than the total time limit of {deadline:g} s; the request was sent, so "
            "Clazar may have received it.",
        )
    if _in_chain(exc, urllib3.exceptions.ReadTimeoutError, TimeoutError):
        return (
            "read_timeout",
            f"{host} received the request but sent nothing for {read_timeout:g} s; Clazar may have "
            "applied it.",
        )
    if _in_chain(exc, http.client.RemoteDisconnected):
        how = "closed the connection without answering"
    elif _in_chain(exc, ConnectionResetError):
        how = "reset the connection"
    elif _in_chain(exc, http.client.IncompleteRead, urllib3.exceptions.IncompleteRead):
        how = "cut the answer off"
    else:
        how = f"broke the connection ({type(exc).__name__})"
    return "sent_then_failed", f"{host} {how} after the request was sent; Clazar may have received it."


def _read_body(raw: Any, max_body: int) -> tuple[bytes, bool]:
    """Up to max_body bytes (decoded), and whether there was more. Reads max_body + 1 bytes at most."""
    chunks: list[bytes] = []
    size = 0
    while size <= max_body:
        chunk = raw.read(min(CHUNK, max_body + 1 - size), decode_content=True)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    return data[:max_body], size > max_body


def send(
    spec: RequestSpec,
    token: str,
    *,
    session: requests.Session,
    idempotency_key: str | None,
    connect_timeout: float,
    read_timeout: float,
    deadline: float,
    max_body: int = 20_000,
) -> AttemptResult:
    """Send ``spec`` with the bearer ``token``; never follow a redirect; never raise for what the network
    or Clazar does. ``deadline`` is the total number of seconds for the whole exchange (connect, send,
    wait, read). ``session`` comes from ``session_for`` or ``new_session``: the request goes straight to
    its urllib3 pool, whose connections tell "nothing was sent" apart from "sent" exactly (requests'
    own request preparation and Response cost more CPU than the rest of a send; see bench/deliver.py)."""
    method = spec.method.upper()
    target = _target(spec.url)
    call = _Call(method, target.shown, target.host)
    headers, problem = _headers(spec, idempotency_key)
    problem = problem or target.problem
    if not token or _BAD_HEADER.search(token):
        problem = problem or "The access token is empty or has a line break."
    headers["Authorization"] = f"Bearer {token}"
    call.request_headers = redact_headers(headers)
    if problem:
        return call.done(error_kind="invalid", error=f"Not sent: {problem}")
    pool = _pool(session, spec.url, target)
    timeouts = (connect_timeout, read_timeout, deadline)
    probe = _Probe()
    _local.probe = probe
    _watchdog.arm(probe, max(deadline, 0.001))
    response: urllib3.BaseHTTPResponse | None = None
    try:
        response = pool.urlopen(
            method,
            target.request_uri,
            body=spec.body,
            headers=headers,
            retries=False,  # the engine decides retries
            redirect=False,  # a 3xx is reported, never followed (the token would go along)
            assert_same_host=False,
            preload_content=False,  # the body is read up to max_body only
            release_conn=False,
            timeout=urllib3.Timeout(connect=min(connect_timeout, deadline), read=min(read_timeout, deadline)),
        )
        status, answer_headers = response.status, dict(response.headers)
        raw, truncated = _read_body(response, max_body)
        probe.finish()
        if probe.expired and not truncated:  # an EOF forced by the watchdog is not the end of the body
            raise _Deadline("The deadline passed while reading the answer.")
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        kind, message = _failure(exc, probe, call.host, timeouts)
        if response is None:
            return call.done(error_kind=kind, error=message)
        message = f"Clazar answered HTTP {response.status}, but reading the answer failed: {message}"
        return call.done(
            status=response.status, headers=dict(response.headers), error_kind=kind, error=message
        )
    finally:
        probe.finish()  # the watchdog drops a finished probe
        _local.probe = None
        if response is not None:
            response.close()  # after a truncated read this drops the connection instead of draining it
            response.release_conn()
    return call.done(**_answer(status, answer_headers, raw, truncated, max_body))


def _pool(session: requests.Session, url: str, target: _Target) -> HTTPConnectionPool:
    """The session's urllib3 pool for the URL's origin. Certificates are checked against requests' CA
    bundle, as for the token call."""
    adapter = session.get_adapter(url)
    if not isinstance(adapter, _Adapter):
        raise TypeError("send() needs a session from transport.new_session() or session_for()")
    tls = (
        {"cert_reqs": "CERT_REQUIRED", "ca_certs": DEFAULT_CA_BUNDLE_PATH} if target.scheme == "https" else {}
    )
    return adapter.poolmanager.connection_from_host(
        target.hostname, target.port, target.scheme, pool_kwargs=tls
    )


def _answer(status: int, headers: dict[str, str], raw: bytes, truncated: bool, max_body: int) -> dict:
    """The result fields for an answer that was read (whole or up to max_body)."""
    text = _decode(raw, headers)
    values: dict[str, Any] = {"status": status, "headers": headers, "body": text, "truncated": truncated}
    lowered = {name.lower(): value for name, value in headers.items()}
    if 300 <= status < 400:
        where = sanitize_url(lowered.get("location", ""))
        values["error_kind"] = "redirect"
        values["error"] = (
            f"Clazar answered HTTP {status} with a redirect to {where or 'an unnamed address'}; "
            "redirects are never followed."
        )
    elif truncated:
        values["error_kind"] = "too_large"
        values["error"] = (
            f"The answer (HTTP {status}) is larger than {max_body} bytes; only the first {max_body} were kept."
        )
    elif raw.strip():
        try:
            values["json"] = json.loads(raw)
        except ValueError:
            if 200 <= status < 300 or "json" in lowered.get("content-type", "").lower():
                values["error_kind"] = "malformed"
                values["error"] = f"Clazar answered HTTP {status}, but the body is not valid JSON."
    return values


def _decode(raw: bytes, headers: dict[str, str]) -> str:
    charset = "utf-8"
    for name, value in headers.items():
        if name.lower() == "content-type" and "charset=" in value.lower():
            charset = value.lower().split("charset=", 1)[1].split(";")[0].strip().strip('"') or charset
    try:
        return raw.decode(charset, "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")


class _Call:
    """Collects what one call did and builds its AttemptResult (the duration ends when ``done`` runs)."""

    def __init__(self, method: str, url: str, host: str) -> None:
        self.method, self.url, self.host = method, url, host
        self.sent_at = datetime.now(UTC)
        self.started = time.monotonic()
        self.request_headers: dict[str, str] = {}

    def done(self, **values: Any) -> AttemptResult:
        values.setdefault("status", None)
        values.setdefault("headers", {})
        values.setdefault("body", "")
        values.setdefault("truncated", False)
        values.setdefault("json", None)
        values.setdefault("error_kind", None)
        values.setdefault("error", "")
        result = AttemptResult(
            method=self.method,
            url=self.url,
            duration_ms=int((time.monotonic() - self.started) * 1000),
            request_headers=self.request_headers,
            sent_at=self.sent_at,
            **values,
        )
        return _logged(result)


def _logged(result: AttemptResult) -> AttemptResult:
    log.log(
        logging.INFO if result.error_kind else logging.DEBUG,
        "clazar %s %s -> %s%s in %d ms (headers: %s)",
        result.method,
        result.url,
        result.status if result.status is not None else "no answer",
        f" [{result.error_kind}]" if result.error_kind else "",
        result.duration_ms,
        ", ".join(result.request_headers),
    )
    return result
