"""The Salesforce REST API for one connected org: describe, query (all pages), update. Network code only.

``SalesforceClient(instance_url, access_token, refresh=...)`` sends every call with the bearer token;
when Salesforce answers 401 (``INVALID_SESSION_ID``) it calls ``refresh(failed_token)`` for a new token
and sends the call once more. Every failure is an exception whose message says what happened:

- ``SalesforceError(status, code, message)``: Salesforce answered and refused
  (``Salesforce answered 400 INVALID_FIELD: No such column 'Foo' ...``).
- ``SessionExpired``: the token is not accepted and could not be renewed: reconnect Salesforce.
- ``SalesforceUnavailable``: nothing usable came back: a timeout, a refused connection, a 5xx or an
  answer that is not JSON. Trying again later may work.

Redirects are never followed (the token would go wherever ``Location`` says), answers are capped at
``MAX_BODY`` and neither tokens nor header values are ever logged or put in a message.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

from clazar_dest.salesforce import API_VERSION
from clazar_dest.salesforce.soql import sobject_name

log = logging.getLogger(__name__)

MAX_BODY = 50 * 1024 * 1024
MAX_SECONDS = 300  # for reading one whole answer; each read also has the read timeout
CHUNK = 64 * 1024
USER_AGENT = "clazar-dest"

Timeout = float | tuple[float, float]

_RECORD_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_NEXT_PATH = re.compile(r"/services/data/[A-Za-z0-9._\-/]+")


# -- errors -------------------------------------------------------------------------------------------


class SalesforceError(Exception):
    """Salesforce answered ``status`` with ``code`` (its errorCode, like INVALID_FIELD) and ``message``."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"Salesforce answered {self.status} {self.code}: {self.message}"


class SessionExpired(SalesforceError):
    """The access token was refused (401) and there was no way to get one that works."""


