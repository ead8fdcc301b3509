"""The OAuth 2.0 web server flow of the Salesforce simulator: the consent page and its decision, codes bound
to client, redirect URI and PKCE challenge, tokens (refresh with rotation), revoke, identity and userinfo.

`OAuth` holds the route handlers; `Api` (`clazar_dest.simulators.salesforce_core`) mixes it in and owns the
state they use. Stdlib only.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import html
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from clazar_dest.simulators.salesforce_http import NOT_FOUND, Reply, Request, oauth_error

SCOPES = {
    "api": "Access and manage your data (api)",
    "refresh_token": "Perform requests on your behalf at any time (refresh_token, offline_access)",
    "offline_access": "Perform requests on your behalf at any time (refresh_token, offline_access)",
    "id": "Access your basic information (id, profile, email, address, phone)",
    "profile": "Access your basic information (id, profile, email, address, phone)",
    "email": "Access your basic information (id, profile, email, address, phone)",
    "address": "Access your basic information (id, profile, email, address, phone)",
    "phone": "Access your basic information (id, profile, email, address, phone)",
    "openid": "Access unique user identifiers (openid)",
    "full": "Full access (full)",
    "web": "Provide access to your data via the Web (web)",
    "chatter_api": "Access Connect REST API resources (chatter_api)",
    "custom_permissions": "Access custom permissions (custom_permissions)",
}
DEFAULT_SCOPE = "api refresh_token"
CODE_TTL = 15 * 60


@dataclass
class Grant:
    client_id: str
    scope: str
    refresh: str | None = None
    access: set[str] = field(default_factory=set)


class OAuth:
    """The OAuth and identity routes, mixed into `Api`: they use its lock, settings (`config`,
    `settings()`) and token state (`pending`, `codes`, `grants`, `access`, `refresh`, `grant_seq`)."""

    lock: threading.RLock
    config: dict[str, Any]
    pending: dict[str, dict[str, Any]]
    codes: dict[str, dict[str, Any]]
    grants: dict[int, Grant]
    access: dict[str, tuple[int, float]]
    refresh: dict[str, int]
    grant_seq: int

    def _authorize(self, req: Request) -> Reply:
        q = req.query
        with self.lock:
            config = copy.deepcopy(self.config)
        if q.get("client_id") != config["consumer_key"]:
            return _error_page("invalid_client_id", "client identifier invalid")
        redirect_uri = q.get("redirect_uri", "")
        if not redirect_uri or (config["callback_urls"] and redirect_uri not in config["callback_urls"]):
            return _error_page("redirect_uri_mismatch", "redirect_uri must match configuration")
        state = q.get("state")
        if q.get("response_type") != "code":
            return _redirect(redirect_uri, "unsupported_response_type", "response type not supported", state)
        challenge = q.get("code_challenge") or None
        if challenge and (q.get("code_challenge_method") or "S256") != "S256":
            return _redirect(redirect_uri, "invalid_request", "code_challenge_method must be S256", state)
        scopes = list(dict.fromkeys((q.get("scope") or DEFAULT_SCOPE).split()))
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown:
            return _redirect(
                redirect_uri, "invalid_scope", f"the requested scope is not allowed: {unknown[0]}", state
            )
        request_id = secrets.token_urlsafe(24)
        with self.lock:
            self.pending[request_id] = {
                "client_id": config["consumer_key"],
                "redirect_uri": redirect_uri,
                "state": state,
                "scope": " ".join(scopes),
                "challenge": challenge,
                "expires": time.monotonic() + CODE_TTL,
            }
        return Reply(
            200,
            raw=_consent_page(config, scopes, request_id).encode(),
            content_type="text/html; charset=utf-8",
        )

    def _decide(self, req: Request) -> Reply:
        form = req.form()
        with self.lock:
            asked = self.pending.pop(form.get("request", ""), None)
        if asked is None or asked["expires"] < time.monotonic():
            return _error_page("invalid_request", "the authorization request expired or was already answered")
        decision = form.get("decision")
        if decision == "deny":
            return _redirect(
                asked["redirect_uri"], "access_denied", "end-user denied authorization", asked["state"]
            )
        if decision != "allow":
            return _error_page("invalid_request", "decision must be allow or deny")
        code = "aPrx" + secrets.token_urlsafe(48) + "=="
        with self.lock:
            self.codes[code] = {**asked, "expires": time.monotonic() + CODE_TTL}
        params = {"code": code, **({"state": asked["state"]} if asked["state"] is not None else {})}
        return Reply(302, headers={"Location": _with_query(asked["redirect_uri"], params)})

    def _client(self, req: Request, form: dict[str, str]) -> tuple[str, str]:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        scheme, _, encoded = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic" and encoded:
            try:
                user, _, password = base64.b64decode(encoded.strip()).decode("utf-8").partition(":")
                client_id, secret = unquote(user), unquote(password)
            except (ValueError, UnicodeDecodeError):
                pass
        return client_id, secret

    def _token(self, req: Request) -> Reply:
        form = req.form()
        grant_type = form.get("grant_type", "")
        if grant_type not in ("authorization_code", "refresh_token"):
            return oauth_error("unsupported_grant_type", "grant type not supported")
        client_id, secret = self._client(req, form)
        with self.lock:
            good = client_id == self.config["consumer_key"] and hmac.compare_digest(
                secret.encode(), self.config["consumer_secret"].encode()
            )
            if not good:
                return oauth_error("invalid_client", "invalid client credentials")
            if grant_type == "refresh_token":
                return self._refresh(req, form, client_id)
            code = self.codes.pop(form.get("code", ""), None)  # single use, whatever happens next
            if code is None or code["expires"] < time.monotonic() or code["client_id"] != client_id:
                return oauth_error("invalid_grant", "invalid authorization code")
            if form.get("redirect_uri") != code["redirect_uri"]:
                return oauth_error("redirect_uri_mismatch", "redirect_uri must match configuration")
            if code["challenge"]:
                verifier = form.get("code_verifier", "")
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
                if not verifier or not hmac.compare_digest(digest, code["challenge"].encode()):
                    return oauth_error("invalid_grant", "invalid code verifier")
            return Reply(200, self._issue(req.base_url, client_id, code["scope"]))

    def _refresh(self, req: Request, form: dict[str, str], client_id: str) -> Reply:
        old = form.get("refresh_token", "")
        grant_id = self.refresh.get(old)
        grant = self.grants.get(grant_id) if grant_id is not None else None
        if grant is None or grant.client_id != client_id:
            return oauth_error("invalid_grant", "expired access/refresh token")
        rotate = self.config["rotate_refresh_tokens"]
        if rotate:
            del self.refresh[old]
        answer = self._issue(req.base_url, client_id, grant.scope, grant_id=grant_id, new_refresh=rotate)
        return Reply(200, answer)

    def _issue(
        self,
        base_url: str,
        client_id: str,
        scope: str,
        *,
        grant_id: int | None = None,
        new_refresh: bool = True,
    ) -> dict[str, Any]:
        """Mint tokens (for a new grant, or on an existing one) and build the token response."""
        if grant_id is None:
            self.grant_seq += 1
            grant_id = self.grant_seq
            self.grants[grant_id] = Grant(client_id, scope)
        grant = self.grants[grant_id]
        org, user = self.config["org_id"], self.config["user_id"]
        access = f"{org[:15]}!{secrets.token_urlsafe(72)}"
        self.access[access] = (grant_id, time.monotonic())
        grant.access.add(access)
        issued = str(time.time_ns() // 1_000_000)
        id_url = f"{base_url}/id/{org}/{user}"
        secret = self.config["consumer_secret"].encode()
        signature = base64.b64encode(hmac.new(secret, (id_url + issued).encode(), hashlib.sha256).digest())
        answer: dict[str, Any] = {"access_token": access}
        if new_refresh and set(scope.split()) & {"refresh_token", "offline_access"}:
            grant.refresh = "5Aep861" + secrets.token_urlsafe(64)
            self.refresh[grant.refresh] = grant_id
            answer["refresh_token"] = grant.refresh
        answer.update(
            {
                "signature": signature.decode(),
                "scope": scope,
                "instance_url": self.config["tamper_instance_url"] or base_url,
                "id": id_url,
                "token_type": "Bearer",
                "issued_at": issued,
            }
        )
        return answer

    def _revoke(self, req: Request) -> Reply:
        token = req.form().get("token", "")
        with self.lock:
            grant_id = self.refresh.get(token)
            if grant_id is None and token in self.access:
                grant_id = self.access[token][0]
            grant = self.grants.pop(grant_id, None) if grant_id is not None else None
            if grant is None:
                return oauth_error("unsupported_token_type", "this token type is not supported")
            for access in grant.access:
                self.access.pop(access, None)
            self.refresh = {t: g for t, g in self.refresh.items() if g != grant_id}
        return Reply(200, content_type="text/plain")

    def _user_doc(self, base: str) -> dict[str, Any]:
        c = self.settings()
        org, user, version = c["org_id"], c["user_id"], "{version}"
        first, _, last = c["display_name"].rpartition(" ")
        rest = f"{base}/services/data/v{version}"
        return {
            "id": f"{base}/id/{org}/{user}",
            "user_id": user,
            "organization_id": org,
            "username": c["username"],
            "nick_name": c["username"].split("@")[0],
            "display_name": c["display_name"],
            "email": c["username"],
            "email_verified": True,
            "first_name": first or None,
            "last_name": last,
            "timezone": "Etc/UTC",
            "photos": {"picture": f"{base}/profilephoto/005/F", "thumbnail": f"{base}/profilephoto/005/T"},
            "active": True,
            "user_type": "STANDARD",
            "language": "en_US",
            "locale": "en_US",
            "utcOffset": 0,
            "urls": {
                "enterprise": f"{base}/services/Soap/c/{version}/{org[:15]}",
                "metadata": f"{base}/services/Soap/m/{version}/{org[:15]}",
                "partner": f"{base}/services/Soap/u/{version}/{org[:15]}",
                "rest": f"{rest}/",
                "sobjects": f"{rest}/sobjects/",
                "search": f"{rest}/search/",
                "query": f"{rest}/query/",
                "recent": f"{rest}/recent/",
                "profile": f"{base}/{user}",
                "custom_domain": base,
            },
        }

    def _identity_doc(self, req: Request, org: str, user: str) -> Reply:
        doc = self._user_doc(req.base_url)
        if org[:15] != doc["organization_id"][:15] or user[:15] != doc["user_id"][:15]:
            return Reply(404, copy.deepcopy(NOT_FOUND))
        return Reply(200, {"id": doc.pop("id"), "asserted_user": True, **doc, "is_app_installed": True})

    def _userinfo(self, req: Request) -> Reply:
        doc = self._user_doc(req.base_url)
        return Reply(
            200,
            {
                "sub": doc["id"],
                "user_id": doc["user_id"],
                "organization_id": doc["organization_id"],
                "preferred_username": doc["username"],
                "nickname": doc["nick_name"],
                "name": doc["display_name"],
                "email": doc["email"],
                "email_verified": True,
                "given_name": doc["first_name"],
                "family_name": doc["last_name"],
                "zoneinfo": doc["timezone"],
                "photos": doc["photos"],
                "profile": doc["urls"]["profile"],
                "active": True,
                "user_type": "STANDARD",
                "language": "en_US",
                "locale": "en_US",
                "utcOffset": 0,
                "urls": doc["urls"],
            },
        )


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _redirect(redirect_uri: str, error: str, description: str, state: str | None) -> Reply:
    params = {"error": error, "error_description": description}
    if state is not None:
        params["state"] = state
    return Reply(302, headers={"Location": _with_query(redirect_uri, params)})


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} | Salesforce (simulator)</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f3f3f3; margin: 0; }}
main {{ max-width: 28rem; margin: 4rem auto; background: #fff; padding: 2rem; border-radius: 8px;
  box-shadow: 0 1px 4px rgba(0, 0, 0, .15); }}
h1 {{ font-size: 1.4rem; margin-top: 0; }}
ul {{ padding-left: 1.2rem; }}
.who {{ color: #444; font-size: .9rem; }}
.actions {{ display: flex; gap: .75rem; justify-content: flex-end; margin-top: 1.5rem; }}
button {{ font-size: 1rem; padding: .5rem 1.25rem; border-radius: 4px; border: 1px solid #0176d3;
  cursor: pointer; background: #fff; color: #0176d3; }}
button[value=allow] {{ background: #0176d3; color: #fff; }}
</style>
</head>
<body>
<main>
{content}
</main>
</body>
</html>
"""


