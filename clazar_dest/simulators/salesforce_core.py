"""State and behaviour of the Salesforce simulator, without sockets (see `clazar_dest.simulators.salesforce`).

`Api.handle(request)` turns one parsed HTTP request into a `Reply`: the OAuth 2.0 web server flow (consent
page, codes bound to client, redirect URI and PKCE challenge, refresh with rotation, revoke), identity
and userinfo, and the REST routes (describe, SOQL query with cursors, PATCH). Everything lives behind
one lock. The OAuth and identity handlers are in `salesforce_oauth`, faults in `salesforce_faults`,
`Request` and `Reply` in `salesforce_http`. Stdlib only.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from clazar_dest.simulators import salesforce_schema as sfschema
from clazar_dest.simulators.base import RequestLog, mask, mask_headers
from clazar_dest.simulators.salesforce_faults import OAUTH_ROUTES, ROUTE_KEYS, Fault, Faults, _fault_body
from clazar_dest.simulators.salesforce_http import NOT_FOUND, Reply, Request, rest_error
from clazar_dest.simulators.salesforce_oauth import DEFAULT_SCOPE, Grant, OAuth
from clazar_dest.simulators.salesforce_schema import SCHEMA, find_object, make_id
from clazar_dest.simulators.salesforce_soql_eval import execute
from clazar_dest.simulators.salesforce_soql_parser import SoqlError
from clazar_dest.simulators.salesforce_store import Store, ValueProblem, coerce

__all__ = ["DEFAULT_SCOPE", "ROUTE_KEYS", "Api", "Reply", "Request"]  # what the server imports

SECRET_FIELDS = frozenset(
    {"client_secret", "code", "code_verifier", "refresh_token", "access_token", "token", "password"}
)
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
MAX_CURSORS = 100
VERSIONS = (("59.0", "Winter '24"), ("60.0", "Spring '24"), ("61.0", "Summer '24"), ("62.0", "Winter '25"))
INVALID_SESSION = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


# -- configuration -------------------------------------------------------------------------------


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _sf_id(prefix: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and len(v) == 18 and v.startswith(prefix) and v.isalnum()


CONFIG_CHECKS: dict[str, Callable[[Any], bool]] = {
    "consumer_key": _text,
    "consumer_secret": _text,
    "rotate_refresh_tokens": lambda v: isinstance(v, bool),
    "app_name": _text,
    "org_id": _sf_id("00D"),
    "org_name": _text,
    "user_id": _sf_id("005"),
    "username": _text,
    "display_name": _text,
    "callback_urls": lambda v: isinstance(v, list | tuple) and all(_text(u) for u in v),
    "permissions": lambda v: isinstance(v, dict),
    "access_token_ttl": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
    "batch_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2000,
    "tamper_instance_url": lambda v: v is None or _text(v),
}


def permissions_from(value: dict[str, Any]) -> dict[str, dict[str, bool]]:
    """Object permissions: the given flags over the defaults (all on; Organization and User read only)."""
    merged = sfschema.default_permissions()
    for name, flags in value.items():
        if name not in SCHEMA:
            raise ValueError(f"permissions: unknown object {name!r}; use one of {', '.join(SCHEMA)}.")
        if not isinstance(flags, dict):
            raise ValueError(f'permissions[{name!r}] must be an object like {{"read": true, "edit": false}}.')
        for flag, on in flags.items():
            if flag not in ("read", "create", "edit", "delete") or not isinstance(on, bool):
                raise ValueError(
                    f"permissions[{name!r}][{flag!r}]: flags are read, create, edit and delete, each true or false."
                )
            merged[name][flag] = on
    return merged


@dataclass
class Route:
    key: str
    run: Callable[[], Reply]
    bearer: bool = True


# -- the simulated org ---------------------------------------------------------------------------


class Api(RequestLog, OAuth):
    """Everything the simulated Salesforce org knows, behind one lock."""

    def __init__(
        self,
        consumer_key: str,
        consumer_secret: str,
        *,
        rotate_refresh_tokens: bool = True,
        accounts: int = 20,
        opportunities: int = 60,
        sleep: Callable[[float], Any] = time.sleep,
        log_limit: int = 10_000,
    ) -> None:
        self.lock = threading.RLock()
        self.faults = Faults()
        self.sleep = sleep
        self.store = Store()
        self._log_limit = log_limit
        self._seed_counts = (accounts, opportunities)
        self._defaults: dict[str, Any] = {
            "consumer_key": consumer_key,
            "consumer_secret": consumer_secret,
            "rotate_refresh_tokens": rotate_refresh_tokens,
            "app_name": "clazar-dest",
            "org_id": make_id("00D", 1),
            "org_name": "Acme Inc.",
            "user_id": make_id("005", 1),
            "username": "integration@acme.example",
            "display_name": "Integration User",
            "callback_urls": [],
            "permissions": sfschema.default_permissions(),
            "access_token_ttl": 7200,
            "batch_size": 2000,
            "tamper_instance_url": None,
        }
        self._check(self._defaults)
        self.reset()

    # -- control ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Data re-seeded; tokens, codes, grants, cursors, faults and the log forgotten; settings back."""
        with self.lock:
            self.config: dict[str, Any] = copy.deepcopy(self._defaults)
            self.pending: dict[str, dict[str, Any]] = {}
            self.codes: dict[str, dict[str, Any]] = {}
            self.grants: dict[int, Grant] = {}
            self.access: dict[str, tuple[int, float]] = {}  # token -> (grant, issued at; 0 = expired)
            self.refresh: dict[str, int] = {}
            self.cursors: OrderedDict[str, list[dict]] = OrderedDict()
            self.grant_seq = 0
            self.log: deque[dict] = deque(maxlen=self._log_limit)
            self.log_seq = 0
            self.seed(*self._seed_counts)
        self.faults.clear()

    def _check(self, config: dict[str, Any]) -> dict[str, Any]:
        checked = {}
        for name, value in config.items():
            check = CONFIG_CHECKS.get(name)
            if check is None:
                raise ValueError(f"Unknown simulator setting {name!r}; known: {', '.join(CONFIG_CHECKS)}.")
            if not check(value):
                raise ValueError(f"Invalid value for simulator setting {name!r}: {value!r}.")
            if name == "permissions":
                value = permissions_from(value)
            elif name == "callback_urls":
                value = list(value)
            checked[name] = value
        return checked

    def set_defaults(self, **config: Any) -> None:
        """Change the settings `reset()` goes back to (and the current ones)."""
        self._defaults.update(self._check(config))
        self.configure(**config)

    def configure(self, **config: Any) -> dict[str, Any]:
        checked = self._check(config)
        with self.lock:
            self.config.update(checked)
            if checked.keys() & {"org_id", "org_name", "user_id", "username", "display_name"}:
                self.store.set_identity(*self._identity())
            return copy.deepcopy(self.config)

    def settings(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.config)

    def _identity(self) -> tuple[tuple[str, str], tuple[str, str, str]]:
        c = self.config
        return (c["org_id"], c["org_name"]), (c["user_id"], c["username"], c["display_name"])

    def seed(self, accounts: int = 20, opportunities: int = 60) -> dict[str, int]:
        with self.lock:
            counts = self.store.seed(accounts, opportunities, *self._identity())
            self.cursors.clear()
            return counts

    def records(self, name: str) -> list[dict]:
        obj = self._object(name)
        with self.lock:
            return self.store.records(obj.name)

    def counts(self) -> dict[str, int]:
        with self.lock:
            return self.store.counts()

    def _object(self, name: str) -> sfschema.SObject:
        obj = find_object(name) if isinstance(name, str) else None
        if obj is None:
            raise ValueError(f"Unknown object {name!r}; use one of {', '.join(SCHEMA)}.")
        return obj

    def touch(
        self,
        name: str,
        ids: list[str] | None = None,
        count: int | None = None,
        changes: dict[str, Any] | None = None,
    ) -> list[str]:
        """Modify records as someone in Salesforce would: `ids`, or the first `count` (default 1), get
        `changes` (default: a new NextStep and Amount + 1000 on Opportunities) and new stamps."""
        obj = self._object(name)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ValueError(f"count must be a whole number >= 0, not {count!r}.")
        with self.lock:
            table = self.store.data[obj.name]
            if ids is not None:
                missing = [i for i in ids if self.store.get(obj.name, i) is None]
                if missing:
                    raise ValueError(f"No {obj.name} with id {', '.join(map(str, missing))}.")
                targets = [self.store.get(obj.name, i) for i in ids]
            else:
                targets = list(table.values())[: 1 if count is None else count]
            touched = []
            for record in targets:
                assert record is not None
                self.store.change(obj.name, record, self._touch_changes(obj, record, changes))
                touched.append(record["Id"])
            return touched

    def _touch_changes(self, obj: sfschema.SObject, record: dict, changes: dict[str, Any] | None) -> dict:
        if changes is None:
            if obj.name != "Opportunity":
                return {}
            changes = {
                "NextStep": f"Follow-up {self.store.clock_ms % 100_000}",
                "Amount": (record["Amount"] or 0) + 1000,
            }
        out = {}
        for key, value in changes.items():
            f = obj.field(key)
            if f is None or f.name == "Id":
                raise ValueError(f"{obj.name} has no field {key!r} that can be changed.")
            out[f.name] = coerce(f, value)
        return out

    def create(self, name: str, values: dict[str, Any]) -> str:
        obj = self._object(name)
        if "Id" in values or "id" in values:
            raise ValueError("create() gives the record its Id; leave Id out.")
        with self.lock:
            return self.store.add(obj.name, dict(values))["Id"]

    def expire_access_tokens(self) -> None:
        with self.lock:
            self.access = {token: (grant, 0.0) for token, (grant, _) in self.access.items()}

    def grant(self, base_url: str, redirect_uri: str, scope: str = DEFAULT_SCOPE) -> dict[str, Any]:
        """A token response as if the consent flow had just completed (not logged)."""
        with self.lock:
            return self._issue(base_url, self.config["consumer_key"], scope)

    # -- requests (`handle` comes from RequestLog) -----------------------------------------------

    def _log_start(self, req: Request) -> dict:
        kind = req.headers.get("content-type", "").split(";")[0].strip().lower()
        form = body_json = text = None
        if req.raw:
            if kind == "application/x-www-form-urlencoded":
                raw_form = dict(parse_qsl(req.raw.decode("utf-8", "replace"), keep_blank_values=True))
                form = mask(raw_form, SECRET_FIELDS)
            else:
                try:
                    body_json = mask(json.loads(req.raw), SECRET_FIELDS)
                except (ValueError, UnicodeDecodeError):
                    secretive = req.path.startswith("/services/oauth2/")
                    text = "<hidden>" if secretive else req.raw[:65_536].decode("utf-8", "replace")
        return self._log_entry(
            req,
            route=None,
            query=mask(dict(req.query), SECRET_FIELDS),
            headers=mask_headers(req.headers, SECRET_HEADERS),
            form=form,
            json=body_json,
            body=text,
        )

    def _answer(self, req: Request, entry: dict) -> Reply:
        data = re.fullmatch(r"/services/data/(v\d+\.\d+)(/.*)?", req.path)
        route = self._data_route(req, data.group(1), data.group(2) or "/") if data else self._oauth_route(req)
        if isinstance(route, Route):
            with self.lock:
                entry["route"] = route.key
        if data or (isinstance(route, Route) and route.bearer):
            denied = self._check_session(req)  # before 404/405, as Salesforce does
            if denied:
                return denied
        if isinstance(route, Reply):
            return route
        hits = self.faults.fire(route.key)
        for fault in hits:
            if fault.kind == "latency":
                self.sleep(0.5 if fault.seconds is None else fault.seconds)
        fault = next((f for f in hits if f.kind != "latency"), None)
        if fault is None:
            return route.run()
        return self._misbehave(fault, route)

    def _misbehave(self, fault: Fault, route: Route) -> Reply:
        kind = fault.kind
        if kind == "error":
            status = fault.status or 503
            return Reply(status, _fault_body(route.key, status, fault.error_code, fault.message), fault=kind)
        if kind == "unauthorized":
            if route.key in OAUTH_ROUTES:
                body = {
                    "error": fault.error_code or "invalid_client",
                    "error_description": fault.message or "invalid client credentials",
                }
            else:
                body = _fault_body(route.key, 401, fault.error_code, fault.message)
            return Reply(401, body, {"WWW-Authenticate": "Token"}, fault=kind)
        applies = fault.apply is not False
        reply = route.run() if applies else None
        if kind == "drop":
            return Reply(0, drop=True, fault=kind)
        self.sleep(10.0 if fault.seconds is None else fault.seconds)
        if reply is None:
            reply = Reply(503, _fault_body(route.key, 503, fault.error_code, fault.message))
        reply.fault = kind
        return reply

    def _check_session(self, req: Request) -> Reply | None:
        header = req.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        with self.lock:
            found = self.access.get(token) if scheme.lower() in ("bearer", "oauth") and token else None
            ttl = self.config["access_token_ttl"]
        if found is None or found[1] == 0.0 or (ttl and time.monotonic() - found[1] >= ttl):
            return Reply(401, copy.deepcopy(INVALID_SESSION), {"WWW-Authenticate": "Token"})
        return None

    # -- routing -------------------------------------------------------------------------------------

    def _oauth_route(self, req: Request) -> Route | Reply:
        method, path = req.method, req.path.rstrip("/") or "/"
        head = "GET" if method == "HEAD" else method
        table: dict[str, tuple[dict[str, str], Callable[[], Reply], bool]] = {
            "/services/oauth2/authorize": ({"GET": "authorize"}, lambda: self._authorize(req), False),
            "/services/oauth2/authorize/decision": ({"POST": "authorize"}, lambda: self._decide(req), False),
            "/services/oauth2/token": ({"POST": "token"}, lambda: self._token(req), False),
            "/services/oauth2/revoke": (
                {"POST": "revoke", "GET": "revoke"},
                lambda: self._revoke(req),
                False,
            ),
            "/services/oauth2/userinfo": (
                {"GET": "userinfo", "POST": "userinfo"},
                lambda: self._userinfo(req),
                True,
            ),
            "/services/data": ({"GET": "versions"}, self._versions, False),
        }
        identity = re.fullmatch(r"/id/(\w+)/(\w+)", path)
        if identity:
            entry = (
                {"GET": "identity", "POST": "identity"},
                lambda: self._identity_doc(req, *identity.groups()),
                True,
            )
        elif path in table:
            entry = table[path]
        else:
            return Reply(404, copy.deepcopy(NOT_FOUND))
        keys, run, bearer = entry
        key = keys.get(head)
        if key is None:
            return _not_allowed(method, keys)
        if key == "token" and req.form().get("grant_type") == "refresh_token":
            key = "refresh"
        return Route(key, run, bearer)

    def _data_route(self, req: Request, version: str, rest: str) -> Route | Reply:
        method = "GET" if req.method == "HEAD" else req.method
        patterns: list[tuple[str, dict[str, str], Callable[..., Reply]]] = [
            (r"/?", {"GET": "resources"}, self._resources),
            (r"/sobjects/?", {"GET": "describe_global"}, self._describe_global),
            (r"/sobjects/(\w+)/describe/?", {"GET": "describe"}, self._describe),
            (r"/sobjects/(\w+)/([^/]+)/?", {"GET": "retrieve", "PATCH": "update"}, self._record),
            (r"/query/?", {"GET": "query"}, self._query),
            (r"/query/([^/]+)/?", {"GET": "query_more"}, self._query_more),
        ]
        for pattern, keys, handler in patterns:
            found = re.fullmatch(pattern, rest)
            if found is None:
                continue
            key = keys.get(method)
            if key is None:
                return _not_allowed(req.method, keys)
            args = [unquote(g) for g in found.groups()]
            return Route(key, lambda h=handler, a=args: h(req, version, *a))
        return Reply(404, copy.deepcopy(NOT_FOUND))

    # -- REST ------------------------------------------------------------------------------------------

    def _versions(self) -> Reply:
        return Reply(
            200, [{"label": label, "url": f"/services/data/v{v}", "version": v} for v, label in VERSIONS]
        )

    def _resources(self, req: Request, version: str) -> Reply:
        base = f"/services/data/{version}"
        return Reply(200, {n: f"{base}/{n}" for n in ("sobjects", "query", "queryAll", "search", "limits")})

    def _describe_global(self, req: Request, version: str) -> Reply:
        with self.lock:
            permissions = copy.deepcopy(self.config["permissions"])
        return Reply(200, sfschema.describe_global(permissions, version))

    def _readable(self, name: str) -> tuple[sfschema.SObject | None, dict[str, bool]]:
        obj = find_object(name)
        with self.lock:
            perms = dict(self.config["permissions"][obj.name]) if obj else {}
        return (obj if obj and perms["read"] else None), perms

    def _describe(self, req: Request, version: str, name: str) -> Reply:
        obj, perms = self._readable(name)
        if obj is None:
            return Reply(404, copy.deepcopy(NOT_FOUND))
        return Reply(200, sfschema.describe(obj, perms, version))

    def _record(self, req: Request, version: str, name: str, record_id: str) -> Reply:
        obj, perms = self._readable(name)
        if obj is None:
            return Reply(404, copy.deepcopy(NOT_FOUND))
        if req.method == "PATCH":
            return self._update(req, obj, perms, record_id)
        wanted = [n.strip() for n in req.query.get("fields", "").split(",") if n.strip()]
        columns = []
        for wanted_name in wanted:
            f = obj.field(wanted_name)
            if f is None:
                return rest_error(
                    400, "INVALID_FIELD", f"No such column '{wanted_name}' on sobject of type {obj.name}"
                )
            columns.append(f.name)
        with self.lock:
            record = self.store.get(obj.name, record_id)
            if record is None:
                return Reply(404, copy.deepcopy(NOT_FOUND))
            out = {k: record[k] for k in columns} if columns else dict(record)
        attributes = {"type": obj.name, "url": f"/services/data/{version}/sobjects/{obj.name}/{record['Id']}"}
        return Reply(200, {"attributes": attributes, **out})

    def _update(self, req: Request, obj: sfschema.SObject, perms: dict[str, bool], record_id: str) -> Reply:
        if not (obj.writable and perms["edit"]):
            return rest_error(
                403, "INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id", fields=[]
            )
        try:
            body = json.loads(req.raw) if req.raw.strip() else None
        except (ValueError, UnicodeDecodeError) as exc:
            return rest_error(400, "JSON_PARSER_ERROR", f"Unexpected character in the request body: {exc}")
        if not isinstance(body, dict):
            return rest_error(
                400, "JSON_PARSER_ERROR", "The request body must be a JSON object of field values."
            )
        with self.lock:
            record = self.store.get(obj.name, record_id)
            if record is None:
                return Reply(404, copy.deepcopy(NOT_FOUND))
            try:
                changes = self.store.checked_changes(obj.name, body)
            except ValueProblem as problem:
                return rest_error(400, problem.code, str(problem), fields=[problem.field])
            self.store.change(obj.name, record, changes)
        return Reply(204)

    def _batch(self, req: Request) -> int:
        options = req.headers.get("sforce-query-options", "")
        found = re.search(r"batchSize\s*=\s*(\d+)", options, re.IGNORECASE)
        if found:
            return min(2000, max(200, int(found.group(1))))
        with self.lock:
            return self.config["batch_size"]

    def _query(self, req: Request, version: str) -> Reply:
        text = req.query.get("q", "")
        if not text.strip():
            return rest_error(
                400, "MALFORMED_QUERY", "A query string is required: send it in the q parameter."
            )
        batch = self._batch(req)
        with self.lock:
            readable = {n for n, p in self.config["permissions"].items() if p["read"]}
            try:
                result = execute(text, self.store.data, readable, version)
            except SoqlError as exc:
                return rest_error(400, exc.code, exc.render(text))
            records = result.records
            if len(records) <= batch:
                return Reply(200, {"totalSize": result.total, "done": True, "records": records})
            locator = sfschema.id18(
                "01g"
                + "".join(
                    secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789")
                    for _ in range(12)
                )
            )
            self.cursors[locator] = records
            while len(self.cursors) > MAX_CURSORS:
                self.cursors.popitem(last=False)
        return Reply(200, _page(records, 0, batch, version, locator))

    def _query_more(self, req: Request, version: str, cursor: str) -> Reply:
        locator, _, offset = cursor.rpartition("-")
        batch = self._batch(req)
        with self.lock:
            records = self.cursors.get(locator)
            if records is not None:
                self.cursors.move_to_end(locator)
        if records is None or not offset.isdigit() or not 0 < int(offset) < len(records):
            return rest_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return Reply(200, _page(records, int(offset), batch, version, locator))


def _page(records: list[dict], offset: int, batch: int, version: str, locator: str) -> dict[str, Any]:
    end = offset + batch
    page: dict[str, Any] = {"totalSize": len(records), "done": end >= len(records)}
    if end < len(records):
        page["nextRecordsUrl"] = f"/services/data/{version}/query/{locator}-{end}"
    page["records"] = records[offset:end]
    return page


def _not_allowed(method: str, keys: dict[str, str]) -> Reply:
    allowed = ",".join([*keys, "HEAD"] if "GET" in keys else keys)
    return Reply(
        405,
        [
            {
                "errorCode": "METHOD_NOT_ALLOWED",
                "message": f"HTTP Method '{method}' not allowed. Allowed are {allowed}",
            }
        ],
        {"Allow": allowed.replace(",", ", ")},
    )