class SalesforceUnavailable(SalesforceError):
    """No usable answer: timeout, refused connection, TLS failure, 5xx, or a body that is not JSON."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(status, "UNAVAILABLE", message)
        self.args = (message, status)

    def __str__(self) -> str:
        return self.message


# -- one HTTP exchange --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """An answer that was read whole (at most MAX_BODY bytes)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    host: str

    def json(self, what: str = "the answer") -> Any:
        """The parsed body; SalesforceUnavailable when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            start = self.body[:60].decode("utf-8", "replace").strip()
            raise SalesforceUnavailable(
                f"{self.host} answered HTTP {self.status} to {what} with something that is not JSON "
                f"(it starts with {start!r}). Check the Salesforce address, or try again later.",
                self.status,
            ) from None


def new_session() -> requests.Session:
    """A session that ignores the environment (no proxies, no .netrc) and keeps no cookies."""
    session = requests.Session()
    session.trust_env = False
    session.max_redirects = 0
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    session.headers["User-Agent"] = USER_AGENT
    return session


def host_of(url: str) -> str:
    try:
        return urlsplit(url).netloc.rpartition("@")[2] or url[:100]
    except ValueError:
        return url[:100]


def fetch(
    session: requests.Session,
    method: str,
    url: str,
    *,
    timeout: Timeout,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    data: Mapping[str, str] | str | None = None,
    json_body: Any = None,
    what: str = "the request",
) -> Answer:
    """Send one request and read the whole answer. Raises SalesforceUnavailable when no answer could be
    read and SalesforceError for a redirect or an answer over MAX_BODY; any other status is returned."""
    host = host_of(url)
    connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    started = time.monotonic()
    request = requests.Request(method, url, headers=dict(headers or {}), params=params, data=data)
    if json_body is not None:
        request.json = json_body
    try:
        prepared = session.prepare_request(request)
        # The adapter, not session.send(): with a 3xx, Session.send() reads the whole body (uncapped)
        # to prepare the next hop even when redirects are off.
        response = session.get_adapter(prepared.url or url).send(
            prepared, stream=True, timeout=(connect_timeout, read_timeout), verify=True, proxies={}
        )
    except requests.exceptions.ConnectTimeout:
        raise SalesforceUnavailable(
            f"Timed out connecting to {host} after {connect_timeout:g} s: {what} was not sent. Try again later."
        ) from None
    except requests.exceptions.ReadTimeout:
        raise SalesforceUnavailable(
            f"{host} did not answer {what} within {read_timeout:g} s (timeout). Try again later."
        ) from None
    except requests.exceptions.SSLError:
        raise SalesforceUnavailable(
            f"The TLS handshake with {host} failed: check the Salesforce address."
        ) from None
    except requests.exceptions.ConnectionError as exc:
        text = str(exc).lower()
        if "aborted" in text or "reset" in text:
            raise SalesforceUnavailable(
                f"{host} closed the connection without answering {what}. Try again later."
            ) from None
        if "refused" in text:
            reason = "connection refused"
        elif "resolve" in text or "name or service" in text:
            reason = "the host name could not be resolved"
        else:
            reason = f"the connection failed ({type(exc).__name__})"
        raise SalesforceUnavailable(
            f"Could not reach {host} ({reason}). Check the Salesforce address and the network, then try again."
        ) from None
    except (requests.RequestException, ValueError) as exc:
        raise SalesforceUnavailable(f"Sending {what} to {host} failed ({type(exc).__name__}).") from None
    try:
        status = response.status_code
        if 300 <= status < 400:
            where = host_of(response.headers.get("Location", "")) or "an unnamed address"
            raise SalesforceError(
                status,
                "REDIRECT",
                f"{host} redirected {what} to {where}; redirects are not followed. Check the Salesforce "
                "address (instance URL).",
            )
        body = _read(response, host, what, started, read_timeout)
    finally:
        response.close()
    log.log(
        logging.INFO if status >= 400 else logging.DEBUG,
        "salesforce %s %s%s -> %s in %d ms",
        method,
        host,
        urlsplit(url).path[:200],
        status,
        (time.monotonic() - started) * 1000,
    )
    return Answer(status=status, headers=dict(response.headers), body=body, host=host)


def _read(response: requests.Response, host: str, what: str, started: float, read_timeout: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = response.raw.read(CHUNK, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY:
                raise SalesforceError(
                    response.status_code,
                    "TOO_LARGE",
                    f"The answer from {host} to {what} is larger than {_size(MAX_BODY)}; ask for fewer "
                    "fields or records per page.",
                )
            if time.monotonic() - started > MAX_SECONDS:
                raise SalesforceUnavailable(
                    f"{host} took over {MAX_SECONDS} s to send its answer to {what}. Try again later.",
                    response.status_code,
                )
    except urllib3.exceptions.ReadTimeoutError:
        raise SalesforceUnavailable(
            f"{host} stopped sending its answer to {what} for {read_timeout:g} s (timeout). Try again later.",
            response.status_code,
        ) from None
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        raise SalesforceUnavailable(
            f"{host} broke off its answer to {what} ({type(exc).__name__}). Try again later.",
            response.status_code,
        ) from None
    return b"".join(chunks)


def error_from(answer: Answer, what: str) -> SalesforceError:
    """The exception for a 4xx/5xx answer: Salesforce's errorCode and message when it sent them."""
    if answer.status >= 500:
        detail = _error_detail(answer)
        suffix = f": {detail[0]} {detail[1]}" if detail else ""
        return SalesforceUnavailable(
            f"Salesforce at {answer.host} had a server error (HTTP {answer.status}{suffix}) answering {what}. "
            "Try again later.",
            answer.status,
        )
    detail = _error_detail(answer)
    if detail is None:
        start = answer.body[:60].decode("utf-8", "replace").strip()
        return SalesforceError(
            answer.status,
            "UNEXPECTED_ANSWER",
            f"{answer.host} answered {what} with something that is not a Salesforce error "
            f"(it starts with {start!r}): check the Salesforce address.",
        )
    return SalesforceError(answer.status, *detail)


def _error_detail(answer: Answer) -> tuple[str, str] | None:
    """(errorCode, message) from ``[{"errorCode", "message"}, ...]`` or ``{"error", "error_description"}``."""
    try:
        data = json.loads(answer.body)
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    codes, messages = [], []
    for item in items:
        if not isinstance(item, dict):
            continue
        code = item.get("errorCode") or item.get("error")
        message = item.get("message") or item.get("error_description")
        if isinstance(code, str) and code not in codes:
            codes.append(code)
        if isinstance(message, str) and message not in messages:
            messages.append(message)
    if not codes and not messages:
        return None
    message = "; ".join(messages) or "no message"
    return (codes[0] if codes else f"HTTP_{answer.status}"), _clip(message, 1000)


def _size(count: int) -> str:
    return f"{count // 2**20} MB" if count >= 2**20 else f"{count} bytes"


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 3] + "..."


