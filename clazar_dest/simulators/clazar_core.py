"""State and behaviour of the Clazar simulator, without sockets (see `clazar_dest.simulators.clazar`).

`Api.handle(request)` turns one parsed HTTP request into a `Reply`; the server only does I/O. The template
routes come from the endpoint catalog, so correcting a path there corrects the simulator too. Stdlib only.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlencode

from clazar_dest.clazar.endpoints import (
    ENDPOINTS,
    LIST_FILTERS,
    READ_ONLY_FIELDS,
    RESOURCES,
)
from clazar_dest.simulators.base import RequestLog, mask, mask_headers
from clazar_dest.simulators.clazar_faults import Fault, Faults
from clazar_dest.simulators.clazar_rules import (
    CONFIG_CHECKS,
    SECRET_HEADERS,
    SECRET_KEYS,
    iso,
    parse_when,
    type_name,
    validate,
)

DRAFT_RESOURCES = ("private_offers",)
NOT_FOUND = {"detail": "Not found."}
BEARER = {"WWW-Authenticate": 'Bearer realm="api"'}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    raw: bytes
    base_url: str


@dataclass
class Reply:
    status: int
    body: Any = None  # JSON-able; None sends no body
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # a pre-rendered body (malformed or huge faults)
    drop: bool = False  # close the connection without answering
    fault: str | None = None

    def render(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return b"" if self.body is None else json.dumps(self.body).encode()


@dataclass(frozen=True)
class Route:
    key: str
    method: str
    template: str
    action: str
    resource: str | None
    regex: re.Pattern[str]


def _route(key: str, method: str, template: str, action: str, resource: str | None) -> Route:
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
    return Route(key, method, template, action, resource, re.compile(f"^{pattern}$"))


def build_routes() -> list[Route]:
    routes = [
        _route("authenticate", "POST", "/authenticate/", "authenticate", None),
        _route("metering", "POST", "/metering/", "metering", None),
    ]
    routes += [_route(e.key, e.method, e.path, e.action, e.resource) for e in ENDPOINTS]
    for resource in RESOURCES:
        id_param = next(e.id_param for e in ENDPOINTS if e.resource == resource and e.id_param)
        item = f"/{resource}/{{{id_param}}}/"
        routes.append(_route(f"list_{resource}", "GET", f"/{resource}/", "list", resource))
        routes.append(_route(f"read_{resource}", "GET", item, "read", resource))
        routes.append(_route(f"patch_{resource}", "PATCH", item, "update", resource))
    return routes


class Api(RequestLog):
    """Everything the simulated Clazar API knows, behind one lock."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        sleep: Callable[[float], Any] = time.sleep,
        log_limit: int = 10_000,
        **config: Any,
    ) -> None:
        self.lock = threading.RLock()
        self.faults = Faults()
        self.routes = build_routes()
        self.sleep = sleep
        self._initial_clients = {client_id: client_secret}
        self._log_limit = log_limit
        self._defaults = {
            "expires_in": 3600,
            "rate_limit": 120,
            "rate_window": 60.0,
            "rate_scope": "token",
            "idempotency": False,
            "page_size": 10,
            "max_page_size": 100,
        }
        self._check_config(config)
        self._defaults.update(config)
        self.reset()

    # -- control ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything: objects, tokens, faults, the log; configuration back to the defaults."""
        with self.lock:
            self.config: dict[str, Any] = dict(self._defaults)
            self.clients: dict[str, str] = dict(self._initial_clients)
            self.tokens: dict[str, tuple[str, float]] = {}
            self.hits: dict[str, deque[float]] = {}
            self.idem: dict[tuple[str, str, str], tuple[str, Reply]] = {}
            self.store: dict[str, dict[str, dict]] = {r: {} for r in RESOURCES}
            self.metering: list[dict] = []
            self.log: deque[dict] = deque(maxlen=self._log_limit)
            self.log_seq = 0
            self.last_stamp: datetime | None = None
        self.faults.clear()

    def _check_config(self, config: dict[str, Any]) -> None:
        for name, value in config.items():
            check = CONFIG_CHECKS.get(name)
            if check is None:
                raise ValueError(f"Unknown simulator setting {name!r}.")
            if not check(value):
                raise ValueError(f"Invalid value for simulator setting {name!r}: {value!r}.")

    def configure(self, **config: Any) -> dict[str, Any]:
        self._check_config(config)
        with self.lock:
            self.config.update(config)
            return dict(self.config)

    def add_client(self, client_id: str, client_secret: str) -> None:
        with self.lock:
            self.clients[client_id] = client_secret

    def issue_token(self, client_id: str | None = None) -> str:
        with self.lock:
            client = client_id or next(iter(self.clients))
            token = secrets.token_urlsafe(32)
            self.tokens[token] = (client, time.monotonic() + self.config["expires_in"])
            return token

    def expire_tokens(self) -> None:
        with self.lock:
            self.tokens = {t: (c, 0.0) for t, (c, _) in self.tokens.items()}

    def seed(self, data: dict[str, list[dict]]) -> dict[str, list[dict]]:
        """Preload objects as given (ids, status and timestamps filled in when missing)."""
        if not isinstance(data, dict):
            raise ValueError("Seed data must be an object mapping resources to lists of objects.")
        out: dict[str, list[dict]] = {}
        with self.lock:
            for resource, items in data.items():
                if resource not in (*RESOURCES, "metering"):
                    raise ValueError(f"Unknown resource {resource!r}; use one of {', '.join(RESOURCES)}.")
                if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                    raise ValueError(f"Seed {resource!r} must be a list of objects.")
                out[resource] = [self._seed_one(resource, dict(item)) for item in items]
        return out

    def _seed_one(self, resource: str, obj: dict) -> dict:
        obj["id"] = str(obj.get("id") or uuid.uuid4())
        obj.setdefault("created_at", self._stamp())
        obj.setdefault("last_modified_at", obj["created_at"])
        for name in ("created_at", "last_modified_at"):
            if parse_when(obj[name]) is None:
                raise ValueError(f"Seed {resource} {obj['id']}: {name} is not an ISO 8601 date-time.")
        if resource in DRAFT_RESOURCES:
            obj.setdefault("status", "draft")
        if resource == "metering":
            self.metering.append(obj)
        else:
            self.store[resource][obj["id"]] = obj
        return copy.deepcopy(obj)

    def objects(self, resource: str) -> list[dict]:
        with self.lock:
            items = self.metering if resource == "metering" else list(self.store[resource].values())
            return copy.deepcopy(items)

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {**{r: len(self.store[r]) for r in RESOURCES}, "metering": len(self.metering)}

    # -- requests (`handle` comes from RequestLog) -----------------------------------------------

    def _log_start(self, req: Request) -> dict:
        body, text = None, None
        if req.raw:
            try:
                body = mask(json.loads(req.raw), SECRET_KEYS)
            except (ValueError, UnicodeDecodeError):
                secretive = req.path.startswith("/authenticate")
                text = "<hidden>" if secretive else req.raw[:65_536].decode("utf-8", "replace")
        return self._log_entry(
            req,
            query=dict(req.query),
            headers=mask_headers(req.headers, SECRET_HEADERS),
            json=body,
            body=text,
        )

    def _match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
        allowed: list[str] = []
        for route in self.routes:
            found = route.regex.match(path)
            if found:
                if route.method == method:
                    return route, {k: unquote(v) for k, v in found.groupdict().items()}, []
                allowed.append(route.method)
        return None, {}, allowed

    def _answer(self, req: Request, entry: dict) -> Reply:
        route, params, allowed = self._match(req.method, req.path)
        if route is None and not allowed:
            return Reply(404, NOT_FOUND)
        authenticates = route is not None and route.action == "authenticate"
        client = ""
        if not authenticates:
            token, client, denied = self._authorize(req)
            if denied:
                return denied
            throttled = self._throttle(token, client)
            if throttled:
                return throttled
            if route is None:
                detail = f'Method "{req.method}" not allowed.'
                return Reply(405, {"detail": detail}, {"Allow": ", ".join(allowed)})
        assert route is not None
        hits = self.faults.fire(route.key, req.method, req.path, route.template, authenticates)
        for fault in hits:
            if fault.kind == "latency":
                self.sleep(0.5 if fault.seconds is None else fault.seconds)
        fault = next((f for f in hits if f.kind != "latency"), None)
        if fault is None:
            return self._run(route, params, req, client)
        return self._misbehave(fault, route, params, req, client)

    def _misbehave(self, fault: Fault, route: Route, params: dict, req: Request, client: str) -> Reply:
        kind = fault.kind
        if kind == "error":
            return Reply(
                fault.status or 503, {"detail": fault.detail or "Simulated server error."}, fault=kind
            )
        if kind == "unauthorized":
            detail = fault.detail or (
                "Invalid client credentials." if route.key == "authenticate" else "Invalid token."
            )
            return Reply(401, {"detail": detail}, dict(BEARER), fault=kind)
        if kind == "redirect":
            location = fault.location or f"https://redirected.invalid{req.path}"
            return Reply(fault.status or 302, None, {"Location": location}, fault=kind)
        if fault.applies:
            reply = self._run(route, params, req, client)
        else:
            reply = Reply(200, {"detail": fault.detail or "Simulated response."})
        status = fault.status or (reply.status if reply.status != 204 else 200)
        if kind == "drop":
            return Reply(0, drop=True, fault=kind)
        if kind == "hang":
            self.sleep(10.0 if fault.seconds is None else fault.seconds)
            reply.fault = kind
            return reply
        if kind == "malformed":
            text = reply.render()
            raw = text[: len(text) // 2] if len(text) > 2 else b'{"detail": '
            return Reply(status, raw=raw, headers=reply.headers, fault=kind)
        body = dict(reply.body) if isinstance(reply.body, dict) else {"detail": "Simulated huge response."}
        body["padding"] = "x" * (fault.size or 5_000_000)
        return Reply(status, body, reply.headers, fault=kind)

    def _authorize(self, req: Request) -> tuple[str, str, Reply | None]:
        header = req.headers.get("authorization", "")
        if not header:
            detail = "Authentication credentials were not provided."
            return "", "", Reply(401, {"detail": detail}, dict(BEARER))
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "", "", Reply(401, {"detail": "Invalid token header."}, dict(BEARER))
        with self.lock:
            found = self.tokens.get(token)
        if found is None:
            return "", "", Reply(401, {"detail": "Invalid token."}, dict(BEARER))
        client, expires_at = found
        if time.monotonic() >= expires_at:
            return "", "", Reply(401, {"detail": "Token has expired."}, dict(BEARER))
        return token, client, None

    def _throttle(self, token: str, client: str) -> Reply | None:
        with self.lock:
            limit, window = self.config["rate_limit"], float(self.config["rate_window"])
            if limit <= 0:
                return None
            key = token if self.config["rate_scope"] == "token" else client
            now = time.monotonic()
            hits = self.hits.setdefault(key, deque())
            while hits and hits[0] <= now - window:
                hits.popleft()
            if len(hits) < limit:
                hits.append(now)
                return None
            wait = max(1, math.ceil(hits[0] + window - now))
        unit = "second" if wait == 1 else "seconds"
        detail = f"Request was throttled. Expected available in {wait} {unit}."
        return Reply(429, {"detail": detail}, {"Retry-After": str(wait)})

    def _run(self, route: Route, params: dict, req: Request, client: str) -> Reply:
        body: Any = None
        if req.method in ("POST", "PUT", "PATCH"):
            body, error = self._parse(req)
            if error:
                return error
        if route.action == "authenticate":
            return self._authenticate(body)
        key = req.headers.get("idempotency-key", "").strip()
        with self.lock:
            if not (key and req.method == "POST" and self.config["idempotency"]):
                return self._dispatch(route, params, req, body)
            scope = (client, req.path, key)
            fingerprint = hashlib.sha256(req.raw).hexdigest()
            cached = self.idem.get(scope)
            if cached is not None:
                if cached[0] != fingerprint:
                    detail = "Idempotency-Key was already used with a different request body."
                    return Reply(422, {"detail": detail})
                first = cached[1]
                headers = {**first.headers, "Idempotent-Replayed": "true"}
                return Reply(first.status, copy.deepcopy(first.body), headers)
            reply = self._dispatch(route, params, req, body)
            if reply.status < 500:
                self.idem[scope] = (
                    fingerprint,
                    Reply(reply.status, copy.deepcopy(reply.body), reply.headers),
                )
            return reply

    def _parse(self, req: Request) -> tuple[Any, Reply | None]:
        if not req.raw.strip():
            return {}, None
        kind = req.headers.get("content-type", "")
        if kind.split(";")[0].strip().lower() != "application/json":
            return None, Reply(415, {"detail": f'Unsupported media type "{kind}" in request.'})
        try:
            return json.loads(req.raw), None
        except (ValueError, UnicodeDecodeError) as exc:
            return None, Reply(400, {"detail": f"JSON parse error - {exc}"})

    def _authenticate(self, body: Any) -> Reply:
        if not isinstance(body, dict):
            detail = f"Invalid data. Expected a dictionary, but got {type_name(body)}."
            return Reply(400, {"non_field_errors": [detail]})
        errors = {n: ["This field is required."] for n in ("client_id", "client_secret") if not body.get(n)}
        if errors:
            return Reply(400, errors)
        client_id, secret = str(body["client_id"]), str(body["client_secret"])
        with self.lock:
            known = self.clients.get(client_id)
            if known is None or not hmac.compare_digest(known.encode(), secret.encode()):
                return Reply(401, {"detail": "Invalid client credentials."})
            now = time.monotonic()
            self.tokens = {t: v for t, v in self.tokens.items() if v[1] > now}
            token = secrets.token_urlsafe(32)
            expires_in = self.config["expires_in"]
            self.tokens[token] = (client_id, now + expires_in)
        return Reply(200, {"access_token": token, "token_type": "bearer", "expires_in": expires_in})

    def _stamp(self) -> str:
        now = datetime.now(UTC)
        if self.last_stamp is not None and now <= self.last_stamp:
            now = self.last_stamp + timedelta(microseconds=1)
        self.last_stamp = now
        return iso(now)

    # -- resources (called with the lock held) ------------------------------------------------------

    def _dispatch(self, route: Route, params: dict, req: Request, body: Any) -> Reply:
        action, resource = route.action, route.resource
        if action == "metering":
            return self._meter(body)
        assert resource is not None
        if action == "list":
            return self._list(resource, req)
        if action == "create":
            return self._create(resource, body, req.base_url)
        obj_id = next(iter(params.values()))
        obj = self.store[resource].get(obj_id)
        if obj is None:
            return Reply(404, NOT_FOUND)
        if action == "read":
            return Reply(200, copy.deepcopy(obj))
        if action == "delete":
            del self.store[resource][obj_id]
            return Reply(204)
        if not isinstance(body, dict):
            detail = f"Invalid data. Expected a dictionary, but got {type_name(body)}."
            return Reply(400, {"non_field_errors": [detail]})
        draft = resource not in DRAFT_RESOURCES or obj.get("status") == "draft"
        if action == "publish":
            if not draft:
                return Reply(400, {"detail": "Only draft offers can be published."})
            obj["status"] = "published"
            obj["published_at"] = obj["last_modified_at"] = self._stamp()
            return Reply(200, copy.deepcopy(obj))
        if not draft:
            return Reply(400, {"detail": "Only draft offers can be updated."})
        errors = validate(resource, body, partial=True)
        if errors:
            return Reply(400, errors)
        obj.update({k: v for k, v in body.items() if k not in READ_ONLY_FIELDS})
        obj["last_modified_at"] = self._stamp()
        return Reply(200, copy.deepcopy(obj))

    def _create(self, resource: str, body: Any, base_url: str) -> Reply:
        if not isinstance(body, dict):
            detail = f"Invalid data. Expected a dictionary, but got {type_name(body)}."
            return Reply(400, {"non_field_errors": [detail]})
        errors = validate(resource, body)
        if errors:
            return Reply(400, errors)
        stamp = self._stamp()
        obj: dict[str, Any] = {"id": str(uuid.uuid4())}
        obj.update({k: v for k, v in body.items() if k not in READ_ONLY_FIELDS})
        if resource in DRAFT_RESOURCES:
            obj["status"] = "draft"
        obj["created_at"] = obj["last_modified_at"] = stamp
        self.store[resource][obj["id"]] = obj
        return Reply(201, copy.deepcopy(obj), {"Location": f"{base_url}/{resource}/{obj['id']}/"})

    def _list(self, resource: str, req: Request) -> Reply:
        query = req.query
        items = list(self.store[resource].values())
        after_text = query.get("last_modified_at_after")
        if after_text is not None and after_text != "":
            after = parse_when(after_text)
            if after is None:
                return Reply(400, {"last_modified_at_after": ["Enter a valid date/time."]})
            items = [o for o in items if (parse_when(o.get("last_modified_at")) or after) >= after]
        for name in LIST_FILTERS.get(resource, ()):
            if query.get(name):
                items = [o for o in items if str(o.get(name)) == query[name]]
        size = self.config["page_size"]
        if query.get("page_size", "").isdigit() and int(query["page_size"]) > 0:
            size = min(int(query["page_size"]), self.config["max_page_size"])
        pages = max(1, math.ceil(len(items) / size))
        raw_page = query.get("page", "1") or "1"
        page = pages if raw_page == "last" else int(raw_page) if raw_page.isdigit() else 0
        if not 1 <= page <= pages:
            return Reply(404, {"detail": "Invalid page."})

        def link(number: int) -> str:
            params = {k: v for k, v in query.items() if k != "page"}
            if number > 1:
                params["page"] = str(number)
            tail = f"?{urlencode(params)}" if params else ""
            return f"{req.base_url}{req.path}{tail}"

        return Reply(
            200,
            {
                "count": len(items),
                "next": link(page + 1) if page < pages else None,
                "previous": link(page - 1) if page > 1 else None,
                "results": copy.deepcopy(items[(page - 1) * size : page * size]),
            },
        )

    def _meter(self, body: Any) -> Reply:
        wrapped = isinstance(body, dict) and "request" in body
        items = body["request"] if wrapped else [body]
        if wrapped and not isinstance(items, list):
            return Reply(400, {"request": [f'Expected a list of items but got type "{type_name(items)}".']})
        if wrapped and not items:
            return Reply(400, {"request": ["This list may not be empty."]})
        errors: list[dict] = []
        for item in items:
            if isinstance(item, dict):
                errors.append(validate("metering", item))
            else:
                detail = f"Invalid data. Expected a dictionary, but got {type_name(item)}."
                errors.append({"non_field_errors": [detail]})
        if any(errors):
            return Reply(400, {"request": errors} if wrapped else errors[0])
        results = []
        for item in items:
            record = {"id": str(uuid.uuid4()), **item, "status": "success", "created_at": self._stamp()}
            self.metering.append(record)
            results.append(copy.deepcopy(record))
        return Reply(200, {"results": results}) if wrapped else Reply(201, results[0])
