"""Send one request to Clazar and say exactly what happened. Network code only: no ORM.

``send()`` never raises for an HTTP answer or a network failure: it returns an ``AttemptResult`` that
`flows.outcomes.classify` turns into a decision. The hard part is telling "nothing reached Clazar" (safe to
send again, even a create) from "the request may have reached Clazar" (a create must not be re-sent
blindly). Exception types alone can't say that reliably (a stale keep-alive connection surfaces as a
reset), so ``send`` writes the request itself (h11 builds the bytes and parses the answer; the socket is
ours) and records whether a single byte of it was handed to the socket. ``error_kind`` is:

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

``asend`` is the same on an asyncio event loop (a deliver run's): the same request bytes, answers and
error kinds (tests/test_transport.py runs every case through both), its connections kept by an
``AsyncSession`` of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import json
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookiejar import DefaultCookiePolicy
from importlib import metadata
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import h11
import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH, requote_uri

from clazar_dest.clazar.spec import RequestSpec

log = logging.getLogger(__name__)

MAX_SESSIONS = 32
# Connections kept alive per session unless the caller says (flows passes DELIVERY_THREADS). A pool smaller
# than the requests in flight closes a connection after each send beyond its size: a new TCP connection,
# and a new thread in a threaded server, per request.
POOL_SIZE = 8
REDACTED = "****"
MAX_HEAD = 65_536  # the status line and headers of an answer
READ_SIZE = 65_536
CA_BUNDLE = DEFAULT_CA_BUNDLE_PATH  # certifi's, as requests uses for the token call

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
    """Per-call state shared with the watchdog (another thread): whether the first byte of the request was
    handed to the socket, and the socket to shut when the deadline passes."""

    def __init__(self) -> None:
        self.sent = False
        self.expired = False
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._done = False

    def expire(self) -> None:
        """The watchdog: wake a read that is blocked (or trickled) past the deadline by shutting the socket.
        A connection whose call expired is closed, never reused."""
        with self._lock:
            if self._done:
                return
            self.expired = True
            if self.sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # the fd, also under an SSLSocket

    def finish(self) -> None:
        with self._lock:
            self._done = True

    @property
    def finished(self) -> bool:
        return self._done


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


# -- connections --------------------------------------------------------------------------------------


class _Connection:
    """One kept-alive HTTP/1.1 connection: the socket and h11's state of the exchange on it."""

    __slots__ = ("eof", "sock", "state")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.eof = False  # the server closed its side

    def next_event(self) -> Any:
        """h11's next event, reading from the socket as needed (its timeout is the read timeout)."""
        while True:
            event = self.state.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = self.sock.recv(READ_SIZE)
            self.eof = not data
            self.state.receive_data(data)

    def dropped(self) -> bool:
        """Whether an idle connection was closed by the server (or has bytes nobody asked for)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@functools.cache
def _tls_context(cafile: str) -> ssl.SSLContext:
    """Certificates are checked against requests' CA bundle (certifi), as for the token call."""
    return ssl.create_default_context(cafile=cafile)


