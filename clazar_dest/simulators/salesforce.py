"""A faithful, fault-injecting Salesforce simulator: a real threaded HTTP server on loopback.

Stdlib only (no Django). The login host and the instance are the same server. Use it from Python::

    with SalesforceSimulator(accounts=20, opportunities=60) as sim:   # or .start(port=8766)
        location = sim.approve(authorize_url)           # a person clicking Allow on the consent page
        tokens = sim.grant()                            # or skip the flow: a connected org at once
        sim.add_fault("error", route="query", status=503)
        sim.touch("Opportunity", count=3)               # someone edits records in Salesforce
        sim.requests_log(path="/services/oauth2/token")

or run it in the foreground: ``python -m clazar_dest.simulators.salesforce --port 8766``.

Routes (the contract the app's client is written against):

- OAuth 2.0 web server flow: ``GET /services/oauth2/authorize`` shows a consent page (buttons "Allow"
  and "Deny") posting to ``/services/oauth2/authorize/decision``, which redirects with a single-use code
  (15 minutes, bound to client_id, redirect_uri and the S256 code_challenge) or ``error=access_denied``.
  ``POST /services/oauth2/token`` (authorization_code or refresh_token; client credentials in the form or
  HTTP Basic) answers ``{access_token, refresh_token, signature, scope, instance_url, id, token_type,
  issued_at}``; refresh tokens rotate by default (the old one then answers ``invalid_grant``).
  ``POST /services/oauth2/revoke`` revokes the whole grant. ``GET /id/<org>/<user>`` and
  ``GET /services/oauth2/userinfo`` describe the user. OAuth errors are ``{error, error_description}``.
- REST under ``/services/data/vNN.N/`` (Bearer): ``sobjects/``, ``sobjects/<Name>/describe``,
  ``sobjects/<Name>/<Id>`` (GET, PATCH), ``query?q=<SOQL>`` and ``query/<locator>-<offset>`` (batches of
  2000, or ``Sforce-Query-Options: batchSize=N``, 200..2000). Errors are ``[{message, errorCode}]``;
  a bad, expired or revoked token answers 401 INVALID_SESSION_ID. The SOQL subset is described in
  `clazar_dest.simulators.salesforce_soql`, the data in `clazar_dest.simulators.salesforce_data`.

Faults (``add_fault``/``set_faults`` or ``POST /__sim/faults``), one JSON object each::

    {"kind": "latency" | "error" | "unauthorized" | "drop" | "hang",
     "route": null,         # every route; or one of ROUTE_KEYS ("authorize", "token", "refresh", "revoke",
                            # "identity", "userinfo", "describe_global", "describe", "query", "query_more",
                            # "update", "retrieve", "resources", "versions")
     "on_call": 1,          # fires from the Nth matching call (counted from when the fault was set)
     "times": 1,            # how many calls it hits; 0 = every call from on_call on
     "status": null,        # error: 503
     "seconds": null,       # latency: 0.5; hang: 10
     "error_code": null,    # error/unauthorized: the errorCode (REST) or error (OAuth routes)
     "message": null,       # ... and the message / error_description
     "apply": null}         # drop/hang: carry the request out first (default); false: do not

latency sleeps, then answers normally; error answers ``status`` with a Salesforce-shaped body (an OAuth
body on authorize/token/refresh/revoke) without doing anything; unauthorized answers 401 even with a good
token; drop closes the socket without answering; hang sleeps ``seconds``, then answers. On routes that
need a token, faults count only calls whose token was good.

Control routes (no auth, never logged): ``POST /__sim/reset``, ``GET|POST /__sim/config``,
``POST /__sim/seed {"accounts", "opportunities"}``, ``POST /__sim/touch {"object", "ids"|"count",
"changes"}``, ``POST /__sim/create {"object", "fields"}``, ``GET /__sim/records?object=Opportunity``,
``POST /__sim/grant``, ``GET|POST|DELETE /__sim/faults``, ``GET|DELETE /__sim/requests`` (``?method=&path=``),
``POST /__sim/tokens/expire`` and ``GET /__sim/health``. Request log entries hold id, time, method, path,
route, query, headers (lower-case; Authorization as ``Bearer ***``), form or json (client_secret, code,
code_verifier, refresh_token, access_token and token masked as ``***``), body (other text), status (None
when dropped), fault and duration.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import traceback
from collections.abc import Callable
from html import unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

from clazar_dest.simulators.salesforce_core import DEFAULT_SCOPE, ROUTE_KEYS, Api, Reply, Request

DEFAULT_CONSUMER_KEY = "sim-sf-consumer-key"
DEFAULT_CONSUMER_SECRET = "sim-sf-consumer-secret"
DEFAULT_PORT = 8766
MAX_BODY = 16 * 1024 * 1024

__all__ = [
    "DEFAULT_CONSUMER_KEY",
    "DEFAULT_CONSUMER_SECRET",
    "DEFAULT_PORT",
    "ROUTE_KEYS",
    "SalesforceSimulator",
]


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.reply = Reply(status, [{"message": message, "errorCode": "BAD_REQUEST"}])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: SalesforceSimulator) -> None:
        self.sim = sim
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # Skip HTTPServer's getfqdn(), which can stall on a reverse DNS lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SalesforceSimulator/1.0"
    timeout = 60  # seconds an idle keep-alive connection may stay open
    disable_nagle_algorithm = True  # answer at once instead of waiting for the client's delayed ACK
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.sim.access_log:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _serve(self) -> None:
        try:
            raw = self._read_body()
        except _BodyError as exc:
            self.close_connection = True
            self._send(exc.reply)
            return
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        sim = self.server.sim
        if url.path.startswith("/__sim/"):
            reply = _control(sim, self.command, url.path, query, raw)
        else:
            headers = {name.lower(): value for name, value in self.headers.items()}
            base = f"http://{self.headers.get('Host') or sim.url.removeprefix('http://')}"
            try:
                reply = sim.api.handle(Request(self.command, url.path, query, headers, raw, base))
            except Exception:
                traceback.print_exc()
                reply = Reply(500, [{"message": "Simulator error.", "errorCode": "UNKNOWN_EXCEPTION"}])
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
                    raise _BodyError(400, "Invalid chunked body.") from None
                if size == 0:
                    while self.rfile.readline(65_537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise _BodyError(413, "Request body too large.")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65_537)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise _BodyError(400, "Invalid Content-Length.") from None
        if not 0 <= size <= MAX_BODY:
            raise _BodyError(413 if size > 0 else 400, "Invalid or too large Content-Length.")
        return self.rfile.read(size)

    def _send(self, reply: Reply) -> None:
        payload = b"" if reply.status in (204, 304) else reply.render()
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.status not in (204, 304):
                if payload:
                    self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if payload and self.command != "HEAD":
                self.wfile.write(payload)
        except OSError:
            self.close_connection = True


def _faults_from(body: Any) -> tuple[list[Any], bool]:
    if isinstance(body, list):
        return body, False
    if isinstance(body, dict) and "faults" in body:
        if not isinstance(body["faults"], list):
            raise ValueError('"faults" must be a list.')
        return body["faults"], bool(body.get("append", False))
    if isinstance(body, dict):
        return [body], False
    raise ValueError('Send a fault object, a list of them, or {"faults": [...], "append": false}.')


def _control(sim: SalesforceSimulator, method: str, path: str, query: dict[str, str], raw: bytes) -> Reply:
    name = path.removeprefix("/__sim/").strip("/")
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError as exc:
        return Reply(400, {"detail": f"JSON parse error - {exc}"})
    given = body if isinstance(body, dict) else {}

    def object_body() -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("object"), str):
            raise ValueError('Send {"object": "Opportunity", ...}.')
        return body

    def configure() -> Reply:
        if not isinstance(body, dict):
            raise ValueError("Send an object of settings.")
        return Reply(200, sim.configure(**body))

    def set_faults() -> Reply:
        items, append = _faults_from(body)
        return Reply(200, {"faults": sim.set_faults(items, append=append)})

    def touch() -> Reply:
        b = object_body()
        return Reply(
            200,
            {"ids": sim.touch(b["object"], ids=b.get("ids"), count=b.get("count"), changes=b.get("changes"))},
        )

    def create() -> Reply:
        b = object_body()
        return Reply(201, {"id": sim.create(b["object"], b.get("fields") or {})})

    routes: dict[tuple[str, str], Callable[[], Reply]] = {
        ("GET", "health"): lambda: Reply(200, {"status": "ok", "records": sim.api.counts()}),
        ("POST", "reset"): lambda: (sim.reset(), Reply(200, {"detail": "Simulator reset."}))[1],
        ("GET", "config"): lambda: Reply(200, sim.config()),
        ("POST", "config"): configure,
        ("POST", "seed"): lambda: Reply(201, sim.seed(**given)),
        ("POST", "touch"): touch,
        ("POST", "create"): create,
        ("GET", "records"): lambda: Reply(200, {"records": sim.records(query.get("object", "Opportunity"))}),
        ("POST", "grant"): lambda: Reply(200, sim.grant(**given)),
        ("GET", "faults"): lambda: Reply(200, {"faults": sim.faults()}),
        ("POST", "faults"): set_faults,
        ("DELETE", "faults"): lambda: (sim.clear_faults(), Reply(200, {"faults": []}))[1],
        ("GET", "requests"): lambda: Reply(
            200, {"requests": sim.requests_log(query.get("method"), query.get("path"))}
        ),
        ("DELETE", "requests"): lambda: (sim.clear_log(), Reply(200, {"requests": []}))[1],
        ("POST", "tokens/expire"): lambda: (
            sim.expire_access_tokens(),
            Reply(200, {"detail": "Tokens expired."}),
        )[1],
    }
    handler = routes.get((method, name))
    if handler is None:
        allowed = [m for m, n in routes if n == name]
        if allowed:
            return Reply(405, {"detail": f'Method "{method}" not allowed.'}, {"Allow": ", ".join(allowed)})
        return Reply(404, {"detail": "Not found."})
    try:
        return handler()
    except (ValueError, TypeError, KeyError) as exc:
        return Reply(400, {"detail": str(exc)})


class SalesforceSimulator:
    """A Salesforce org (login host and instance) on a real socket. `start()` serves it from daemon
    threads until `stop()`."""

    def __init__(
        self,
        consumer_key: str = DEFAULT_CONSUMER_KEY,
        consumer_secret: str = DEFAULT_CONSUMER_SECRET,
        *,
        rotate_refresh_tokens: bool = True,
        accounts: int = 20,
        opportunities: int = 60,
        log_limit: int = 10_000,
        access_log: bool = False,
    ) -> None:
        self._stopping = threading.Event()
        self.api = Api(
            consumer_key,
            consumer_secret,
            rotate_refresh_tokens=rotate_refresh_tokens,
            accounts=accounts,
            opportunities=opportunities,
            sleep=self._stopping.wait,
            log_limit=log_limit,
        )
        self.access_log = access_log
        self.url = ""
        self.host = ""
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<SalesforceSimulator {self.url or 'stopped'}>"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        if self._server is not None:
            raise RuntimeError(f"The simulator is already running at {self.url}.")
        self._stopping.clear()
        self._server = _Server((host, port), self)
        self.host, self.port = str(self._server.server_address[0]), int(self._server.server_address[1])
        shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # noqa: S104
        self.url = f"http://[{shown}]:{self.port}" if ":" in shown else f"http://{shown}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"salesforce-simulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
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

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Data re-seeded to the constructor's counts; tokens, codes, grants, cursors, faults and the log
        forgotten; settings back to the constructor's."""
        self.api.reset()

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings (see `config()` for the names); an unknown name or a bad value is a ValueError
        and changes nothing. ``permissions`` is merged over the defaults (every flag on). Returns them all."""
        return self.api.configure(**settings)

    def config(self) -> dict[str, Any]:
        return self.api.settings()

    def seed(self, accounts: int = 20, opportunities: int = 60) -> dict[str, int]:
        """Replace all records with the deterministic data set; returns the count of each object."""
        return self.api.seed(accounts, opportunities)

    def records(self, sobject: str) -> list[dict]:
        """Copies of every record of `sobject`, in creation order, values as Salesforce answers them."""
        return self.api.records(sobject)

    def touch(
        self,
        sobject: str,
        ids: list[str] | None = None,
        count: int | None = None,
        changes: dict[str, Any] | None = None,
    ) -> list[str]:
        """Edit records as a Salesforce user would (see `Api.touch`); returns their ids."""
        return self.api.touch(sobject, ids=ids, count=count, changes=changes)

    def create(self, sobject: str, fields: dict[str, Any]) -> str:
        """Add a record (Python dates and datetimes are fine); returns its Id."""
        return self.api.create(sobject, fields)

    def expire_access_tokens(self) -> None:
        """Every access token issued so far answers 401 INVALID_SESSION_ID; refresh tokens still work."""
        self.api.expire_access_tokens()

    def grant(self, redirect_uri: str = "http://testserver/cb", scope: str = DEFAULT_SCOPE) -> dict[str, Any]:
        """A token response as if the consent flow had just completed, without HTTP (not logged)."""
        return self.api.grant(self.url, redirect_uri, scope)

    # -- the consent page ------------------------------------------------------------------------

    def approve(self, authorize_url: str) -> str:
        """Do what a person clicking Allow does; returns the redirect Location (the callback URL with
        ``code`` and ``state``, or with ``error`` when the request was refused before consent)."""
        return self._consent(authorize_url, "allow")

    def deny(self, authorize_url: str) -> str:
        return self._consent(authorize_url, "deny")

    def _consent(self, authorize_url: str, decision: str) -> str:
        status, headers, page = _http("GET", authorize_url)
        if status in (301, 302, 303):
            return headers["location"]
        if status != 200:
            found = re.search(r"error=[^<\s]+", page)
            problem = unescape(found.group()) if found else f"HTTP {status}"
            raise RuntimeError(f"The authorize page refused the request: {problem}")
        request_id = re.search(r'name="request" value="([^"]*)"', page)
        action = re.search(r'<form[^>]*action="([^"]*)"', page)
        if request_id is None or action is None:
            raise RuntimeError("The authorize page has no consent form.")
        form = {"request": unescape(request_id.group(1)), "decision": decision}
        status, headers, page = _http("POST", urljoin(authorize_url, unescape(action.group(1))), form)
        if status not in (301, 302, 303):
            raise RuntimeError(f"The consent decision answered HTTP {status}: {page[:200]}")
        return headers["location"]

    # -- faults and the log ----------------------------------------------------------------------

    def add_fault(
        self,
        kind: str,
        route: str | None = None,
        on_call: int = 1,
        times: int = 1,
        status: int | None = None,
        seconds: float | None = None,
        error_code: str | None = None,
        message: str | None = None,
        apply: bool | None = None,
    ) -> list[dict]:
        fault = {
            "kind": kind,
            "route": route,
            "on_call": on_call,
            "times": times,
            "status": status,
            "seconds": seconds,
            "error_code": error_code,
            "message": message,
            "apply": apply,
        }
        return self.api.faults.set([fault], append=True)

    def set_faults(self, faults: list[dict], append: bool = False) -> list[dict]:
        return self.api.faults.set(list(faults), append=append)

    def clear_faults(self) -> None:
        self.api.faults.clear()

    def faults(self) -> list[dict]:
        """The faults with their counters: ``seen`` matching calls and ``fired`` hits."""
        return self.api.faults.list()

    def requests_log(self, method: str | None = None, path: str | None = None) -> list[dict]:
        return self.api.requests_log(method, path)

    def clear_log(self) -> None:
        self.api.clear_log()


def _http(method: str, url: str, form: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """One request without following redirects (as a browser's first hop)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"The simulator serves plain http URLs, not {url!r}.")
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
    try:
        body = urlencode(form) if form is not None else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else {}
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, target or "/", body=body, headers=headers)
        answer = connection.getresponse()
        text = answer.read().decode("utf-8", "replace")
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, text
    finally:
        connection.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``python -m clazar_dest.simulators.salesforce`` and ``manage.py salesforce_simulator``."""
    env = os.environ.get
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)"
    )
    parser.add_argument("--consumer-key", default=env("SALESFORCE_SIM_CONSUMER_KEY", DEFAULT_CONSUMER_KEY))
    parser.add_argument(
        "--consumer-secret",
        default=env("SALESFORCE_SIM_CONSUMER_SECRET", DEFAULT_CONSUMER_SECRET),
        help="consumer secret (or set SALESFORCE_SIM_CONSUMER_SECRET, kept out of the process list)",
    )
    parser.add_argument("--accounts", type=int, default=20, help="Accounts to seed (default 20)")
    parser.add_argument("--opportunities", type=int, default=60, help="Opportunities to seed (default 60)")
    parser.add_argument(
        "--callback-url",
        dest="callback_urls",
        action="append",
        default=[],
        help="an allowed redirect URI (repeatable; none given = any is accepted)",
    )
    parser.add_argument(
        "--no-rotation", action="store_true", help="keep refresh tokens when refreshing (default: rotate)"
    )
    parser.add_argument(
        "--access-token-ttl",
        type=float,
        default=7200,
        help="access token lifetime in seconds (0 = never expires)",
    )
    parser.add_argument("--access-log", action="store_true", help="print one line per request to stderr")


def serve(options: dict[str, Any], out: Callable[[str], None]) -> None:
    """Run the simulator in the foreground until Ctrl-C or SIGTERM."""
    sim = SalesforceSimulator(
        options["consumer_key"],
        options["consumer_secret"],
        rotate_refresh_tokens=not options.get("no_rotation", False),
        accounts=options.get("accounts", 20),
        opportunities=options.get("opportunities", 60),
        access_log=options.get("access_log", False),
    )
    ttl = options.get("access_token_ttl", 7200)
    sim.api.set_defaults(
        access_token_ttl=int(ttl) if float(ttl).is_integer() else ttl,
        callback_urls=list(options.get("callback_urls") or []),
    )
    done = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set()) if in_main else None
    sim.start(options["host"], options["port"])
    out(f"Salesforce simulator listening on {sim.url}")
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salesforce-simulator", description="Run the Salesforce simulator.")
    add_arguments(parser)
    options = vars(parser.parse_args(argv))
    serve(options, lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
