"""What the Clazar and Salesforce simulators share: the threaded HTTP server, the request handler's
reading and dispatch, the start/stop lifecycle, control-route dispatch, fault bookkeeping and the
request log.

Each simulator keeps its own routes and state (`Api`), reply format (`_Handler._send`) and error bodies.
Stdlib only.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import asdict, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Generic, Self, TypeVar
from urllib.parse import parse_qsl, urlsplit

R = TypeVar("R")

# -- the server ----------------------------------------------------------------------------------


class ThreadedServer(ThreadingHTTPServer):
    """A threaded HTTP server that tracks open connections, so `close_connections()` can end them."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], sim: ServedSimulator
    ) -> None:
        self.sim = sim
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        self.accepted = 0  # connections accepted since the start
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # Skip HTTPServer's getfqdn(), which can stall on a reverse DNS lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
            self.accepted += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.sockets_lock:
            open_now = list(self.open_sockets)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away (timeouts, resets): nothing to report
        super().handle_error(request, client_address)


class BodyError(Exception):
    """A request body the handler will not read; answered with `status` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SimHandler(BaseHTTPRequestHandler):
    """Reads a request, then hands it to the control routes (``/__sim/...``) or to ``sim.api.handle``.

    A simulator's handler sets `server_version`, `request_type`, `control` and `max_body`, and
    implements `_failure` (the reply to a bad body or a crash) and `_send` (writing a reply)."""

    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds an idle keep-alive connection may stay open
    # Answer at once: with Nagle on, every keep-alive request waits ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    max_body = 16 * 1024 * 1024
    # The messages for a negative and for a too large Content-Length.
    length_messages = ("Invalid Content-Length.", "Request body too large.")
    request_type: ClassVar[Callable[..., Any]]
    control: ClassVar[Callable[[Any, str, str, dict[str, str], bytes], Any]]
    server: ThreadedServer

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.sim.access_log:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _failure(self, status: int, message: str) -> Any:
        raise NotImplementedError

    def _send(self, reply: Any) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        try:
            raw = self._read_body()
        except BodyError as exc:
            self.close_connection = True
            self._send(self._failure(exc.status, str(exc)))
            return
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        sim = self.server.sim
        if url.path.startswith("/__sim/"):
            reply = self.control(sim, self.command, url.path, query, raw)
        else:
            headers = {name.lower(): value for name, value in self.headers.items()}
            base = f"http://{self.headers.get('Host') or sim.url.removeprefix('http://')}"
            try:
                reply = sim.api.handle(self.request_type(self.command, url.path, query, headers, raw, base))
            except Exception:
                traceback.print_exc()
                reply = self._failure(500, "Simulator error.")
        if reply.drop:
            self.close_connection = True
            return
        self._send(reply)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(65_537)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BodyError(400, "Invalid chunked body.") from None
                if size == 0:
                    while self.rfile.readline(65_537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > self.max_body:
                    raise BodyError(413, "Request body too large.")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65_537)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise BodyError(400, "Invalid Content-Length.") from None
        if size < 0:
            raise BodyError(400, self.length_messages[0])
        if size > self.max_body:
            raise BodyError(413, self.length_messages[1])
        return self.rfile.read(size)


# -- the lifecycle -------------------------------------------------------------------------------


class ServedSimulator:
    """Serves a simulator's `handler` on a real socket from daemon threads, between `start()` and
    `stop()`; a subclass sets `handler`, `thread_name` and `api`."""

    handler: ClassVar[type[SimHandler]]
    thread_name: ClassVar[str]  # the serving thread is named "<thread_name>-<port>"
    api: Any

    def __init__(self, access_log: bool = False) -> None:
        self._stopping = threading.Event()  # set by stop(); pass `_stopping.wait` to the API as its sleep
        self.access_log = access_log
        self.url = ""
        self.host = ""
        self.port = 0
        self._server: ThreadedServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url or 'stopped'}>"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        """Bind `host`:`port` (0 = any free port) and serve in the background; sets `url`."""
        if self._server is not None:
            raise RuntimeError(f"The simulator is already running at {self.url}.")
        self._stopping.clear()
        self._server = ThreadedServer((host, port), self.handler, self)
        self.host, self.port = str(self._server.server_address[0]), int(self._server.server_address[1])
        shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # noqa: S104
        self.url = f"http://[{shown}]:{self.port}" if ":" in shown else f"http://{shown}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.thread_name}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection (a no-op when stopped)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in latency and hang faults
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since the start (keep-alive reuse shows as fewer than requests)."""
        return self._server.accepted if self._server is not None else 0

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_address_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    """The ``--host`` and ``--port`` options of a simulator's command line."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=default_port, help=f"port (default {default_port}; 0 = any)"
    )


def serve_in_foreground(
    sim: ServedSimulator, host: str, port: int, title: str, out: Callable[[str], None]
) -> None:
    """Start `sim`, announce "<title> listening on <url>" and serve until Ctrl-C or SIGTERM."""
    done = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set()) if in_main else None
    sim.start(host, port)
    out(f"{title} listening on {sim.url}")
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


# -- control routes ------------------------------------------------------------------------------


def faults_from(body: Any) -> tuple[list[Any], bool]:
    """The faults and the append flag of a ``POST /__sim/faults`` body."""
    if isinstance(body, list):
        return body, False
    if isinstance(body, dict) and "faults" in body:
        if not isinstance(body["faults"], list):
            raise ValueError('"faults" must be a list.')
        return body["faults"], bool(body.get("append", False))
    if isinstance(body, dict):
        return [body], False
    raise ValueError('Send a fault object, a list of them, or {"faults": [...], "append": false}.')


def dispatch_control(
    routes: dict[tuple[str, str], Callable[[], R]], method: str, path: str, reply: Callable[..., R]
) -> R:
    """Run the control route for `method` and ``/__sim/<name>``: 404 or 405 when there is none, 400 when
    it raises ValueError, TypeError or KeyError. `reply` builds a reply from (status, body, headers)."""
    name = path.removeprefix("/__sim/").strip("/")
    handler = routes.get((method, name))
    if handler is None:
        allowed = [m for m, n in routes if n == name]
        if allowed:
            return reply(405, {"detail": f'Method "{method}" not allowed.'}, {"Allow": ", ".join(allowed)})
        return reply(404, {"detail": "Not found."})
    try:
        return handler()
    except (ValueError, TypeError, KeyError) as exc:
        return reply(400, {"detail": str(exc)})


# -- faults --------------------------------------------------------------------------------------


class FaultOptions:
    """For a fault dataclass with ``on_call``, ``times``, ``seen`` and ``fired`` fields."""

    on_call: int
    times: int
    seen: int
    fired: int

    @classmethod
    def check_names(cls, data: Any) -> None:
        """Refuse anything but a JSON object of known options (the counters are not options)."""
        if not isinstance(data, dict):
            raise ValueError("A fault must be a JSON object.")
        unknown = sorted(set(data) - ({f.name for f in fields(cls)} - {"seen", "fired"}))
        if unknown:
            raise ValueError(f"Unknown fault option(s): {', '.join(unknown)}.")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


F = TypeVar("F", bound=FaultOptions)


class FaultList(Generic[F]):
    """A thread-safe list of faults of type `fault_type` (which has a ``from_dict`` classmethod)."""

    fault_type: ClassVar[Any]

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[F] = []

    def set(self, items: list[Any], append: bool = False) -> list[dict]:
        parsed = [self.fault_type.from_dict(item) for item in items]
        with self._lock:
            self._faults = [*self._faults, *parsed] if append else parsed
            return [f.to_dict() for f in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults = []

    def list(self) -> list[dict]:
        with self._lock:
            return [f.to_dict() for f in self._faults]

    def _fire(self, matches: Callable[[F], bool]) -> list[F]:
        """Count a call against each fault that `matches` it and is not used up; return those that hit:
        a fault hits from its `on_call`-th counted call, `times` times (0 = without end)."""
        hits: list[F] = []
        with self._lock:
            for fault in self._faults:
                if not matches(fault) or (fault.times and fault.fired >= fault.times):
                    continue
                fault.seen += 1
                if fault.seen >= fault.on_call:
                    fault.fired += 1
                    hits.append(fault)
        return hits


# -- the request log -----------------------------------------------------------------------------


def mask(value: Any, secret: Collection[str]) -> Any:
    """A copy of a JSON value with the keys named in `secret` (lower case) masked as ``***``."""
    if isinstance(value, dict):
        return {k: "***" if str(k).lower() in secret else mask(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, secret) for v in value]
    return value


def mask_headers(headers: dict[str, str], secret: Collection[str]) -> dict[str, str]:
    """Headers with the values of those named in `secret` masked, keeping the scheme (``Bearer ***``)."""
    out = {}
    for name, value in headers.items():
        if name in secret:
            scheme, _, rest = value.partition(" ")
            value = f"{scheme} ***" if rest else "***"
        out[name] = value
    return out


class RequestLog:
    """The request log of a simulator's `Api`, which sets `lock`, `log` and `log_seq` (in its reset) and
    implements `_log_start(req)` (see `_log_entry`) and `_answer(req, entry)`."""

    lock: threading.RLock
    log: deque[dict]
    log_seq: int

    def _log_start(self, req: Any) -> dict:
        raise NotImplementedError

    def _answer(self, req: Any, entry: dict) -> Any:
        raise NotImplementedError

    def handle(self, req: Any) -> Any:
        """Answer one request and log it, with its status, fault and duration."""
        started = time.monotonic()
        entry = self._log_start(req)
        reply = self._answer(req, entry)
        with self.lock:
            entry["status"] = None if reply.drop else reply.status
            entry["fault"] = reply.fault
            entry["duration"] = round(time.monotonic() - started, 6)
        return reply

    def _log_entry(self, req: Any, **details: Any) -> dict:
        """Append the entry of a request now starting: id, time, method, path, then `details`."""
        with self.lock:
            self.log_seq += 1
            entry = {
                "id": self.log_seq,
                "time": time.time(),
                "method": req.method,
                "path": req.path,
                **details,
                "status": None,
                "fault": None,
                "duration": None,
            }
            self.log.append(entry)
        return entry

    def requests_log(self, method: str | None = None, path: str | None = None) -> list[dict]:
        with self.lock:
            return copy.deepcopy(
                [
                    e
                    for e in self.log
                    if (method is None or e["method"] == method.upper())
                    and (path is None or e["path"] == path)
                ]
            )

    def clear_log(self) -> None:
        with self.lock:
            self.log.clear()
