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
  `clazar_dest.simulators.salesforce_soql_parser` (grammar) and `salesforce_soql_eval` (semantics); the
  objects in `salesforce_schema`, the records and the seed in `salesforce_store`.

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
import http.client
import json
import os
import re
import sys
from collections.abc import Callable
from html import unescape
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from clazar_dest.simulators.base import (
    ServedSimulator,
    SimHandler,
    add_address_arguments,
    dispatch_control,
    faults_from,
    serve_in_foreground,
)
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


def _control(sim: SalesforceSimulator, method: str, path: str, query: dict[str, str], raw: bytes) -> Reply:
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
        items, append = faults_from(body)
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
    return dispatch_control(routes, method, path, Reply)


class _Handler(SimHandler):
    server_version = "SalesforceSimulator/1.0"
    max_body = MAX_BODY
    length_messages = ("Invalid or too large Content-Length.", "Invalid or too large Content-Length.")
    request_type = Request
    control = staticmethod(_control)

    def _failure(self, status: int, message: str) -> Reply:
        code = "UNKNOWN_EXCEPTION" if status >= 500 else "BAD_REQUEST"
        return Reply(status, [{"message": message, "errorCode": code}])

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


class SalesforceSimulator(ServedSimulator):
    """A Salesforce org (login host and instance) on a real socket. `start()` serves it from daemon
    threads until `stop()`."""

    handler = _Handler
    thread_name = "salesforce-simulator"

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
        super().__init__(access_log)
        self.api = Api(
            consumer_key,
            consumer_secret,
            rotate_refresh_tokens=rotate_refresh_tokens,
            accounts=accounts,
            opportunities=opportunities,
            sleep=self._stopping.wait,
            log_limit=log_limit,
        )

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
    add_address_arguments(parser, DEFAULT_PORT)
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
    serve_in_foreground(sim, options["host"], options["port"], "Salesforce simulator", out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salesforce-simulator", description="Run the Salesforce simulator.")
    add_arguments(parser)
    options = vars(parser.parse_args(argv))
    serve(options, lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
