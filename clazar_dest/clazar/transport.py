"""Send one request to Clazar and say exactly what happened. Network code only: no ORM.

``send()`` never raises for an HTTP answer or a network failure: it returns an ``AttemptResult`` that
`flows.outcomes.classify` turns into a decision. The hard part is telling "nothing reached Clazar" (safe to
send again, even a create) from "the request may have reached Clazar" (a create must not be re-sent
blindly). Exception types alone can't say that reliably (a stale keep-alive connection surfaces as a
reset), so ``send`` writes the request itself (it builds the bytes; httptools, Node's llhttp parser, reads
the answer; the socket is ours) and records whether a single byte of it was handed to the socket. ``error_kind`` is:

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

import httptools
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
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a token (RFC 9110 5.1)
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")

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


class _BadAnswer(Exception):
    """What the server sent is not an HTTP/1.1 answer."""


class _CutOff(ConnectionError):
    """The server closed the connection before the answer ended."""


_HEAD_TOO_LONG = f"its status line and headers are longer than {MAX_HEAD} bytes"


class _Answer:
    """One answer read from the bytes of a connection with httptools (llhttp, Node's HTTP parser): the
    final status, its headers as sent and its body (a ``_Body``); a 1xx before it is skipped. The same for
    the blocking and the asyncio transport. ``done`` once the answer ended or its body passed max_body."""

    __slots__ = (
        "_fields",
        "body",
        "complete",
        "extra",
        "fields_size",
        "head_size",
        "headers",
        "keep_alive",
        "max_body",
        "parser",
        "status_code",
        "until_close",
    )

    def __init__(self, max_body: int) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.max_body = max_body
        self.status_code: int | None = None  # of the final answer, once its head is read
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: _Body | None = None
        self.complete = False
        self.extra = False  # bytes after the answer: the connection is not reused
        self.until_close = False  # no length given: the body ends when the server closes
        self.keep_alive = False  # the server keeps the connection open after this answer
        self.head_size = 0  # bytes fed before the final head was read whole
        self.fields_size = 0  # the headers' size (a head and its body may come in one read)
        self._fields: list[tuple[bytes, bytes]] = []

    @property
    def done(self) -> bool:
        return self.complete or (self.body is not None and self.body.full)

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry the next request (the answer was read whole, nothing
        followed it, and the server keeps the connection open)."""
        return (
            self.complete
            and not self.extra
            and not self.until_close
            and not self.body.full  # type: ignore[union-attr]
            and self.keep_alive
        )

    def feed(self, data: bytes) -> None:
        if self.complete:
            self.extra = True
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise _BadAnswer("it switched to another protocol") from exc
        except httptools.HttpParserCallbackError as exc:  # from a callback: a head too long, a bad gzip
            if isinstance(exc.__context__, (_BadAnswer, zlib.error)):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            if self.complete:  # garbage after a whole answer
                self.extra = True
                return
            raise _BadAnswer(str(exc) or type(exc).__name__) from exc
        if self.status_code is None:  # a head that never ends
            self.head_size += len(data)
            if self.head_size > MAX_HEAD:
                raise _BadAnswer(_HEAD_TOO_LONG)

    def feed_eof(self) -> None:
        """The server closed the connection: the end of a body sent without a length, else a cut-off."""
        if self.complete:
            return
        if self.status_code is not None and self.until_close:
            self.complete = True
            self.body.end()  # type: ignore[union-attr]
            return
        raise _CutOff()

    # httptools' callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True
        self._fields = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))
        self.fields_size += len(name) + len(value) + 4
        if self.fields_size > MAX_HEAD:
            raise _BadAnswer(_HEAD_TOO_LONG)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # a 1xx: the real answer follows
            return
        self.status_code, self.headers = status, self._fields
        names = {name.lower() for name, _ in self._fields}
        self.until_close = (
            b"content-length" not in names and b"transfer-encoding" not in names and status not in (204, 304)
        )
        self.body = _Body.of(self._fields, self.max_body)

    def on_body(self, data: bytes) -> None:
        if self.body is not None and not self.complete and not self.body.full:
            self.body.add(data)

    def on_message_complete(self) -> None:
        if self.status_code is not None and not self.complete:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it after this callback
            self.body.end()  # type: ignore[union-attr]


