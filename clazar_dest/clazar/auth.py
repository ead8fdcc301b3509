"""Fetch a Clazar access token (OAuth2 client credentials over JSON). Pure network code: no ORM.

``POST {api_base}/authenticate/`` with ``{"client_id", "client_secret"}`` answers
``{"access_token", "token_type": "bearer", "expires_in"}``. Every failure becomes an ``AuthError`` whose
message says what happened and what to do, and never contains the secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Token:
    access_token: str
    expires_in: int
    token_type: str = "bearer"

    def __repr__(self) -> str:
        return f"Token(access_token='****', expires_in={self.expires_in})"


class AuthError(Exception):
    """kind: rejected | unreachable | timeout | server_error | bad_response | redirect."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


def _host(api_base: str) -> str:
    parts = urlsplit(api_base)
    return parts.netloc or api_base


def _detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        for key in ("detail", "error_description", "error", "message"):
            if isinstance(data.get(key), str):
                return data[key]
    return json.dumps(data)[:200]


def _read_capped(response: requests.Response) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(8192):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            break
    return b"".join(chunks)[:MAX_BODY]


def fetch_token(
    api_base: str,
    client_id: str,
    client_secret: str,
    *,
    session: requests.Session | None = None,
    connect_timeout: float = 5,
    read_timeout: float = 15,
) -> Token:
    host = _host(api_base)
    url = api_base.rstrip("/") + "/authenticate/"
    http = session or requests
    try:
        response = http.post(
            url,
            json={"client_id": client_id, "client_secret": client_secret},
            headers={"Accept": "application/json"},
            timeout=(connect_timeout, read_timeout),
            allow_redirects=False,
            stream=True,
        )
    except requests.exceptions.ConnectTimeout:
        raise AuthError("timeout", f"Timed out connecting to {host} after {connect_timeout:g} s.") from None
    except requests.exceptions.ReadTimeout:
        raise AuthError(
            "timeout", f"{host} accepted the connection but did not answer within {read_timeout:g} s."
        ) from None
    except requests.exceptions.SSLError:
        raise AuthError("unreachable", f"The TLS handshake with {host} failed: check the API base.") from None
    except requests.exceptions.ConnectionError as exc:
        reason = "connection refused" if "refused" in str(exc).lower() else "no connection could be made"
        raise AuthError(
            "unreachable", f"Could not reach {host} ({reason}). Check the API base and the network."
        ) from None
    except requests.exceptions.RequestException as exc:
        raise AuthError("unreachable", f"The request to {host} failed: {type(exc).__name__}.") from None
    try:
        body = _read_capped(response)
    except requests.exceptions.RequestException:
        raise AuthError("bad_response", f"{host} closed the connection while answering. Try again.") from None
    finally:
        response.close()
    status = response.status_code
    if 300 <= status < 400:
        where = response.headers.get("Location", "another address")
        raise AuthError(
            "redirect",
            f"{host} answered HTTP {status} redirecting to {where}; redirects are not followed. Check the API base.",
            status,
        )
    if status in (400, 401, 403):
        raise AuthError(
            "rejected",
            f"Clazar rejected the client ID or secret (HTTP {status}: {_detail(body) or 'no detail'}). "
            "Check both values against your Clazar API credentials.",
            status,
        )
    if status >= 500:
        raise AuthError(
            "server_error", f"{host} had a server error (HTTP {status}). Try again later.", status
        )
    if status != 200:
        raise AuthError(
            "bad_response", f"{host} answered HTTP {status}: {_detail(body) or 'no detail'}.", status
        )
    try:
        data = json.loads(body)
        token = data["access_token"]
        expires_in = int(data["expires_in"])
    except (ValueError, KeyError, TypeError):
        raise AuthError(
            "bad_response",
            f"{host} answered 200 but not with a token (expected access_token and expires_in).",
            status,
        ) from None
    if not isinstance(token, str) or not token or expires_in <= 0:
        raise AuthError("bad_response", f"{host} answered with an empty or already expired token.", status)
    return Token(access_token=token, expires_in=expires_in, token_type=str(data.get("token_type", "bearer")))
