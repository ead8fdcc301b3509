"""A faithful, fault-injecting Clazar API simulator: a real threaded HTTP server on loopback.

Stdlib only (no Django). Use it from Python::

    with ClazarSimulator(rate_limit=0) as sim:          # or ClazarSimulator().start(port=8010)
        requests.post(f"{sim.url}/authenticate/", json={"client_id": ..., "client_secret": ...})
        sim.add_fault("error", route="create_listing", on_call=2, status=502)
        sim.requests_log(path="/listings/")

or run it in the foreground: ``python -m clazar_dest.simulators.clazar --port 8010``.

API routes (Bearer auth on all but /authenticate/; answers as Django REST framework would):

- ``POST /authenticate/`` ``{client_id, client_secret}`` -> 200 ``{access_token, token_type: "bearer",
  expires_in}``; wrong credentials 401 ``{"detail": "Invalid client credentials."}``; bad JSON 400.
- ``GET /<resource>/`` for listings, opportunities, private_offers: ``page``, ``page_size`` (default 10,
  max 100), ``last_modified_at_after`` (ISO 8601) and the exact-match filters of ``LIST_FILTERS``
  -> ``{count, next, previous, results}``; ``GET|PATCH /<resource>/<id>/``.
- The template routes of the endpoint catalog (``clazar_dest.clazar.endpoints.ENDPOINTS``): creates
  answer 201 with a UUID ``id``, ``created_at`` and ``last_modified_at``; PUT/PATCH merge the given
  fields (200); private offers start as ``draft``; publish moves draft -> published, else 400; DELETE
  answers 204, then 404.
- ``POST /metering/``: one record (-> 201) or ``{"request": [records]}`` (-> 200 ``{"results": [...]}``).
- Rate limit per token (``rate_limit`` requests per ``rate_window`` seconds, sliding; 0 = off) -> 429
  with ``Retry-After``. Idempotency mode (off by default): a repeated ``Idempotency-Key`` on a POST
  replays the first answer (header ``Idempotent-Replayed: true``); reused with another body -> 422.

Faults (``set_faults``/``add_fault``, or ``POST /__sim/faults``), one JSON object each::

    {"kind": "latency" | "error" | "unauthorized" | "drop" | "hang" | "malformed" | "huge" | "redirect",
     "route": null,      # all API calls except /authenticate/; or a route key ("create_listing",
                         # "authenticate", "metering", "list_listings", "read_private_offers", ...),
                         # or "METHOD /path/" / "/path/" with a concrete path or the catalog template
     "on_call": 1,       # fires from the Nth matching call (counted from when the fault was set)
     "times": 1,         # how many calls it hits; 0 = every call (the default for latency)
     "status": null,     # error: 503; redirect: 302; malformed/huge: the real status (200 for none)
     "seconds": null,    # latency: 0.5; hang: 10 (sleep after running the request, before answering)
     "size": null,       # huge: bytes of padding, 5000000
     "location": null,   # redirect: https://redirected.invalid/<path>
     "apply": null,      # drop/hang/malformed/huge run the request first (the change is made); false: not
     "detail": null}     # error/unauthorized: the "detail" message

Kinds: latency sleeps first; error answers ``status`` without running the request; unauthorized answers
401 even with a valid token; drop closes the socket without answering; hang sleeps past the client's
read timeout; malformed cuts the JSON body in half; huge pads it; redirect answers 302 with Location.
Faults count calls that passed authentication and the rate limit. ``POST /__sim/faults`` takes a list,
one fault, or ``{"faults": [...], "append": false}``; it replaces the faults unless ``append`` is true.

Control routes (no auth, never logged): ``POST /__sim/reset``, ``POST /__sim/seed`` ``{resource:
[objects]}``, ``GET|POST|DELETE /__sim/faults``, ``GET|DELETE /__sim/requests`` (``?method=&path=``),
``GET|POST /__sim/config``, ``POST /__sim/clients``, ``GET /__sim/objects`` (``?resource=``),
``POST /__sim/tokens/expire`` and ``GET /__sim/health``. Request log entries hold id, time, method,
path, query, headers (lower-case names; Authorization shown as ``Bearer ***``), json (secret keys
masked), body (raw text when not JSON), status (None when dropped), fault and duration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from clazar_dest.clazar.endpoints import RESOURCES
from clazar_dest.simulators.base import (
    ServedSimulator,
    SimHandler,
    add_address_arguments,
    dispatch_control,
    faults_from,
    serve_in_foreground,
)
from clazar_dest.simulators.clazar_core import Api, Reply, Request

DEFAULT_CLIENT_ID = "sim-client-id"
DEFAULT_CLIENT_SECRET = "sim-client-secret"
DEFAULT_PORT = 8010
MAX_BODY = 16 * 1024 * 1024


def _control(sim: ClazarSimulator, method: str, path: str, query: dict[str, str], raw: bytes) -> Reply:
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError as exc:
        return Reply(400, {"detail": f"JSON parse error - {exc}"})

    def seed() -> Reply:
        return Reply(201, sim.seed(body or {}))

    def set_faults() -> Reply:
        items, append = faults_from(body)
        return Reply(200, {"faults": sim.set_faults(items, append=append)})

    def add_client() -> Reply:
        if not isinstance(body, dict) or not body.get("client_id") or not body.get("client_secret"):
            raise ValueError("Send {client_id, client_secret}.")
        sim.add_client(str(body["client_id"]), str(body["client_secret"]))
        return Reply(201, {"client_id": str(body["client_id"])})

    def configure() -> Reply:
        if not isinstance(body, dict):
            raise ValueError("Send an object of settings.")
        return Reply(200, sim.configure(**body))

    def objects() -> Reply:
        names = [query["resource"]] if query.get("resource") else [*RESOURCES, "metering"]
        if any(n not in (*RESOURCES, "metering") for n in names):
            raise ValueError(f"Unknown resource {query['resource']!r}.")
        return Reply(200, {n: sim.objects(n) for n in names})

    routes: dict[tuple[str, str], Callable[[], Reply]] = {
        ("GET", "health"): lambda: Reply(200, {"status": "ok", "objects": sim.api.counts()}),
        ("POST", "reset"): lambda: (sim.reset(), Reply(200, {"detail": "Simulator reset."}))[1],
        ("POST", "seed"): seed,
        ("GET", "faults"): lambda: Reply(200, {"faults": sim.faults()}),
        ("POST", "faults"): set_faults,
        ("DELETE", "faults"): lambda: (sim.clear_faults(), Reply(200, {"faults": []}))[1],
        ("GET", "requests"): lambda: Reply(
            200, {"requests": sim.requests_log(query.get("method"), query.get("path"))}
        ),
        ("DELETE", "requests"): lambda: (sim.clear_requests_log(), Reply(200, {"requests": []}))[1],
        ("GET", "config"): lambda: Reply(200, sim.configure()),
        ("POST", "config"): configure,
        ("POST", "clients"): add_client,
        ("GET", "objects"): objects,
        ("POST", "tokens/expire"): lambda: (sim.expire_tokens(), Reply(200, {"detail": "Tokens expired."}))[
            1
        ],
    }
    return dispatch_control(routes, method, path, Reply)


class _Handler(SimHandler):
    server_version = "ClazarSimulator/1.0"
    max_body = MAX_BODY
    request_type = Request
    control = staticmethod(_control)

    def _failure(self, status: int, message: str) -> Reply:
        return Reply(status, {"detail": message})

    def _send(self, reply: Reply) -> None:
        payload = reply.render()
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.status != 204:
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if payload and reply.status != 204 and self.command != "HEAD":
                self.wfile.write(payload)
        except OSError:
            self.close_connection = True


class ClazarSimulator(ServedSimulator):
    """The Clazar API on a real socket. `start()` serves it from daemon threads until `stop()`."""

    handler = _Handler
    thread_name = "clazar-simulator"

    def __init__(
        self,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        *,
        expires_in: float = 3600,
        rate_limit: int = 120,
        rate_window: float = 60.0,
        rate_scope: str = "token",
        idempotency: bool = False,
        page_size: int = 10,
        max_page_size: int = 100,
        log_limit: int = 10_000,
        access_log: bool = False,
    ) -> None:
        super().__init__(access_log)
        self.api = Api(
            client_id,
            client_secret,
            sleep=self._stopping.wait,
            log_limit=log_limit,
            expires_in=expires_in,
            rate_limit=rate_limit,
            rate_window=rate_window,
            rate_scope=rate_scope,
            idempotency=idempotency,
            page_size=page_size,
            max_page_size=max_page_size,
        )
        self.client_id = client_id

    # -- helpers mirroring the control routes ----------------------------------------------------

    def reset(self) -> None:
        """Forget objects, tokens, faults and the log; settings and clients back to the constructor's."""
        self.api.reset()

    def seed(
        self, data: dict[str, list[dict]] | None = None, **resources: list[dict]
    ) -> dict[str, list[dict]]:
        """Preload objects, e.g. ``seed(listings=[{"name": "A", "cloud": "aws"}])``; returns them with ids."""
        return self.api.seed({**(data or {}), **resources})

    def set_faults(self, faults: list[dict], append: bool = False) -> list[dict]:
        return self.api.faults.set(list(faults), append=append)

    def add_fault(self, kind: str, **options: Any) -> list[dict]:
        return self.api.faults.set([{"kind": kind, **options}], append=True)

    def clear_faults(self) -> None:
        self.api.faults.clear()

    def faults(self) -> list[dict]:
        """The faults with their counters: ``seen`` matching calls and ``fired`` hits."""
        return self.api.faults.list()

    def requests_log(self, method: str | None = None, path: str | None = None) -> list[dict]:
        return self.api.requests_log(method, path)

    def clear_requests_log(self) -> None:
        self.api.clear_log()

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings at run time (expires_in, rate_limit, rate_window, rate_scope, idempotency,
        page_size, max_page_size); returns them all."""
        return self.api.configure(**settings)

    def add_client(self, client_id: str, client_secret: str) -> None:
        self.api.add_client(client_id, client_secret)

    def issue_token(self, client_id: str | None = None) -> str:
        """A valid access token without a call to /authenticate/ (not logged)."""
        return self.api.issue_token(client_id)

    def expire_tokens(self) -> None:
        self.api.expire_tokens()

    def objects(self, resource: str) -> list[dict]:
        return self.api.objects(resource)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``python -m clazar_dest.simulators.clazar`` and ``manage.py clazar_simulator``."""
    env = os.environ.get
    add_address_arguments(parser, DEFAULT_PORT)
    parser.add_argument("--client-id", default=env("CLAZAR_SIM_CLIENT_ID", DEFAULT_CLIENT_ID))
    parser.add_argument(
        "--client-secret",
        default=env("CLAZAR_SIM_CLIENT_SECRET", DEFAULT_CLIENT_SECRET),
        help="client secret (or set CLAZAR_SIM_CLIENT_SECRET, kept out of the process list)",
    )
    parser.add_argument("--rate-limit", type=int, default=120, help="requests per window per token (0 = off)")
    parser.add_argument("--rate-window", type=float, default=60.0, help="rate-limit window in seconds")
    parser.add_argument("--expires-in", type=float, default=3600, help="access token lifetime in seconds")
    parser.add_argument("--idempotency", action="store_true", help="replay repeated Idempotency-Keys")
    parser.add_argument("--seed", dest="seed_file", default=None, help="JSON file of objects to preload")
    parser.add_argument("--access-log", action="store_true", help="print one line per request to stderr")


def serve(options: dict[str, Any], out: Callable[[str], None]) -> None:
    """Run the simulator in the foreground until Ctrl-C or SIGTERM."""
    expires_in = options["expires_in"]
    sim = ClazarSimulator(
        options["client_id"],
        options["client_secret"],
        expires_in=int(expires_in) if float(expires_in).is_integer() else expires_in,
        rate_limit=options["rate_limit"],
        rate_window=options["rate_window"],
        idempotency=options["idempotency"],
        access_log=options["access_log"],
    )
    if options.get("seed_file"):
        with open(options["seed_file"], encoding="utf-8") as handle:
            sim.seed(json.load(handle))
    serve_in_foreground(sim, options["host"], options["port"], "Clazar simulator", out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clazar-simulator", description="Run the Clazar API simulator.")
    add_arguments(parser)
    options = vars(parser.parse_args(argv))
    serve(options, lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