class _Connection:
    """One kept-alive HTTP/1.1 connection (a socket)."""

    __slots__ = ("eof", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.eof = False  # the server closed its side

    def read(self, answer: _Answer) -> None:
        """Read until the answer is done (the socket's timeout is the read timeout)."""
        while not answer.done:
            data = self.sock.recv(READ_SIZE)
            if data:
                answer.feed(data)
            else:
                self.eof = True
                answer.feed_eof()

    def dropped(self) -> bool:
        """Whether an idle connection was closed by the server (or has bytes nobody asked for)."""
        return _readable(self.sock.fileno())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _readable(fd: int) -> bool:
    """Whether the socket has something to read now (for an idle connection: a close or stray bytes)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


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
        if not _HEADER_NAME.fullmatch(name.strip()):
            return {}, f"the header name {name.strip()[:60]!r} has a character a header name can't have."
        if name.strip().lower() not in PROTECTED:
            out[name.strip()] = value.strip(" \t")
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
    elif isinstance(exc, _BadAnswer):
        how = f"answered with something that is not HTTP/1.1 ({exc})"
    elif conn is not None and conn.eof:
        how = "cut the answer off" if answered else "closed the connection without answering"
    elif isinstance(exc, zlib.error):
        how = f"sent a compressed answer that could not be decompressed ({exc})"
    else:
        how = f"broke the connection ({type(exc).__name__})"
    return "sent_then_failed", f"{host} {how} after the request was sent; Clazar may have received it."


class _Body:
    """Collects an answer's body: up to max_body bytes (decompressed), and whether there was more; never
    holds much more than that (a compressed answer is inflated only up to the cap)."""

    __slots__ = ("chunks", "inflate", "max_body", "size")

    def __init__(self, encoding: str, max_body: int) -> None:
        gzip = encoding in ("gzip", "x-gzip", "deflate")
        self.inflate = zlib.decompressobj(32 + zlib.MAX_WBITS) if gzip else None
        self.chunks: list[bytes] = []
        self.size = 0
        self.max_body = max_body

    @classmethod
    def of(cls, headers: list[tuple[bytes, bytes]], max_body: int) -> _Body:
        encoding = next((v for k, v in headers if k.lower() == b"content-encoding"), b"")
        return cls(encoding.decode("latin-1").strip().lower(), max_body)

    @property
    def full(self) -> bool:
        return self.size > self.max_body

    def add(self, data: bytes) -> None:
        if self.inflate is not None:
            data = self.inflate.decompress(data, self.max_body + 1 - self.size)
        self.chunks.append(data)
        self.size += len(data)

    def end(self) -> None:
        if self.inflate is not None:
            self.chunks.append(self.inflate.flush())
            self.size += len(self.chunks[-1])

    def result(self) -> tuple[bytes, bool]:
        data = b"".join(self.chunks)
        return data[: self.max_body], self.full


def _answer_headers(answer: _Answer) -> dict[str, str]:
    """The answer's headers as sent (names keep their case; a repeated header is joined with ", ")."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for raw_name, raw_value in answer.headers:
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
    its kept-alive connections, written by us and read with httptools (requests' and urllib3's layers cost
    more CPU than the rest of a send; see bench/client_overhead.py)."""
    if not isinstance(session, Session):
        raise TypeError("send() needs a session from transport.new_session() or session_for()")
    call, target, head = _prepare(spec, token, idempotency_key)
    if head is None:
        return call.result
    timeouts = (connect_timeout, read_timeout, deadline)
    probe = _Probe()
    _watchdog.arm(probe, max(deadline, 0.001))
    conn: _Connection | None = None
    answer = _Answer(max_body)
    reusable = False
    try:
        conn = session.take(target.origin) or _connect(target, min(connect_timeout, deadline), probe)
        probe.sock = conn.sock
        conn.sock.settimeout(min(read_timeout, deadline))
        if probe.expired:
            raise _Deadline("The deadline passed before the request was sent.")
        probe.sent = True  # before writing: a partial write may still reach Clazar
        conn.sock.sendall(head + spec.body if spec.body else head)
        conn.read(answer)
        probe.finish()
        if probe.expired and answer.until_close:  # an EOF forced by the watchdog is not the end of the body
            raise _Deadline("The deadline passed while reading the answer.")
        reusable = answer.reusable
    except (OSError, _BadAnswer, zlib.error) as exc:
        return _failed(call, exc, probe, conn, answer, timeouts)
    finally:
        probe.finish()  # the watchdog drops a finished probe
        if conn is not None and reusable:
            session.give(target.origin, conn)
        elif conn is not None:
            conn.close()  # after a truncated or failed read: the rest of the answer is never read
    return _answered(call, answer)


def _prepare(
    spec: RequestSpec, token: str, idempotency_key: str | None
) -> tuple[_Call, _Target, bytes | None]:
    """The call's record, its target and the request's head (request line and headers); the head is None
    when the request can't be sent (the call's ``result`` then says why)."""
    method = spec.method.upper()
    target = _target(spec.url)
    call = _Call(method, target.shown, target.host)
    headers, problem = _headers(spec, idempotency_key)
    problem = problem or target.problem
    if not token or _BAD_HEADER.search(token):
        problem = problem or "The access token is empty or has a line break."
    headers["Authorization"] = f"Bearer {token}"
    call.request_headers = redact_headers(headers)
    if not problem and _BAD_TARGET.search(target.request_uri):
        problem = f"{target.shown} has a character that can't be sent in a request line."
    if problem:
        call.result = call.done(error_kind="invalid", error=f"Not sent: {problem}")
        return call, target, None
    lines = [f"{method} {target.request_uri} HTTP/1.1", f"Host: {target.host_header}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    lines.append("\r\n")
    try:
        head = "\r\n".join(lines).encode("latin-1")
    except UnicodeError as exc:
        call.result = call.done(
            error_kind="invalid", error=f"Not sent: a header can't be sent over HTTP ({exc})."
        )
        return call, target, None
    return call, target, head


def _failed(
    call: _Call,
    exc: BaseException,
    probe: Any,
    conn: Any,
    answer: _Answer,
    timeouts: tuple[float, float, float],
) -> AttemptResult:
    answered = answer.status_code is not None
    kind, message = _failure(exc, probe, conn, answered, call.host, timeouts)
    if not answered:
        return call.done(error_kind=kind, error=message)
    message = f"Clazar answered HTTP {answer.status_code}, but reading the answer failed: {message}"
    return call.done(
        status=answer.status_code, headers=_answer_headers(answer), error_kind=kind, error=message
    )


def _answered(call: _Call, answer: _Answer) -> AttemptResult:
    raw, truncated = answer.body.result()  # type: ignore[union-attr]
    headers = _answer_headers(answer)
    return call.done(**_answer(answer.status_code, headers, raw, truncated, answer.max_body))  # type: ignore[arg-type]


# -- the same on an asyncio event loop ----------------------------------------------------------------


class _Wire(asyncio.Protocol):
    """One kept-alive connection on an event loop. A protocol rather than asyncio's streams: what arrives
    is fed to the answer being read as it comes (a send is a write and, mostly, one wake-up), and streams
    cost more CPU than the rest of the exchange."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: _Answer | None = None  # the answer being read
        self.unasked = False  # bytes came while no answer was being read: not reused
        self.failure: Exception | None = None  # raised by the answer being read
        self.eof = False  # the server closed its side (or the connection was lost)
        self.lost: BaseException | None = None
        self.waiter: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.answer is None:
            self.unasked = True
            return
        try:
            self.answer.feed(data)
        except (_BadAnswer, zlib.error) as exc:
            self.failure = exc
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

    async def read(self, answer: _Answer, read_timeout: float) -> None:
        """Until the answer is done; at most ``read_timeout`` seconds without any data."""
        self.answer = answer
        try:
            while not answer.done:
                if self.failure is not None:
                    raise self.failure
                if self.eof:
                    if self.lost is not None:
                        raise self.lost
                    answer.feed_eof()
                    continue
                loop = asyncio.get_running_loop()
                self.waiter = waiter = loop.create_future()
                timer = loop.call_later(read_timeout, _time_out, waiter)  # lighter than asyncio.timeout
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self.waiter = None
        finally:
            self.answer = None

    def dropped(self) -> bool:
        """Whether an idle connection was closed by the server (or has bytes nobody asked for), also when
        the loop has not read that yet."""
        if self.eof or self.unasked or self.transport is None or self.transport.is_closing():
            return True
        return _readable(self.transport.get_extra_info("socket").fileno())

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
        _, conn = await loop.create_connection(  # TCP_NODELAY is asyncio's default (and uvloop's)
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
    call, target, head = _prepare(spec, token, idempotency_key)
    if head is None:
        return call.result  # type: ignore[return-value]
    timeouts = (connect_timeout, read_timeout, deadline)
    probe = _AsyncProbe()
    conn: _Wire | None = None
    answer = _Answer(max_body)
    reusable = False
    limit = asyncio.timeout(max(deadline, 0.001))
    try:
        async with limit:
            conn = session.take(target.origin) or await _aconnect(target, min(connect_timeout, deadline))
            probe.sent = True  # before writing: a partial write may still reach Clazar
            conn.transport.write(head + spec.body if spec.body else head)  # type: ignore[union-attr]
            await conn.read(answer, read_timeout)
        reusable = answer.reusable
    except (OSError, _BadAnswer, zlib.error) as exc:  # TimeoutError is an OSError
        probe.expired = limit.expired()
        return _failed(call, exc, probe, conn, answer, timeouts)
    finally:
        if conn is not None and reusable:
            session.give(target.origin, conn)
        elif conn is not None:
            conn.close()  # after a truncated or failed read: the rest of the answer is never read
    return _answered(call, answer)


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
