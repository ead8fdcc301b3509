"""The typed destination config: the only way code reads or writes ``Destination.config`` (a JSONField).

Pure: no ORM, no network. ``from_json`` tolerates missing or odd values (old rows, half-filled wizard
forms) and never raises; ``validate`` says everything that is wrong, keyed by the field's path in
``to_json`` ("url", "batching.size", ...), in words a person can act on.

Decisions worth knowing:

- Macros are ``{attribute}`` (dots walk nested objects: ``{account.id}``). They may appear in the ID of a
  template and in the path or query of an Advanced URL, never in its host, and never in headers: header
  values are sent exactly as written (no per-record secrets or IDs hidden in headers; one place to look).
- The URL is pinned to the credential's API base: same scheme, host and port, compared as text after
  lower-casing and default ports, so numeric (decimal, octal, hex) hosts, ``user@`` parts, backslashes and
  percent-encoding in the host are refused before anything else could interpret them.
- Batching needs a Create template or Advanced mode. Templates with an ID (Update, Publish, Delete) change
  one object per request: a batch body (a list of records) is not what those routes take, and with an
  ``{id}`` macro every record names its own object anyway. Advanced mode may batch (records are grouped by
  the URL they resolve to), except DELETE, which sends no body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clazar_dest.clazar.endpoints import BY_KEY, Endpoint

MODES = ("template", "advanced")
METHODS = ("POST", "PUT", "PATCH", "DELETE")
FORMATS = ("json",)
ALGORITHMS = ("property", "code")
DEFAULT_BATCH = 100
MAX_BATCH = 1000
MAX_URL = 2000  # Attempt.url holds 2000 characters
MAX_HEADERS = 8000
# Set by the transport (or by HTTP itself); a config must not override them. Kept in step with
# clazar_dest.clazar.transport.PROTECTED, which drops them silently: here they are a visible error.
FORBIDDEN_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "host",
        "content-type",
        "content-length",
        "transfer-encoding",
        "idempotency-key",
        "accept",
        "user-agent",
        "connection",
        "cookie",
    }
)

_Add = Callable[..., None]
MACRO = re.compile(r"\{([^{}]*)\}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\]")
_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PORTS = {"http": 80, "https": 443}


def macros(text: str) -> list[str]:
    """The attribute names ``text`` refers to as ``{name}``, each once, in order of first use."""
    names = (m.strip() for m in MACRO.findall(text or ""))
    return list(dict.fromkeys(n for n in names if n))


def macro_problems(text: str, where: str) -> list[str]:
    """What is wrong with the macros in ``text`` (unbalanced braces, empty or malformed names)."""
    problems = []
    rest = MACRO.sub("", text)
    if "{" in rest or "}" in rest:
        problems.append(f"The {where} has a '{{' or '}}' that is not part of a {{attribute}} macro.")
    for raw in MACRO.findall(text):
        name = raw.strip()
        if not name or name.startswith(".") or name.endswith(".") or ".." in name:
            problems.append(
                f"The {where} has an invalid macro {{{raw}}}: write an attribute name such as {{id}} "
                "or a dotted path such as {account.id}."
            )
    return problems


def origin_of(url: str) -> tuple[str, str, int, str]:
    """Split a URL into (scheme, host, port, rest) strictly; ValueError says what is wrong.

    Stricter than ``urlsplit`` on purpose: anything a browser, urllib3 or a proxy might read differently
    (userinfo, percent-encoding or macros in the host, numeric hosts, backslashes) is refused here.
    """
    if "\\" in url:
        raise ValueError("must not contain backslashes")
    if _CONTROL.search(url) or any(c.isspace() for c in url):
        raise ValueError("must not contain spaces, line breaks or control characters")
    match = _URL.fullmatch(url)
    if not match:
        raise ValueError("must be a full URL such as https://api.clazar.io/private_offers/")
    scheme, authority, rest = match.group(1).lower(), match.group(2), match.group(3)
    if scheme not in _PORTS:
        raise ValueError(f"must use https (or http for a local simulator), not {scheme}")
    if "@" in authority:
        raise ValueError("must not contain a user name or password (an '@' before the host)")
    if "{" in authority or "}" in authority:
        raise ValueError("can use {attribute} macros only in the path or query, not in the host")
    if "%" in authority:
        raise ValueError("must not use percent-encoding in the host")
    if not authority.isascii():
        raise ValueError("must have a plain ASCII host name")
    authority = authority.lower()
    if authority.startswith("["):
        end = authority.find("]") + 1
        host, port_text = authority[:end], authority[end:]
    else:
        host, colon, port_text = authority.partition(":")
        port_text = colon + port_text
    if not host or not _HOST.fullmatch(host):
        raise ValueError(f"has an invalid host {host!r}")
    if port_text:
        digits = port_text[1:]
        if not (port_text.startswith(":") and digits.isascii() and digits.isdigit()):
            raise ValueError(f"has an invalid port {port_text!r}")
        port = int(digits)
        if not 0 < port < 65536:
            raise ValueError(f"has an invalid port {port_text!r}")
    else:
        port = _PORTS[scheme]
    return scheme, host, port, rest


def _hidden_ip(host: str) -> bool:
    """True for numeric hosts that are not a plain dotted quad: 2130706433, 0x7f.1, 0177.0.0.1, 127.1."""
    parts = host.split(".")
    if not all(_NUMBER.fullmatch(p) for p in parts):
        return False
    plain = len(parts) == 4 and all(p.isdigit() and str(int(p)) == p and int(p) < 256 for p in parts)
    return not plain


def _show(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://{host}" + ("" if _PORTS[scheme] == port else f":{port}")


def scan_headers(text: str) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """Parse ``name:value,name:value`` into pairs; return (pairs, problems). Values are sent as written."""
    if not text.strip():
        return (), []
    if any(c in text for c in "\r\n\x00"):
        return (), ["Headers can't contain line breaks or NUL characters."]
    if _CONTROL.sub("", text.replace("\t", " ")) != text.replace("\t", " "):
        return (), ["Headers can't contain control characters."]
    if len(text) > MAX_HEADERS:
        return (), [f"Headers are limited to {MAX_HEADERS} characters."]
    pairs: list[tuple[str, str]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for piece in text.split(","):
        if not piece.strip():
            continue
        name, colon, value = piece.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not name:
            problems.append(f"Header {piece.strip()!r} must be written as name:value.")
        elif not _TOKEN.fullmatch(name):
            problems.append(f"Header name {name!r} may use only letters, digits and - _ . (no spaces).")
        elif name.lower() in FORBIDDEN_HEADERS:
            problems.append(f"Header {name} is set by clazar-dest and can't be overridden.")
        elif name.lower() in seen:
            problems.append(f"Header {name} is given twice.")
        elif not value:
            problems.append(f"Header {name} has no value.")
        elif MACRO.search(value):
            problems.append(
                f"Header {name} uses a {{macro}}; header values are sent as written. "
                "Put per-record values in the URL or the body."
            )
        else:
            seen.add(name.lower())
            pairs.append((name, value))
    return tuple(pairs), problems


def parse_other_props(text: str) -> dict[str, Any]:
    """The Other Props JSON object ({} when blank); ValueError says what is wrong."""
    if not text.strip():
        return {}

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        value = json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(value, dict):
        raise ValueError(f'must be a JSON object such as {{"source": "crm"}}, not {type(value).__name__}')
    return value


@dataclass(frozen=True)
class Batching:
    """Group records that go to the same URL into one request (see ``flows.payloads``)."""

    enabled: bool = False
    size: int = DEFAULT_BATCH
    algorithm: str = "property"  # "property": {property_name: [records], **other_props}; "code": Jinja
    property_name: str = "records"
    other_props: str = ""  # JSON object text, kept as typed so the wizard shows it back unchanged
    code: str = ""

    @classmethod
    def from_json(cls, data: Any) -> Batching:
        data = data if isinstance(data, dict) else {}
        return cls(
            enabled=_bool(data.get("enabled"), False),
            size=_int(data.get("size"), DEFAULT_BATCH),
            algorithm=_text(data.get("algorithm"), "property").strip().lower(),
            property_name=_text(data.get("property_name"), "records").strip(),
            other_props=_text(data.get("other_props"), ""),
            code=_text(data.get("code"), ""),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "size": self.size,
            "algorithm": self.algorithm,
            "property_name": self.property_name,
            "other_props": self.other_props,
            "code": self.code,
        }


@dataclass(frozen=True)
class DestinationConfig:
    """What a destination sends: a catalog template (with its ID) or an Advanced request, plus
    excludes, batching and the response webhook switch. Immutable and hashable, so builders can cache."""

    mode: str = "template"
    template: str = ""
    id_value: str = ""  # fixed ("4f1c...") or a macro ("{id}"); only for templates with an ID parameter
    method: str = "POST"  # Advanced only; a template's method comes from the catalog
    content_format: str = "json"
    url: str = ""  # Advanced only
    headers: str = ""  # Advanced only, "name:value,name:value"
    exclude: tuple[str, ...] = ()
    batching: Batching = field(default_factory=Batching)
    response_webhook: bool = False

    @classmethod
    def from_json(cls, data: Any) -> DestinationConfig:
        """Read a stored config; missing or unreadable values take their defaults (never raises)."""
        data = data if isinstance(data, dict) else {}
        return cls(
            mode=_text(data.get("mode"), "template").strip().lower(),
            template=_text(data.get("template"), "").strip(),
            id_value=_text(data.get("id_value"), "").strip(),
            method=_text(data.get("method"), "POST").strip().upper(),
            content_format=_text(data.get("content_format"), "json").strip().lower(),
            url=_text(data.get("url"), "").strip(),
            headers=_text(data.get("headers"), "").strip(),
            exclude=_names(data.get("exclude")),
            batching=Batching.from_json(data.get("batching")),
            response_webhook=_bool(data.get("response_webhook"), False),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON stored in ``Destination.config``; keys in a fixed order, round-trips ``from_json``."""
        return {
            "mode": self.mode,
            "template": self.template,
            "id_value": self.id_value,
            "method": self.method,
            "content_format": self.content_format,
            "url": self.url,
            "headers": self.headers,
            "exclude": list(self.exclude),
            "batching": self.batching.to_json(),
            "response_webhook": self.response_webhook,
        }

    def endpoint(self) -> Endpoint | None:
        """The catalog entry in template mode (None in Advanced mode or for an unknown key)."""
        return BY_KEY.get(self.template) if self.mode == "template" else None

    def effective_method(self) -> str:
        """The HTTP method that will be sent ("" when no template is chosen yet)."""
        if self.mode == "advanced":
            return self.method
        endpoint = self.endpoint()
        return endpoint.method if endpoint else ""

    def attributes(self) -> list[str]:
        """Record attributes the requests need (URL or ID macros), for schema hints in the wizard."""
        if self.mode == "advanced":
            return macros(self.url)
        endpoint = self.endpoint()
        return macros(self.id_value) if endpoint and endpoint.id_param else []

    def describe(self) -> str:
        """One line for lists and summaries, e.g. "Create Private Offer -> POST /private_offers/"."""
        if self.mode == "advanced":
            line = f"Advanced -> {self.method} {self.url or '(no URL yet)'}"
        else:
            endpoint = self.endpoint()
            if endpoint is None:
                return f"Unknown template {self.template!r}" if self.template else "No template chosen"
            path = endpoint.path
            if endpoint.id_param and self.id_value:
                path = path.replace("{" + endpoint.id_param + "}", self.id_value)
            line = f"{endpoint.label} -> {endpoint.method} {path}"
        batch = self.batching
        if batch.enabled:
            how = "code template" if batch.algorithm == "code" else f"in '{batch.property_name}'"
            line += f", batches of {batch.size} ({how})"
        return line

    def validate(self, api_base: str) -> dict[str, list[str]]:
        """Field path -> messages; an empty dict means the config can be saved and sent."""
        errors: dict[str, list[str]] = {}

        def add(key: str, *messages: str) -> None:
            errors.setdefault(key, []).extend(messages)

        if self.mode not in MODES:
            add("mode", f"Mode must be 'template' or 'advanced', not {self.mode!r}.")
            return errors
        if self.content_format not in FORMATS:
            add("content_format", f"Content format must be JSON; {self.content_format!r} is not supported.")
        if self.mode == "template":
            self._check_template(add)
        else:
            self._check_advanced(api_base, add)
        for name in self.exclude:
            if name.startswith(".") or name.endswith(".") or ".." in name:
                add("exclude", f"Exclude {name!r} must be an attribute name or a dotted path such as a.b.")
        self._check_batching(add)
        return errors

    def _check_template(self, add: _Add) -> None:
        if not self.template:
            add("template", "Choose a template.")
            return
        endpoint = self.endpoint()
        if endpoint is None:
            known = ", ".join(BY_KEY)
            add("template", f"Template {self.template!r} is not in the catalog; choose one of {known}.")
            return
        if not endpoint.id_param:
            return
        if not self.id_value:
            add(
                "id_value",
                f"{endpoint.label} needs a {endpoint.id_label}: a fixed value or a record attribute "
                "such as {id}.",
            )
        elif self.id_value in (".", ".."):
            add("id_value", f"The {endpoint.id_label} can't be '.' or '..'.")
        else:
            problems = macro_problems(self.id_value, endpoint.id_label or "ID")
            if problems:
                add("id_value", *problems)

    def _check_advanced(self, api_base: str, add: _Add) -> None:
        if self.method not in METHODS:
            add("method", f"Method must be one of {', '.join(METHODS)}; {self.method!r} is not.")
        _, header_problems = scan_headers(self.headers)
        if header_problems:
            add("headers", *header_problems)
        self._check_url(api_base, add)

    def _check_url(self, api_base: str, add: _Add) -> None:
        try:
            base = origin_of(api_base)
        except ValueError as exc:
            add("url", f"The credential's API base {api_base!r} {exc}; fix the credential first.")
            return
        base_text = api_base.rstrip("/")
        if base[3] not in ("", "/"):
            add(
                "url",
                f"The credential's API base {api_base!r} must be an origin with no path; fix the credential.",
            )
            return
        if not self.url:
            add("url", f"Enter the URL, starting with {base_text}/ (e.g. {base_text}/private_offers/).")
            return
        if len(self.url) > MAX_URL:
            add("url", f"The URL is longer than {MAX_URL} characters.")
            return
        try:
            scheme, host, port, rest = origin_of(self.url)
        except ValueError as exc:
            add("url", f"The URL {exc}.")
            return
        if (scheme, host, port) != base[:3]:
            if _hidden_ip(host.strip("[]")):
                add("url", f"The URL's host {host!r} is an IP address written as a number; use {base_text}.")
            else:
                add(
                    "url",
                    f"The URL must be on the credential's API base {base_text} (same scheme, host and "
                    f"port); {_show(scheme, host, port)} is not.",
                )
            return
        if not rest.startswith("/") or rest.startswith("//"):
            add(
                "url",
                f"After the host the URL needs a path starting with one '/', e.g. {base_text}/listings/.",
            )
            return
        if "#" in rest:
            add("url", "The URL can't have a fragment ('#...').")
            return
        problems = macro_problems(rest, "URL")
        if problems:
            add("url", *problems)

    def _check_batching(self, add: _Add) -> None:
        batch = self.batching
        if not batch.enabled:
            return
        endpoint = self.endpoint()
        if self.effective_method() == "DELETE":
            add("batching.enabled", "Batching can't be used with DELETE: a DELETE sends no body.")
        elif endpoint is not None and endpoint.id_param:
            add(
                "batching.enabled",
                f"{endpoint.label} changes one object per request, so its records can't be batched. "
                "Turn batching off, or use Advanced to group records that share a URL.",
            )
        if not 1 <= batch.size <= MAX_BATCH:
            add("batching.size", f"Batch size must be a whole number from 1 to {MAX_BATCH}.")
        if batch.algorithm not in ALGORITHMS:
            add("batching.algorithm", "Batching algorithm must be 'property' or 'code'.")
        elif batch.algorithm == "property":
            if not batch.property_name:
                add("batching.property_name", "Enter the property that holds the records, e.g. records.")
            try:
                other = parse_other_props(batch.other_props)
            except ValueError as exc:
                add("batching.other_props", f"Other properties {exc}.")
            else:
                if batch.property_name in other:
                    add(
                        "batching.other_props",
                        f"Other properties can't set {batch.property_name!r}: that property holds the "
                        "records.",
                    )
        else:
            from flows.payloads import code_problem  # payloads owns the sandbox; imported late (cycle)

            problem = code_problem(batch.code)
            if problem:
                add("batching.code", problem)


def _text(value: Any, default: str) -> str:
    if value is None or isinstance(value, (dict, list)):
        return default
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bool(value: Any, default: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "on", "yes")
    return default


def _int(value: Any, default: int) -> int:
    """Whole numbers (also as text); unreadable values become 0, which ``validate`` rejects."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    return 0


def _names(value: Any) -> tuple[str, ...]:
    """Exclude attributes from a list or from text separated by commas or new lines."""
    if isinstance(value, str):
        value = re.split(r"[,\n]", value)
    if not isinstance(value, (list, tuple)):
        return ()
    names = (_text(v, "").strip() for v in value)
    return tuple(dict.fromkeys(n for n in names if n))