def _consent_page(config: dict[str, Any], scopes: list[str], request_id: str) -> str:
    e = html.escape
    asked = "".join(f"<li>{e(text)}</li>\n" for text in dict.fromkeys(SCOPES[s] for s in scopes))
    content = f"""<h1>Allow access?</h1>
<p class="who">Logged in as <strong>{e(config["display_name"])}</strong> ({e(config["username"])})
in the org <strong>{e(config["org_name"])}</strong>.</p>
<p><strong>{e(config["app_name"])}</strong> is asking to:</p>
<ul class="scopes">
{asked}</ul>
<p>Do you want to allow access for {e(config["username"])}?</p>
<form method="post" action="/services/oauth2/authorize/decision">
<input type="hidden" name="request" value="{e(request_id)}">
<div class="actions">
<button type="submit" name="decision" value="deny">Deny</button>
<button type="submit" name="decision" value="allow">Allow</button>
</div>
</form>"""
    return _PAGE.format(title="Allow access?", content=content)


def _error_page(error: str, description: str) -> Reply:
    shown = urlencode({"error": error, "error_description": description}, quote_via=quote)
    content = f"<h1>Remote Access Error</h1>\n<p>There was a problem in setting up your remote access.</p>\n<p><code>{html.escape(shown)}</code></p>"
    page = _PAGE.format(title="Remote Access Error", content=content)
    return Reply(400, raw=page.encode(), content_type="text/html; charset=utf-8")
