"""Connect a Salesforce org: the OAuth 2.0 web server flow with PKCE (S256), token refresh and revoke, the
identity of the connected user, and checks on the addresses Salesforce hands back. Network code only.

The flow: ``start()`` makes the authorization URL plus the state and code verifier to keep in the user's
session; Salesforce sends the browser back to the callback, where ``read_callback()`` checks the state
and returns the code; ``exchange()`` trades it for ``Tokens``. Check ``Tokens.instance_url`` and
``Tokens.id_url`` with ``check_instance_url()`` / ``check_identity_url()`` before sending a token there.

oauthlib makes the state, the PKCE pair, the authorization URL and the token request bodies, and reads
the token answers; the requests themselves go through ``client.fetch`` (timeouts, no redirects, a size
cap). Tokens, secrets and codes never appear in a message or a log line.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

from oauthlib.common import generate_token
from oauthlib.oauth2 import OAuth2Error, WebApplicationClient

from clazar_dest.salesforce.client import (
    Answer,
    SalesforceUnavailable,
    SessionExpired,
    Timeout,
    error_from,
    fetch,
    new_session,
)

log = logging.getLogger(__name__)

LOGIN_HOSTS = {
    "production": "https://login.salesforce.com",
    "sandbox": "https://test.salesforce.com",
    "developer": "https://login.salesforce.com",
}
SCOPES = ("api", "refresh_token")
SALESFORCE_DOMAINS = ("salesforce.com", "force.com", "cloudforce.com", "database.com", "salesforce-setup.com")
VERIFIER_LENGTH = 64  # RFC 7636 allows 43 to 128 characters

_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
_ID_PATH = re.compile(r"/id/([A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?)/([A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?)/?")
_ERROR_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


# -- errors -------------------------------------------------------------------------------------------


class OAuthError(Exception):
    """Salesforce refused an OAuth request with ``error`` (invalid_client, invalid_grant, ...) and
    ``description``. ``str()`` says what to do about it."""

    def __init__(self, error: str, description: str = "", *, redirect_uri: str | None = None) -> None:
        super().__init__(error, description)
        self.error = error
        self.description = description
        self.redirect_uri = redirect_uri

    def __str__(self) -> str:
        return _explain(self.error, self.description, self.redirect_uri)


class InvalidGrant(OAuthError):
    """invalid_grant: the code, the code verifier or the refresh token is no longer (or never was) good."""


class CallbackError(Exception):
    """The browser came back from Salesforce without a usable code. ``kind``: missing_state,
    state_mismatch, missing_code, or the ``error`` Salesforce sent (access_denied, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


def _explain(error: str, description: str, redirect_uri: str | None) -> str:
    said = f" (Salesforce said: {description})" if description else ""
    lowered = description.lower()
    if error == "invalid_client":
        return (
            "Salesforce rejected the consumer key or secret: check the connected app settings and copy "
            f"both again from Manage Consumer Details{said}."
        )
    if error == "invalid_client_id":
        return (
            "Salesforce does not know this consumer key: check the connected app settings and copy it again. "
            f"A new connected app can take up to 10 minutes to start working{said}."
        )
    if error == "redirect_uri_mismatch":
        where = redirect_uri or "the callback URL of this app"
        return (
            f"Salesforce refused the callback URL {where}: add exactly this URL to the connected app's "
            f"Callback URL list, save, wait a few minutes and connect again{said}."
        )
    if error == "invalid_grant":
        if "verifier" in lowered:
            advice = (
                "Salesforce could not verify this sign-in (the PKCE code verifier did not match): start "
                "connecting again"
            )
        elif "refresh" in lowered or "expired access" in lowered:
            advice = (
                "Salesforce no longer accepts the refresh token (it was revoked, expired or replaced by a "
                "newer one): reconnect Salesforce"
            )
        elif "code" in lowered:
            advice = "The authorization code is invalid, expired or already used: start connecting again"
        elif "ip restricted" in lowered:
            advice = (
                "Salesforce refused this server's IP address: relax the connected app's IP restrictions or "
                "allow this server's address"
            )
        else:
            advice = "Salesforce refused the grant: reconnect Salesforce"
        return f"{advice}{said}."
    if error == "invalid_scope":
        return (
            "The connected app does not allow the access this app asks for: add the OAuth scopes 'Manage "
            "user data via APIs (api)' and 'Perform requests at any time (refresh_token, offline_access)'"
            f"{said}."
        )
    if error in ("inactive_user", "inactive_org"):
        who = "user" if error == "inactive_user" else "organization"
        return f"The Salesforce {who} is inactive or locked: ask your Salesforce admin{said}."
    if error == "rate_limit_exceeded":
        return f"Salesforce is limiting sign-in requests: wait a few minutes and try again{said}."
    if error == "unsupported_token_type":
        return f"Salesforce does not know this token (it may already be revoked){said}."
    return f"Salesforce refused the request with {error}{said}."


def _oauth_error(answer: Answer, what: str, secrets: Iterable[str | None], **extra: str | None) -> Exception:
    """OAuthError (InvalidGrant) for an ``{"error", "error_description"}`` answer, else client's errors."""
    try:
        data = json.loads(answer.body)
    except ValueError:
        data = None
    if answer.status >= 500 or not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return error_from(answer, what)
    error = data["error"] if _ERROR_NAME.fullmatch(data["error"]) else "unknown_error"
    description = _scrub(str(data.get("error_description") or ""), secrets)[:300]
    log.info("salesforce: %s at %s was refused: %s (%s)", what, answer.host, error, description)
    kind = InvalidGrant if error == "invalid_grant" else OAuthError
    return kind(error, description, **extra)


def _scrub(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "****")
    return text


# -- where to sign in, and what Salesforce may send back ----------------------------------------------


def login_base(environment: str, simulator_url: str | None = None) -> str:
    """The login host for ``environment`` (production, sandbox, developer); a simulator URL wins."""
    if simulator_url:
        return simulator_url.rstrip("/")
    try:
        return LOGIN_HOSTS[environment]
    except KeyError:
        raise ValueError(
            f"{environment!r} is not a Salesforce environment: use production, sandbox or developer."
        ) from None


def check_instance_url(url: str, extra_origins: Iterable[str] = ()) -> str:
    """The origin (``https://acme.my.salesforce.com``) if ``url`` is a Salesforce instance address or
    exactly one of ``extra_origins`` (a simulator); ValueError saying what is wrong otherwise."""
    origin, path = _origin(url, "instance URL", extra_origins)
    if path not in ("", "/"):
        raise ValueError(f"The instance URL {_show(url)} has a path; Salesforce sends a bare address.")
    return origin


def check_identity_url(url: str, extra_origins: Iterable[str] = ()) -> str:
    """``url`` (normalized) if it is a Salesforce identity URL, ``https://login.salesforce.com/id/<org
    id>/<user id>``, on a Salesforce host or one of ``extra_origins``; ValueError otherwise."""
    origin, path = _origin(url, "identity URL", extra_origins)
    if not _ID_PATH.fullmatch(path):
        raise ValueError(f"The identity URL {_show(url)} does not look like /id/<organization id>/<user id>.")
    return origin + path


def _origin(url: str, what: str, extra_origins: Iterable[str]) -> tuple[str, str]:
    """(normalized origin, path) of an allowed address; ValueError otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"Salesforce sent no {what}.")

    def refuse(reason: str) -> ValueError:
        return ValueError(
            f"The {what} {_show(url)} is not a Salesforce address: {reason}. Expected an https address on a "
            "Salesforce domain, like https://acme.my.salesforce.com."
        )

    if "\\" in url or not url.isprintable() or any(char.isspace() for char in url):
        raise refuse("it contains a backslash, a space or a control character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refuse("it can't be parsed") from None
    if "?" in url or "#" in url:
        raise refuse("it has a query or a fragment")
    if "@" in parts.netloc:
        raise refuse("it has a user name in it")
    scheme, netloc, host = parts.scheme.lower(), parts.netloc.lower(), parts.hostname or ""
    origin = f"{scheme}://{netloc}"
    if origin in {_normal_origin(extra) for extra in extra_origins}:
        return origin, parts.path
    if scheme != "https":
        raise refuse("it does not use https")
    if port not in (None, 443):
        raise refuse(f"it names port {port}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise refuse("it is a numeric IP address")
    if not _HOST.fullmatch(host) or not any(host == d or host.endswith("." + d) for d in SALESFORCE_DOMAINS):
        raise refuse(f"{host or 'the host'} is not on a Salesforce domain")
    return f"https://{host}", parts.path


def _normal_origin(url: str) -> str:
    parts = urlsplit(url.strip().rstrip("/"))
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# -- the web server flow ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authorization:
    """Where to send the browser, and what to keep in the user's session until the callback."""

    url: str
    state: str = field(repr=False)
    code_verifier: str = field(repr=False)


@dataclass(frozen=True)
class Tokens:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    instance_url: str
    id_url: str
    scope: str
    issued_at: datetime | None


@dataclass(frozen=True)
class Identity:
    org_id: str
    user_id: str
    username: str
    display_name: str
    email: str


def start(consumer_key: str, redirect_uri: str, login_base: str) -> Authorization:
    """The authorization URL (response_type=code, scope "api refresh_token", a fresh state and an S256
    code challenge) and the state and code verifier to keep for ``read_callback``/``exchange``."""
    if not login_base.startswith(("https://", "http://")):
        raise ValueError(f"The login address {_show(login_base)} must start with https://.")
    client = WebApplicationClient(consumer_key)
    verifier = client.create_code_verifier(VERIFIER_LENGTH)
    state = generate_token()
    url = f"{login_base.rstrip('/')}/services/oauth2/authorize"
    # oauthlib refuses to build an http URL; the only http login base is a simulator on this machine,
    # so build it as https and put the scheme back.
    plain = url.startswith("http://")
    built = client.prepare_request_uri(
        "https://" + url.removeprefix("http://") if plain else url,
        redirect_uri=redirect_uri,
        scope=list(SCOPES),
        state=state,
        code_challenge=client.create_code_challenge(verifier, "S256"),
        code_challenge_method="S256",
    )
    if plain:
        built = "http://" + built.removeprefix("https://")
    return Authorization(url=built, state=state, code_verifier=verifier)


def read_callback(params: Mapping[str, str], expected_state: str | None) -> str:
    """The authorization code from the callback's query parameters, once the state matches the one kept
    in the session. CallbackError otherwise."""
    if not expected_state:
        raise CallbackError(
            "missing_state",
            "This Salesforce sign-in was not started from this browser session, or the session expired: "
            "start connecting again.",
        )
    state = params.get("state") or ""
    if not hmac.compare_digest(state.encode(), expected_state.encode()):
        raise CallbackError(
            "state_mismatch",
            "The answer from Salesforce does not belong to the sign-in started here (the state does not "
            "match): start connecting again.",
        )
    error = params.get("error")
    if error:
        kind = error if _ERROR_NAME.fullmatch(error) else "error"
        description = (params.get("error_description") or "").strip()[:300]
        said = f" (Salesforce said: {description})" if description else ""
        if kind == "access_denied":
            message = (
                "You (or the Salesforce user) chose Deny on the Salesforce consent page, so nothing was "
                f"connected{said}. Connect again and choose Allow."
            )
        else:
            message = f"Salesforce did not authorize the connection: {kind}{said}. Start connecting again."
        raise CallbackError(kind, message)
    code = params.get("code")
    if not code:
        raise CallbackError(
            "missing_code", "Salesforce came back without an authorization code: start connecting again."
        )
    return code


def exchange(
    login_base: str,
    consumer_key: str,
    consumer_secret: str,
    redirect_uri: str,
    code: str,
    code_verifier: str,
    *,
    timeout: Timeout = (5, 30),
) -> Tokens:
    """Trade the authorization code for tokens. OAuthError (InvalidGrant for a bad code or verifier) when
    Salesforce refuses, SalesforceUnavailable when it can't be reached."""
    client = WebApplicationClient(consumer_key)
    body = client.prepare_request_body(
        code=code,
        redirect_uri=redirect_uri,
        code_verifier=code_verifier,
        include_client_id=True,
        client_secret=consumer_secret,
    )
    secrets = (consumer_secret, code, code_verifier)
    return _token_request(
        client, login_base, body, "the code exchange", secrets, timeout, redirect_uri=redirect_uri
    )


def refresh(
    login_base: str,
    consumer_key: str,
    consumer_secret: str,
    refresh_token: str,
    *,
    timeout: Timeout = (5, 30),
) -> Tokens:
    """A new access token. ``Tokens.refresh_token`` is the new refresh token when Salesforce rotated it
    (the old one then stops working), else None. InvalidGrant when the refresh token is no longer good."""
    client = WebApplicationClient(consumer_key)
    body = client.prepare_refresh_body(
        refresh_token=refresh_token, client_id=consumer_key, client_secret=consumer_secret
    )
    tokens = _token_request(
        client, login_base, body, "the token refresh", (consumer_secret, refresh_token), timeout
    )
    if tokens.refresh_token == refresh_token:
        tokens = replace(tokens, refresh_token=None)
    return tokens


def revoke(login_base: str, token: str, *, timeout: Timeout = (5, 30)) -> None:
    """Revoke an access or refresh token (and with it the whole grant). OAuthError when Salesforce does
    not know the token (unsupported_token_type)."""
    with new_session() as session:
        answer = fetch(
            session,
            "POST",
            f"{login_base.rstrip('/')}/services/oauth2/revoke",
            timeout=timeout,
            data={"token": token},
            headers={"Accept": "application/json"},
            what="the token revocation",
        )
    if answer.status != 200:
        raise _oauth_error(answer, "the token revocation", (token,))


def identity(id_url: str, access_token: str, *, timeout: Timeout = (5, 30)) -> Identity:
    """Who connected: the organization and user behind ``access_token`` (from the identity URL that came
    with it). SessionExpired when the token is refused."""
    what = "the identity request"
    with new_session() as session:
        answer = fetch(
            session,
            "GET",
            id_url,
            timeout=timeout,
            headers={"Accept": "application/json", "Authorization": f"Bearer {access_token}"},
            what=what,
        )
    if answer.status in (401, 403):
        raise SessionExpired(
            answer.status,
            "INVALID_SESSION_ID",
            "Salesforce did not accept the access token for the identity request: connect again.",
        )
    if answer.status != 200:
        raise error_from(answer, what)
    data = answer.json(what)
    values = {}
    if isinstance(data, dict):
        values = {
            "org_id": data.get("organization_id"),
            "user_id": data.get("user_id"),
            "username": data.get("username"),
            "display_name": data.get("display_name") or data.get("username"),
            "email": data.get("email") or "",
        }
    missing = [name for name in ("org_id", "user_id", "username") if not isinstance(values.get(name), str)]
    if missing or not isinstance(values["display_name"], str) or not isinstance(values["email"], str):
        raise SalesforceUnavailable(
            f"{answer.host} answered the identity request without {', '.join(missing) or 'a name'}."
        )
    return Identity(**values)


def _token_request(
    client: WebApplicationClient,
    login_base: str,
    body: str,
    what: str,
    secrets: tuple[str, ...],
    timeout: Timeout,
    **extra: str | None,
) -> Tokens:
    with new_session() as session:
        answer = fetch(
            session,
            "POST",
            f"{login_base.rstrip('/')}/services/oauth2/token",
            timeout=timeout,
            data=body,
            headers={"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"},
            what=what,
        )
    if answer.status != 200:
        raise _oauth_error(answer, what, secrets, **extra)
    data = answer.json(what)
    try:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        client.parse_request_body_response(answer.body.decode("utf-8"))
    except (OAuth2Error, ValueError, Warning):
        raise SalesforceUnavailable(f"{answer.host} answered {what} without an access token.") from None
    fields = {name: data.get(name) for name in ("access_token", "instance_url", "id")}
    missing = [name for name, value in fields.items() if not isinstance(value, str) or not value]
    if missing:
        raise SalesforceUnavailable(f"{answer.host} answered {what} without {', '.join(missing)}.")
    rotated = data.get("refresh_token")
    log.info("salesforce: %s at %s succeeded", what, answer.host)
    return Tokens(
        access_token=data["access_token"],
        refresh_token=rotated if isinstance(rotated, str) and rotated else None,
        instance_url=data["instance_url"],
        id_url=data["id"],
        scope=str(data.get("scope") or ""),
        issued_at=_issued_at(data.get("issued_at")),
    )


def _issued_at(value: object) -> datetime | None:
    """Salesforce's issued_at: milliseconds since the epoch, as a string."""
    try:
        return datetime.fromtimestamp(int(str(value)) / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