def _connect(target: _Target, timeout: float, probe: _Probe) -> _Connection:
    sock = socket.create_connection((target.address, target.port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        probe.sock = sock  # a slow TLS handshake is cut at the deadline too
        if target.scheme == "https":
            sock = _tls_context(CA_BUNDLE).wrap_socket(sock, server_hostname=target.address)
    except BaseException:
        sock.close()
        raise
    return _Connection(sock)


# -- sessions -----------------------------------------------------------------------------------------


class Session(requests.Session):
    """requests' session for the token call, plus the kept-alive connections ``send`` uses: up to
    ``pool_size`` idle ones per origin, shared by the threads of this process. No cookies (shared by
    threads, so no shared cookie state), no proxies or .netrc from the environment (calls go to the API
    base only)."""

    def __init__(self, pool_size: int = POOL_SIZE) -> None:
        super().__init__()
        self.trust_env = False
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.mount("http://", adapter)
        self.mount("https://", adapter)
        self.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.pool_size = pool_size
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._idle_lock = threading.Lock()
        self._closed = False

    def idle_connections(self) -> int:
        with self._idle_lock:
            return sum(len(idle) for idle in self._idle.values())

    def take(self, origin: tuple[str, str, int]) -> _Connection | None:
        """The most recently used idle connection to ``origin`` still open, or None."""
        while True:
            with self._idle_lock:
                idle = self._idle.get(origin)
                conn = idle.pop() if idle else None
            if conn is None or not conn.dropped():
                return conn
            conn.close()

    def give(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        """Keep a connection whose exchange ended cleanly, or close it when the pool is full."""
        with self._idle_lock:
            idle = self._idle.setdefault(origin, [])
            if not self._closed and len(idle) < self.pool_size:
                idle.append(conn)
                return
        conn.close()

    def forget(self) -> None:
        """In a forked child: close this process's copies of the idle sockets; the session is not used
        again here."""
        idle, self._idle, self._idle_lock, self._closed = self._idle, {}, threading.Lock(), True
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def close(self) -> None:
        """Close the idle connections (a request in flight finishes, then closes its own)."""
        with self._idle_lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        super().close()


def new_session(pool_size: int = POOL_SIZE) -> Session:
    return Session(pool_size)


_sessions: OrderedDict[str, Session] = OrderedDict()
_sessions_lock = threading.Lock()


def session_for(credential_key: str, pool_size: int = POOL_SIZE) -> Session:
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
            old.close()
        return session


def close_sessions() -> None:
    """Close every pooled session (tests, worker shutdown)."""
    with _sessions_lock:
        while _sessions:
            _sessions.popitem()[1].close()


def _forget_sessions_after_fork() -> None:
    """A forked child (a prefork worker, a web worker) must not share the parent's kept-alive sockets: two
    processes writing on one connection would interleave their requests. The child closes its copies (the
    parent's stay open) without taking any lock a parent thread may have held at the fork, and makes
    sessions of its own."""
    global _sessions, _sessions_lock
    inherited, _sessions, _sessions_lock = _sessions, OrderedDict(), threading.Lock()
    for session in inherited.values():
        session.forget()


os.register_at_fork(after_in_child=_forget_sessions_after_fork)


# -- URLs and headers ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def sanitize_url(url: str) -> str:
    """The URL without userinfo or fragment, with secret-looking query values replaced by ``****``
    (by name: token, secret, key, signature...; or by shape: JWTs and long opaque strings). Worked out
    once per URL: every attempt row shows its URL."""
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
        elif _secret_header(lowered):
            text = REDACTED
        out[name] = text
    return out


@functools.lru_cache(maxsize=1024)
def _secret_header(lowered: str) -> bool:
    return lowered != "idempotency-key" and bool(_SECRET_NAME.search(lowered))


@dataclass(frozen=True)
class _Target:
    """What a URL means to a send, worked out once per URL (a deliver run sends to few distinct ones)."""

    shown: str  # sanitized, for people
    host: str  # host[:port], for messages
    problem: str | None  # why it can't be sent, or None
    scheme: str = ""
    address: str = ""  # the host to connect to (IDNA-encoded, no IPv6 brackets)
    port: int = 0
    host_header: str = ""
    request_uri: str = ""  # path and query, re-quoted as requests would

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.address, self.port)


DEFAULT_PORTS = {"http": 80, "https": 443}


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
        # A stray space or non-ASCII character is percent-encoded, as requests would; the host is
        # IDNA-encoded.
        parsed = urllib3.util.parse_url(requote_uri(url))
    except (ValueError, urllib3.exceptions.HTTPError, UnicodeError) as exc:
        return _Target(shown, host, f"{shown} can't be used ({type(exc).__name__}).")
    scheme = (parsed.scheme or "").lower()
    name = parsed.host or ""
    port = parsed.port or DEFAULT_PORTS[scheme]
    header = name if port == DEFAULT_PORTS[scheme] else f"{name}:{port}"
    return _Target(shown, host, None, scheme, name.strip("[]"), port, header, parsed.request_uri)


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


def _failure(
    exc: BaseException,
    probe: _Probe,
    conn: _Connection | None,
    answered: bool,
    host: str,
    timeouts: tuple[float, float, float],
) -> tuple[str, str]:
    """(error_kind, message) for an exception raised while connecting, sending or reading."""
    connect_timeout, read_timeout, deadline = timeouts
    if not probe.sent:
        if probe.expired or isinstance(exc, _Deadline):
            return "connect", f"Gave up after {deadline:g} s (the total time limit) before anything was sent."
        if isinstance(exc, socket.gaierror):
            reason = "the host name could not be resolved"
        elif isinstance(exc, ssl.SSLError):
            reason = "the TLS handshake failed"
        elif isinstance(exc, ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(exc, TimeoutError):
            reason = f"timed out connecting after {connect_timeout:g} s"
        else:
            reason = f"no connection could be made ({getattr(exc, 'strerror', None) or type(exc).__name__})"
        return "connect", f"Could not reach {host}: {reason}. Nothing was sent."
    if probe.expired:
        return (
            "deadline",
            f"{host} took longer than the total time limit of {deadline:g} s; the request was sent, so "
            "Clazar may have received it.",
        )
    if isinstance(exc, TimeoutError):
        return (
            "read_timeout",
            f"{host} received the request but sent nothing for {read_timeout:g} s; Clazar may have "
            "applied it.",
        )
    if isinstance(exc, ConnectionResetError):
        how = "reset the connection"
    elif conn is not None and conn.eof:
        how = "cut the answer off" if answered else "closed the connection without answering"
    elif isinstance(exc, h11.RemoteProtocolError):
        how = f"answered with something that is not HTTP/1.1 ({exc})"
    elif isinstance(exc, zlib.error):
        how = f"sent a compressed answer that could not be decompressed ({exc})"
    else:
        how = f"broke the connection ({type(exc).__name__})"
    return "sent_then_failed", f"{host} {how} after the request was sent; Clazar may have received it."


class _Body:
    """Collects an answer's body from h11's events: up to max_body bytes (decompressed), and whether there
    was more; never holds much more than that (a compressed answer is inflated only up to the cap). The
    same for the blocking and the asyncio transport."""

    __slots__ = ("chunks", "inflate", "max_body", "size")

    def __init__(self, encoding: str, max_body: int) -> None:
        gzip = encoding in ("gzip", "x-gzip", "deflate")
        self.inflate = zlib.decompressobj(32 + zlib.MAX_WBITS) if gzip else None
        self.chunks: list[bytes] = []
        self.size = 0
        self.max_body = max_body

    @classmethod
    def of(cls, response: Any, max_body: int) -> _Body:
        encoding = next((v for k, v in response.headers if k == b"content-encoding"), b"")
        return cls(encoding.decode("latin-1").strip().lower(), max_body)

    @property
    def full(self) -> bool:
        return self.size > self.max_body

    def take(self, event: Any) -> bool:
        """Add one event; returns whether the body ended."""
        if isinstance(event, h11.EndOfMessage):
            if self.inflate is not None:
                self.chunks.append(self.inflate.flush())
                self.size += len(self.chunks[-1])
            return True
        if not isinstance(event, h11.Data):
            raise h11.RemoteProtocolError(f"{type(event).__name__} inside the answer's body", 400)
        data = bytes(event.data)
        if self.inflate is not None:
            data = self.inflate.decompress(data, self.max_body + 1 - self.size)
        self.chunks.append(data)
        self.size += len(data)
        return False

    def result(self) -> tuple[bytes, bool]:
        data = b"".join(self.chunks)
        return data[: self.max_body], self.full


def _read_body(conn: _Connection, response: Any, max_body: int) -> tuple[bytes, bool]:
    body = _Body.of(response, max_body)
    while not body.full and not body.take(conn.next_event()):
        pass
    return body.result()


def _answer_headers(response: Any) -> dict[str, str]:
    """The answer's headers as sent (names keep their case; a repeated header is joined with ", ")."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for raw_name, raw_value in response.headers.raw_items():
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        first = seen.setdefault(name.lower(), name)
        out[first] = f"{out[first]}, {value}" if first in out else value
    return out


def send(
    spec: RequestSpec,
    token: str,
    *,
    session: Session,
    idempotency_key: str | None,
    connect_timeout: float,
    read_timeout: float,
    deadline: float,
    max_body: int = 20_000,
) -> AttemptResult:
    """Send ``spec`` with the bearer ``token``; never follow a redirect; never raise for what the network
    or Clazar does. ``deadline`` is the total number of seconds for the whole exchange (connect, send,
    wait, read). ``session`` comes from ``session_for`` or ``new_session``: the request goes out on one of
    its kept-alive connections, written and read with h11 (requests' and urllib3's layers cost more CPU
    than the rest of a send; see bench/client_overhead.py)."""
    if not isinstance(session, Session):
        raise TypeError("send() needs a session from transport.new_session() or session_for()")
    call, target, request = _prepare(spec, token, idempotency_key)
    if request is None:
        return call.result
    timeouts = (connect_timeout, read_timeout, deadline)
    probe = _Probe()
    _watchdog.arm(probe, max(deadline, 0.001))
    conn: _Connection | None = None
    response: Any = None
    reusable = False
    try:
        conn = session.take(target.origin) or _connect(target, min(connect_timeout, deadline), probe)
        probe.sock = conn.sock
        conn.sock.settimeout(min(read_timeout, deadline))
        data = _request_bytes(conn.state, request, spec.body)
        if probe.expired:
            raise _Deadline("The deadline passed before the request was sent.")
        probe.sent = True  # before writing: a partial write may still reach Clazar
        conn.sock.sendall(data)
        response = conn.next_event()
        while isinstance(response, h11.InformationalResponse):  # a 1xx precedes the real answer
            response = conn.next_event()
        if not isinstance(response, h11.Response):
            raise h11.RemoteProtocolError(f"{type(response).__name__} instead of an answer", 400)
        answer_headers = _answer_headers(response)
        raw, truncated = _read_body(conn, response, max_body)
        probe.finish()
        if probe.expired and not truncated:  # an EOF forced by the watchdog is not the end of the body
            raise _Deadline("The deadline passed while reading the answer.")
        state = conn.state
        reusable = not truncated and state.our_state is h11.DONE and state.their_state is h11.DONE
        if reusable:
            state.start_next_cycle()
    except (OSError, h11.ProtocolError, zlib.error) as exc:
        return _failed(call, exc, probe, conn, response, timeouts)
    finally:
        probe.finish()  # the watchdog drops a finished probe
        if conn is not None and reusable:
            session.give(target.origin, conn)
        elif conn is not None:
            conn.close()  # after a truncated or failed read: the rest of the answer is never read
    return call.done(**_answer(response.status_code, answer_headers, raw, truncated, max_body))


def _prepare(spec: RequestSpec, token: str, idempotency_key: str | None) -> tuple[_Call, _Target, Any]:
    """The call's record, its target and h11's request; the request is None when it can't be sent (the
    call's ``result`` then says why)."""
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
        call.result = call.done(error_kind="invalid", error=f"Not sent: {problem}")
        return call, target, None
    try:
        request = h11.Request(
            method=method,
            target=target.request_uri,
            headers=[("Host", target.host_header), *((k, v.encode("latin-1")) for k, v in headers.items())],
        )
    except (h11.LocalProtocolError, UnicodeError) as exc:
        call.result = call.done(
            error_kind="invalid", error=f"Not sent: a header can't be sent over HTTP ({exc})."
        )
        return call, target, None
    return call, target, request


def _request_bytes(state: h11.Connection, request: Any, body: bytes | None) -> bytes:
    data = state.send(request)
    if body:
        data += state.send(h11.Data(data=body))
    return data + state.send(h11.EndOfMessage())


def _failed(
    call: _Call,
    exc: BaseException,
    probe: Any,
    conn: Any,
    response: Any,
    timeouts: tuple[float, float, float],
) -> AttemptResult:
    answered = isinstance(response, h11.Response)
    kind, message = _failure(exc, probe, conn, answered, call.host, timeouts)
    if not answered:
        return call.done(error_kind=kind, error=message)
    message = f"Clazar answered HTTP {response.status_code}, but reading the answer failed: {message}"
    return call.done(
        status=response.status_code, headers=_answer_headers(response), error_kind=kind, error=message
    )


# -- the same on an asyncio event loop ----------------------------------------------------------------


class _Wire(asyncio.Protocol):
    """One kept-alive connection on an event loop: what arrived, and h11's state of the exchange. A
    protocol rather than asyncio's streams: a send is a write and a few reads, and streams cost more CPU
    than the rest of the exchange."""

    def __init__(self) -> None:
        self.state = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False  # the server closed its side (or the connection was lost)
        self.lost: BaseException | None = None
        self.waiter: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.lost = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next_event(self, read_timeout: float) -> Any:
        """h11's next event, waiting for data as needed (at most ``read_timeout`` seconds for each)."""
        while True:
            event = self.state.next_event()
            if event is not h11.NEED_DATA:
                return event
            if not self.buffer and not self.eof:
                loop = asyncio.get_running_loop()
                self.waiter = waiter = loop.create_future()
                timer = loop.call_later(read_timeout, _time_out, waiter)  # lighter than asyncio.timeout
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self.waiter = None
            if self.buffer:
                data, self.buffer = bytes(self.buffer), bytearray()
            elif self.lost is not None:
                raise self.lost
            else:
                data = b""
            self.state.receive_data(data)

    def dropped(self) -> bool:
        """Whether an idle connection was closed by the server (or has bytes nobody asked for), also when
        the loop has not read that yet."""
        if self.eof or self.buffer or self.transport is None or self.transport.is_closing():
            return True
        poller = select.poll()
        poller.register(self.transport.get_extra_info("socket").fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _time_out(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class AsyncSession:
    """The kept-alive connections of ``asend`` on one event loop: up to ``pool_size`` idle ones per
    origin (a deliver run sends ``pool_size`` requests at once). Used from its loop only."""

    def __init__(self, pool_size: int = POOL_SIZE) -> None:
        self.pool_size = pool_size
        self._idle: dict[tuple[str, str, int], list[_Wire]] = {}
        self._closed = False

    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def take(self, origin: tuple[str, str, int]) -> _Wire | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.dropped():
                return conn
            conn.close()
        return None

    def give(self, origin: tuple[str, str, int], conn: _Wire) -> None:
        idle = self._idle.setdefault(origin, [])
        if not self._closed and len(idle) < self.pool_size:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


class _AsyncProbe:
    """Whether the first byte of the request was handed to the connection, and whether the deadline
    passed (``_failure`` reads both)."""

    __slots__ = ("expired", "sent")

    def __init__(self) -> None:
        self.sent = False
        self.expired = False


async def _aconnect(target: _Target, timeout: float) -> _Wire:
    loop = asyncio.get_running_loop()
    https = target.scheme == "https"
    async with asyncio.timeout(timeout):
        _, conn = await loop.create_connection(  # TCP_NODELAY is asyncio's default
            _Wire,
            target.address,
            target.port,
            ssl=_tls_context(CA_BUNDLE) if https else None,
            server_hostname=target.address if https else None,
        )
    return conn


async def asend(
    spec: RequestSpec,
    token: str,
    *,
    session: AsyncSession,
    idempotency_key: str | None,
    connect_timeout: float,
    read_timeout: float,
    deadline: float,
    max_body: int = 20_000,
) -> AttemptResult:
    """``send`` on an event loop: the same request, the same answers and the same ``error_kind`` for
    every failure. A deliver run sends this way (one loop, many requests in flight: no thread per
    request)."""
    call, target, request = _prepare(spec, token, idempotency_key)
    if request is None:
        return call.result  # type: ignore[return-value]
    timeouts = (connect_timeout, read_timeout, deadline)
    probe = _AsyncProbe()
    conn: _Wire | None = None
    response: Any = None
    reusable = False
    limit = asyncio.timeout(max(deadline, 0.001))
    try:
        async with limit:
            conn = session.take(target.origin) or await _aconnect(target, min(connect_timeout, deadline))
            data = _request_bytes(conn.state, request, spec.body)
            probe.sent = True  # before writing: a partial write may still reach Clazar
            conn.transport.write(data)  # type: ignore[union-attr]
            response = await conn.next_event(read_timeout)
            while isinstance(response, h11.InformationalResponse):  # a 1xx precedes the real answer
                response = await conn.next_event(read_timeout)
            if not isinstance(response, h11.Response):
                raise h11.RemoteProtocolError(f"{type(response).__name__} instead of an answer", 400)
            answer_headers = _answer_headers(response)
            body = _Body.of(response, max_body)
            while not body.full and not body.take(await conn.next_event(read_timeout)):
                pass
            raw, truncated = body.result()
        state = conn.state
        reusable = not truncated and state.our_state is h11.DONE and state.their_state is h11.DONE
        if reusable:
            state.start_next_cycle()
    except (OSError, h11.ProtocolError, zlib.error) as exc:  # TimeoutError is an OSError
        probe.expired = limit.expired()
        return _failed(call, exc, probe, conn, response, timeouts)
    finally:
        if conn is not None and reusable:
            session.give(target.origin, conn)
        elif conn is not None:
            conn.close()  # after a truncated or failed read: the rest of the answer is never read
    return call.done(**_answer(response.status_code, answer_headers, raw, truncated, max_body))


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
        self.result: AttemptResult | None = None

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
    level = logging.INFO if result.error_kind else logging.DEBUG
    if not log.isEnabledFor(level):
        return result
    log.log(
        level,
        "clazar %s %s -> %s%s in %d ms (headers: %s)",
        result.method,
        result.url,
        result.status if result.status is not None else "no answer",
        f" [{result.error_kind}]" if result.error_kind else "",
        result.duration_ms,
        ", ".join(result.request_headers),
    )
    return result
