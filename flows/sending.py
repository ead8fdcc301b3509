"""Send one request for a credential: pin the URL, get the shared token, send, and on a 401 refresh the
token once and send once more (DESIGN.md 6.4 and 6.5).

Re-sending after a 401 is safe even for a create or a publish: Clazar checks the token before it does
anything. Everything else (what the answer means, whether to retry) is ``flows.outcomes.classify``'s job.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

from django.conf import settings

from clazar_dest.clazar import transport
from clazar_dest.clazar.auth import AuthError
from clazar_dest.clazar.spec import RequestSpec
from clazar_dest.clazar.transport import AttemptResult
from flows import tokens

log = logging.getLogger(__name__)

REFRESH_NOTE = (
    "Clazar refused the cached token (HTTP 401); a new one was fetched and the request sent once more."
)
# Token failures that will not pass by themselves: say so instead of retrying for a day.
LASTING_AUTH_KINDS = ("rejected", "redirect")


def send_for_credential(
    spec: RequestSpec,
    credential_id: int,
    *,
    idempotency_key: str | None,
    view: tokens.CredentialView | None = None,
) -> AttemptResult:
    """Send ``spec`` with the credential's token. Never raises for Clazar's answers or network failures;
    when no token can be had, nothing is sent and ``error_kind`` is ``auth_rejected`` (the credential is
    refused: permanent) or ``auth_unavailable`` (try again later). A request to any other origin than the
    credential's API base is never sent (``invalid``): the token must not leave for another host.
    ``view``: a credential view shared by the sends of one deliver run (read once otherwise)."""
    view = view or tokens.CredentialView(credential_id)
    credential = view.row()
    problem = pinned(spec.url, credential.api_base)
    if problem:
        return _not_sent(spec, "invalid", f"Not sent: {problem}")
    session = tokens.session(credential)
    try:
        token = view.token()
    except AuthError as exc:
        return _not_sent(spec, _auth_kind(exc), exc.message)
    result = _send(spec, token, session, idempotency_key)
    if result.status != 401:
        return result

    tokens.invalidate(credential_id, token)
    view.drop()
    log.info(
        "credential %s: 401 from Clazar for %s %s; refreshing the token",
        credential.uuid,
        spec.method,
        result.url,
    )
    try:
        token = view.token()
    except AuthError as exc:
        return replace(_not_sent(spec, _auth_kind(exc), exc.message), refreshed=True, notes=(REFRESH_NOTE,))
    again = _send(spec, token, session, idempotency_key)
    return replace(again, refreshed=True, notes=(*again.notes, REFRESH_NOTE))


def pinned(url: str, api_base: str) -> str | None:
    """Why ``url`` may not be sent with this credential's token, or None when it is on its API base (same
    scheme, host and port) and that base is still an allowed one."""
    allowed = [base.rstrip("/") for base in settings.CLAZAR_API_BASES]
    if api_base.rstrip("/") not in allowed:
        return (
            f"the credential's API base {api_base} is no longer in CLAZAR_API_BASES; "
            "edit the credential or the setting."
        )
    target = _origin(url)
    if target is None or target != _origin(api_base):
        return f"{transport.sanitize_url(url)} is not on the credential's API base {api_base}."
    return None


@functools.lru_cache(maxsize=4096)
def _origin(url: str) -> tuple[str, str | None, int | None] | None:
    """(scheme, host, port) of a URL without userinfo; None for one with userinfo or unreadable (worked
    out once per URL: every send checks its URL)."""
    try:
        parts = urlsplit(url)
        if parts.username or parts.password:
            return None
        return (parts.scheme, parts.hostname, _port(parts.scheme, parts.port))
    except ValueError:
        return None


def _port(scheme: str, port: int | None) -> int | None:
    return port or {"http": 80, "https": 443}.get(scheme)


def _send(
    spec: RequestSpec, token: str, session: transport.Session, idempotency_key: str | None
) -> AttemptResult:
    return transport.send(
        spec,
        token,
        session=session,
        idempotency_key=idempotency_key,
        connect_timeout=settings.CLAZAR_CONNECT_TIMEOUT,
        read_timeout=settings.CLAZAR_READ_TIMEOUT,
        deadline=settings.CLAZAR_DEADLINE,
    )


def _auth_kind(exc: AuthError) -> str:
    return "auth_rejected" if exc.kind in LASTING_AUTH_KINDS else "auth_unavailable"


def _not_sent(spec: RequestSpec, kind: str, message: str) -> AttemptResult:
    return AttemptResult(
        method=spec.method.upper(),
        url=transport.sanitize_url(spec.url),
        status=None,
        headers={},
        body="",
        truncated=False,
        json=None,
        duration_ms=0,
        error_kind=kind,
        error=message,
        request_headers={},
        sent_at=datetime.now(UTC),
    )