# -- the client ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One page of a query: the records (without Salesforce's "attributes"), the query's total size, and
    whether this is the last page."""

    records: list[dict[str, Any]]
    total_size: int
    done: bool


@dataclass(frozen=True)
class ObjectAccess:
    name: str
    label: str
    read: bool
    create: bool
    edit: bool
    delete: bool


def strip_attributes(value: Any) -> Any:
    """``value`` without any "attributes" key, at every depth (parent records, subquery results)."""
    if isinstance(value, dict):
        return {key: strip_attributes(item) for key, item in value.items() if key != "attributes"}
    if isinstance(value, list):
        return [strip_attributes(item) for item in value]
    return value


class SalesforceClient:
    """Calls to one org's REST API with one access token (renewed through ``refresh`` on a 401)."""

    def __init__(
        self,
        instance_url: str,
        access_token: str,
        *,
        refresh: Callable[[str], str] | None = None,
        timeout: Timeout = (5, 30),
        api_version: str = API_VERSION,
        session: requests.Session | None = None,
    ) -> None:
        if not re.fullmatch(r"v\d{2,3}\.\d", api_version):
            raise ValueError(f"{api_version!r} is not a Salesforce API version (like {API_VERSION}).")
        self.instance_url = instance_url.rstrip("/")
        self.access_token = access_token
        self.refresh = refresh
        self.timeout = timeout
        self.api_version = api_version
        self._own_session = session is None
        self.session = session or new_session()

    def __repr__(self) -> str:
        return (
            f"SalesforceClient({self.instance_url!r}, access_token='****', api_version={self.api_version!r})"
        )

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> SalesforceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --

    def _path(self, rest: str) -> str:
        return f"/services/data/{self.api_version}/{rest}"

    def _send(self, method: str, path: str, what: str, **kwargs: Any) -> Answer:
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        headers["Authorization"] = f"Bearer {self.access_token}"
        return fetch(
            self.session,
            method,
            self.instance_url + path,
            timeout=self.timeout,
            headers=headers,
            what=what,
            **kwargs,
        )

    def request(self, method: str, path: str, *, what: str = "the request", **kwargs: Any) -> Answer:
        """Send ``method path`` (a path under the instance URL); on a 401 renew the token through
        ``refresh`` and send once more. Returns a 2xx answer; raises for anything else."""
        answer = self._send(method, path, what, **kwargs)
        if answer.status == 401:
            failed = self.access_token
            if self.refresh is None:
                raise self._expired(answer, "Reconnect Salesforce to get a new one.")
            token = self.refresh(failed)
            if not token or token == failed:
                raise self._expired(answer, "Renewing it gave no new token: reconnect Salesforce.")
            self.access_token = token
            log.info("salesforce access token renewed after a 401; sending %s %s again", method, path[:100])
            answer = self._send(method, path, what, **kwargs)
            if answer.status == 401:
                raise self._expired(answer, "A freshly renewed token was refused too: reconnect Salesforce.")
        if answer.status >= 400:
            raise error_from(answer, what)
        return answer

    def _expired(self, answer: Answer, advice: str) -> SessionExpired:
        code, message = _error_detail(answer) or ("INVALID_SESSION_ID", "Session expired or invalid")
        return SessionExpired(401, code, f"{message.rstrip('.')}. {advice}")

    def _get_json(self, path: str, what: str, **kwargs: Any) -> Any:
        return self.request("GET", path, what=what, **kwargs).json(what)

    # -- the API --

    def describe_global(self) -> list[dict[str, Any]]:
        """Every object the user can see: ``[{"name", "label", "queryable", "createable", ...}]``."""
        data = self._get_json(self._path("sobjects/"), "the object list (describe global)")
        objects = data.get("sobjects") if isinstance(data, dict) else None
        if not isinstance(objects, list):
            raise SalesforceUnavailable(
                f"{host_of(self.instance_url)} answered the object list without a list of sobjects."
            )
        return [item for item in objects if isinstance(item, dict)]

    def describe(self, name: str) -> dict[str, Any]:
        """One object's description: flags and ``fields``. SalesforceError 404 NOT_FOUND when the object
        does not exist or the user can't read it."""
        name = sobject_name(name)
        data = self._get_json(self._path(f"sobjects/{name}/describe"), f"the description of {name}")
        if not isinstance(data, dict):
            raise SalesforceUnavailable(f"{host_of(self.instance_url)} described {name} without an object.")
        return data

    def query(self, soql: str, *, batch_size: int | None = None) -> Iterator[Page]:
        """The pages of a SOQL query, following ``nextRecordsUrl``. ``batch_size`` (200 to 2000) asks for
        that many records per page; Salesforce may send fewer."""
        headers = {}
        if batch_size is not None:
            if (
                isinstance(batch_size, bool)
                or not isinstance(batch_size, int)
                or not 200 <= batch_size <= 2000
            ):
                raise ValueError(f"batch_size must be a whole number from 200 to 2000, not {batch_size!r}.")
            headers["Sforce-Query-Options"] = f"batchSize={batch_size}"
        return self._pages(soql, headers)

    def _pages(self, soql: str, headers: dict[str, str]) -> Iterator[Page]:
        what = "the query"
        answer = self.request("GET", self._path("query"), what=what, params={"q": soql}, headers=headers)
        number = 1
        while True:
            data = answer.json(what)
            records = data.get("records") if isinstance(data, dict) else None
            if not isinstance(records, list) or not isinstance(data.get("done"), bool):
                raise SalesforceUnavailable(
                    f"{answer.host} answered page {number} of the query without records and done."
                )
            page = Page(
                records=strip_attributes(records),
                total_size=int(data.get("totalSize") or 0),
                done=data["done"],
            )
            yield page
            if page.done:
                return
            number += 1
            path = next_records_path(data.get("nextRecordsUrl"))
            what = f"page {number} of the query"
            answer = self.request("GET", path, what=what, headers=headers)

    def query_all(self, soql: str) -> list[dict[str, Any]]:
        """Every record of a query (all pages), without "attributes"."""
        return [record for page in self.query(soql) for record in page.records]

    def update(self, name: str, record_id: str, fields: Mapping[str, Any]) -> None:
        """Set ``fields`` on one record (PATCH). SalesforceError for unknown or read-only fields (400),
        no edit permission (403) or an unknown id (404)."""
        name = sobject_name(name)
        if not isinstance(record_id, str) or not _RECORD_ID.fullmatch(record_id):
            raise ValueError(f"{record_id!r} is not a Salesforce record id (15 or 18 letters and digits).")
        self.request(
            "PATCH",
            self._path(f"sobjects/{name}/{record_id}"),
            what=f"the update of {name} {record_id}",
            json_body=dict(fields),
            headers={"Content-Type": "application/json"},
        )

    def org_name(self) -> str:
        """The connected organization's name."""
        records = self.query_all("SELECT Id, Name FROM Organization")
        if not records or not isinstance(records[0].get("Name"), str):
            raise SalesforceUnavailable(f"{host_of(self.instance_url)} did not say the organization's name.")
        return records[0]["Name"]


def next_records_path(value: object) -> str:
    """A page's ``nextRecordsUrl`` if it is a relative path under /services/data/ on the same instance;
    SalesforceError otherwise (the token must not go anywhere else)."""
    if isinstance(value, str) and _NEXT_PATH.fullmatch(value):
        segments = value.split("/")
        if ".." not in segments and "." not in segments and "" not in segments[1:]:
            return value
    shown = value[:100] if isinstance(value, str) else repr(value)[:100]
    raise SalesforceError(
        200,
        "BAD_NEXT_RECORDS_URL",
        f"The query's next page is at {shown!r}, which is not a path under /services/data/ on this "
        "instance; it was not followed.",
    )


def object_access(
    client: SalesforceClient, names: Iterable[str] = ("Account", "Contact", "Opportunity", "Lead", "Quote")
) -> list[ObjectAccess]:
    """What the connected user may do with each object. ``read`` is False when the object is not in the
    object list or its description answers 404."""
    listed = {item.get("name"): item for item in client.describe_global()}
    out = []
    for name in names:
        item = listed.get(name)
        if item is None:
            out.append(ObjectAccess(name, name, False, False, False, False))
            continue
        try:
            described = client.describe(name)
        except SalesforceError as exc:
            if exc.status != 404:
                raise
            out.append(ObjectAccess(name, str(item.get("label") or name), False, False, False, False))
            continue
        out.append(
            ObjectAccess(
                name=name,
                label=str(described.get("label") or item.get("label") or name),
                read=bool(described.get("queryable", True)),
                create=bool(described.get("createable")),
                edit=bool(described.get("updateable")),
                delete=bool(described.get("deletable")),
            )
        )
    return out
