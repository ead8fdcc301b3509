"""The one connected Salesforce org (DESIGN.md sections 4 and 9).

- ``begin`` starts the OAuth 2.0 web server flow: a single-use ``state`` and a PKCE verifier are kept in
  the session, with the exact redirect URI; ``finish`` (the callback) pops them whatever happens, so a
  replayed or forged callback finds nothing to match.
- A callback for the org already connected refreshes its tokens and keeps every Salesforce Nexset's
  settings. A callback for a *different* org parks the new tokens (encrypted) in ``SalesforcePending``
  until an Admin confirms the switch, which clears the Salesforce Nexsets' settings and mappings.
- ``disconnect`` revokes the refresh token at Salesforce and deletes the row even when the revoke fails.
- ``client()`` gives a REST client whose 401s refresh the access token once for every worker at a time:
  a row lock on PostgreSQL, a file lock on SQLite (see flows/locks.py). Salesforce may rotate the refresh
  token, so the refresh that won the lock stores the new one and the others reuse its access token.
  ``invalid_grant`` marks the connection broken (pulls pause; settings stay) until an Admin reconnects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection as db
from django.db import models, transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from clazar_dest.salesforce import oauth
from clazar_dest.salesforce.client import SalesforceClient, SalesforceError, SalesforceUnavailable
from clazar_dest.salesforce.oauth import CallbackError, InvalidGrant, OAuthError
from flows import audit
from flows.locks import file_lock
from flows.models import Nexset, SalesforceApp, SalesforceConnection, SalesforcePending

log = logging.getLogger(__name__)

SESSION_KEY = "salesforce_oauth"
FLOW_TTL = timedelta(minutes=15)
PENDING_TTL = timedelta(minutes=15)

Row = TypeVar("Row", bound=models.Model)


class NotConnected(Exception):
    """No usable Salesforce connection (none, or broken). ``str()`` says what to do."""


class ConnectError(Exception):
    """The callback could not connect; nothing was stored. ``kind`` names the reason for tests/logs."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Connected:
    kind: str  # "connected" | "reconnected" | "pending_switch"
    org: str
    username: str


def timeout() -> tuple[int, int]:
    return (settings.SALESFORCE_CONNECT_TIMEOUT, settings.SALESFORCE_READ_TIMEOUT)


def extra_origins() -> tuple[str, ...]:
    sim = settings.SALESFORCE_SIMULATOR_URL
    return (sim,) if sim else ()


def login_base(environment: str) -> str:
    return oauth.login_base(environment, settings.SALESFORCE_SIMULATOR_URL or None)


def callback_url(request: HttpRequest) -> str:
    """The exact redirect URI to register in the connected app (PUBLIC_URL fixes it behind proxies)."""
    path = reverse("salesforce_callback")
    base = settings.PUBLIC_URL
    return f"{base}{path}" if base else request.build_absolute_uri(path)


def app() -> SalesforceApp | None:
    return SalesforceApp.objects.first()


def current() -> SalesforceConnection | None:
    return SalesforceConnection.objects.first()


# -- the web server flow -------------------------------------------------------------------------------


def begin(request: HttpRequest, purpose: str = "org") -> str:
    """Remember state + PKCE verifier + redirect URI in the session; return the authorize URL."""
    settings_row = app()
    if settings_row is None or not settings_row.consumer_key or not settings_row.consumer_secret:
        raise NotConnected("Save the connected app's consumer key and secret first.")
    redirect_uri = callback_url(request)
    auth = oauth.start(settings_row.consumer_key, redirect_uri, login_base(settings_row.environment))
    request.session[SESSION_KEY] = {
        "state": auth.state,
        "verifier": auth.code_verifier,
        "redirect_uri": redirect_uri,
        "environment": settings_row.environment,
        "purpose": purpose,
        "started": timezone.now().isoformat(),
    }
    return auth.url


def take_flow(request: HttpRequest) -> dict:
    """Pop the flow from the session: a state is good for one callback only."""
    flow = request.session.pop(SESSION_KEY, None)
    return flow if isinstance(flow, dict) else {}


def exchange(request: HttpRequest, flow: dict) -> tuple[oauth.Tokens, oauth.Identity, str, str]:
    """Check the callback against ``flow`` and trade the code for tokens; return tokens, identity, the
    validated instance URL and the org name. Raises ConnectError (nothing stored, tokens revoked)."""
    try:
        code = oauth.read_callback(request.GET, flow.get("state"))
    except CallbackError as exc:
        raise ConnectError(exc.kind, str(exc)) from None
    if not flow.get("verifier") or not flow.get("redirect_uri"):
        raise ConnectError("missing_verifier", "This sign-in lost its PKCE verifier: start again.")
    started = datetime.fromisoformat(flow["started"])
    if timezone.now() - started > FLOW_TTL:
        raise ConnectError("expired", "This sign-in took longer than 15 minutes: start again.")
    settings_row = app()
    if settings_row is None:
        raise ConnectError("no_app", "The connected app settings were removed: save them and start again.")
    base = login_base(flow["environment"])
    try:
        tokens = oauth.exchange(
            base,
            settings_row.consumer_key,
            settings_row.consumer_secret.reveal(),
            flow["redirect_uri"],
            code,
            flow["verifier"],
            timeout=timeout(),
        )
    except (OAuthError, SalesforceUnavailable) as exc:
        raise ConnectError("token", f"Salesforce did not give tokens: {exc}") from None
    try:
        instance = oauth.check_instance_url(tokens.instance_url, extra_origins())
        id_url = oauth.check_identity_url(tokens.id_url, extra_origins())
    except ValueError as exc:
        _revoke_quietly(base, tokens.access_token)
        raise ConnectError("instance_url", f"Refused the answer from Salesforce: {exc}") from None
    if not tokens.refresh_token:
        _revoke_quietly(base, tokens.access_token)
        raise ConnectError(
            "no_refresh_token",
            "Salesforce gave no refresh token: add the scope 'Perform requests at any time "
            "(refresh_token, offline_access)' to the connected app, then connect again.",
        )
    try:
        identity = oauth.identity(id_url, tokens.access_token, timeout=timeout())
        org_name = SalesforceClient(instance, tokens.access_token, timeout=timeout()).org_name()
    except (OAuthError, SalesforceError, SalesforceUnavailable) as exc:
        _revoke_quietly(base, tokens.refresh_token)
        raise ConnectError("identity", f"Could not read who signed in: {exc}") from None
    return tokens, identity, instance, org_name


def finish(request: HttpRequest, flow: dict) -> Connected:
    """The org callback: store the connection (same org), or park a different org for confirmation.
    ``flow`` is what ``take_flow`` popped from the session."""
    tokens, identity, instance, org_name = exchange(request, flow)
    fields = {
        "environment": flow["environment"],
        "instance_url": instance,
        "org_id": identity.org_id,
        "org_name": org_name,
        "user_id": identity.user_id,
        "username": identity.username,
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
    }
    with transaction.atomic():
        existing = SalesforceConnection.objects.select_for_update().first()
        if existing is not None and existing.org_id != identity.org_id:
            stale = SalesforcePending.objects.select_for_update().first()
            if stale is not None:
                _after_commit_revoke(stale.environment, stale.refresh_token.reveal())
                stale.delete()
            SalesforcePending.objects.create(requested_by=request.user, **fields)
            audit.record(
                request, "salesforce.switch_requested", extra={"org": org_name, "org_id": identity.org_id}
            )
            return Connected("pending_switch", org_name or identity.org_id, identity.username)
        if existing is None:
            row = SalesforceConnection.objects.create(connected_by=request.user, **fields)
            audit.record(request, "salesforce.connect", row, after=audit.snapshot(row))
            kind = "connected"
        else:
            before = audit.snapshot(existing)
            old_refresh = existing.refresh_token.reveal() if existing.refresh_token else ""
            for name, value in fields.items():
                setattr(existing, name, value)
            existing.status = SalesforceConnection.Status.OK
            existing.last_error = ""
            existing.connected_by = request.user
            existing.connected_at = timezone.now()
            existing.save()
            if old_refresh and old_refresh != tokens.refresh_token:
                _after_commit_revoke(existing.environment, old_refresh)
            audit.record(
                request, "salesforce.reconnect", existing, before=before, after=audit.snapshot(existing)
            )
            kind = "reconnected"
    log.info("salesforce: %s org %s as %s", kind, identity.org_id, identity.username)
    return Connected(kind, org_name or identity.org_id, identity.username)


def pending() -> SalesforcePending | None:
    row = SalesforcePending.objects.first()
    if row is not None and timezone.now() - row.created_at > PENDING_TTL:
        _revoke_quietly(login_base(row.environment), row.refresh_token.reveal())
        row.delete()
        return None
    return row


def affected() -> dict[str, int]:
    """What a switch to another org clears: Salesforce Nexsets with settings, and those with a mapping."""
    configured = mapped = 0
    for source in Nexset.objects.filter(kind=Nexset.Kind.SALESFORCE).values_list("source", flat=True):
        if source:
            configured += 1
            mapped += bool(source.get("mapping"))
    return {"nexsets": configured, "mappings": mapped}


def confirm_switch(request: HttpRequest) -> dict[str, int] | None:
    """Replace the connection with the pending org; clear every Salesforce Nexset's settings."""
    with transaction.atomic():
        row = SalesforcePending.objects.select_for_update().first()
        if row is None:
            return None
        counts = affected()
        old = SalesforceConnection.objects.select_for_update().first()
        before = audit.snapshot(old) if old else None
        if old is not None:
            _after_commit_revoke(old.environment, old.refresh_token.reveal())
            old.delete()
        Nexset.objects.filter(kind=Nexset.Kind.SALESFORCE).update(
            source={}, next_pull_at=None, pull_watermark=None
        )
        new = SalesforceConnection.objects.create(
            environment=row.environment,
            instance_url=row.instance_url,
            org_id=row.org_id,
            org_name=row.org_name,
            user_id=row.user_id,
            username=row.username,
            access_token=row.access_token.reveal(),
            refresh_token=row.refresh_token.reveal(),
            connected_by=request.user,
        )
        row.delete()
        audit.record(
            request,
            "salesforce.switch",
            new,
            before=before,
            after=audit.snapshot(new),
            extra={"cleared": counts},
        )
    return counts


def cancel_switch(request: HttpRequest) -> bool:
    with transaction.atomic():
        row = SalesforcePending.objects.select_for_update().first()
        if row is None:
            return False
        _after_commit_revoke(row.environment, row.refresh_token.reveal())
        row.delete()
        audit.record(request, "salesforce.switch_cancelled", extra={"org_id": row.org_id})
    return True


def disconnect(request: HttpRequest) -> str | None:
    """Revoke at Salesforce, then delete the row whatever the revoke did. Returns the revoke problem, if
    any, for the page to say."""
    row = current()
    if row is None:
        return None
    problem = None
    try:
        oauth.revoke(login_base(row.environment), row.refresh_token.reveal(), timeout=timeout())
    except (OAuthError, SalesforceUnavailable) as exc:
        problem = str(exc)
        log.warning("salesforce: revoke failed on disconnect (%s); deleting the credentials anyway", exc)
    before = audit.snapshot(row)
    with transaction.atomic():
        SalesforceConnection.objects.filter(pk=row.pk).delete()
        Nexset.objects.filter(kind=Nexset.Kind.SALESFORCE).update(next_pull_at=None)
        audit.record(request, "salesforce.disconnect", before=before, extra={"revoke_error": problem or ""})
    return problem


def _revoke_quietly(base: str, token: str) -> None:
    try:
        oauth.revoke(base, token, timeout=timeout())
    except (OAuthError, SalesforceUnavailable) as exc:
        log.warning("salesforce: could not revoke a discarded token: %s", exc)


def _after_commit_revoke(environment: str, token: str) -> None:
    if token:
        base = login_base(environment)
        transaction.on_commit(lambda: _revoke_quietly(base, token))


# -- tokens for the REST client ------------------------------------------------------------------------


def client() -> SalesforceClient:
    """A REST client for the connected org. Raises NotConnected when there is none or it is broken."""
    row = current()
    if row is None:
        raise NotConnected("Salesforce is not connected: an Admin connects an org on the Salesforce page.")
    if row.status == SalesforceConnection.Status.BROKEN:
        raise NotConnected(
            f"The Salesforce connection needs reconnecting ({row.last_error}): an Admin clicks Reconnect "
            "on the Salesforce page. Pulls are paused until then; no settings were lost."
        )
    pk = row.pk
    return SalesforceClient(
        row.instance_url,
        row.access_token.reveal(),
        refresh=lambda failed: refresh(pk, failed),
        timeout=timeout(),
    )


def refresh(connection_id: int, failed: str) -> str:
    """A new access token after ``failed`` was refused; one refresh for all workers at a time."""

    def usable(row: SalesforceConnection) -> None:
        if row.status == SalesforceConnection.Status.BROKEN:
            raise NotConnected(f"The Salesforce connection needs reconnecting: {row.last_error}")

    def refused(row: SalesforceConnection, reason: str) -> Exception:
        broken = f"Salesforce refused the refresh token ({reason})"
        SalesforceConnection.objects.filter(pk=connection_id).update(
            status=SalesforceConnection.Status.BROKEN, last_error=broken
        )
        log.warning("salesforce: connection broken: %s", broken)
        return NotConnected(f"{broken}. An Admin must reconnect on the Salesforce page.")

    return refresh_row(
        SalesforceConnection,
        connection_id,
        failed,
        gone=lambda: NotConnected("Salesforce was disconnected."),
        no_app=lambda: NotConnected(
            "The connected app settings are missing: save them on the Salesforce page."
        ),
        environment=lambda row: row.environment,
        check=usable,
        refused=refused,
        changes=lambda: {"refreshed_at": timezone.now(), "last_error": ""},
        label="the org connection",
    )


def refresh_row(
    model: type[Row],
    pk: int,
    failed: str,
    *,
    gone: Callable[[], Exception],
    no_app: Callable[[], Exception],
    environment: Callable[[Row], str],
    refused: Callable[[Row, str], Exception],
    check: Callable[[Row], None] = lambda row: None,
    changes: Callable[[], dict[str, Any]] = dict,
    label: str,
) -> str:
    """The token refresh shared by the org connection and people's own links: under ``exclusive``, reuse
    a token another worker got meanwhile, else ask Salesforce with the row's refresh token and store the
    new access token (and the rotated refresh token). ``refused`` says what a refused refresh token
    means for the row and returns the exception to raise."""
    with exclusive(model, pk) as row:
        if row is None:
            raise gone()
        now_token = row.access_token.reveal() if row.access_token else ""
        if now_token and now_token != failed:
            return now_token  # another worker refreshed while we waited for the lock
        check(row)
        settings_row = app()
        if settings_row is None:
            raise no_app()
        try:
            tokens = oauth.refresh(
                login_base(environment(row)),
                settings_row.consumer_key,
                settings_row.consumer_secret.reveal(),
                row.refresh_token.reveal(),
                timeout=timeout(),
            )
        except InvalidGrant as exc:
            failure = refused(row, exc.description or exc.error)
        else:
            stored: dict[str, Any] = {"access_token": tokens.access_token, **changes()}
            if tokens.refresh_token:
                stored["refresh_token"] = tokens.refresh_token  # rotated: the old one no longer works
            model._default_manager.filter(pk=pk).update(**stored)
            log.info(
                "salesforce: refreshed the access token of %s%s",
                label,
                " (rotated)" if tokens.refresh_token else "",
            )
            return tokens.access_token
    raise failure


@contextmanager
def exclusive(model: type[Row], pk: int) -> Iterator[Row | None]:
    """Row ``pk`` of ``model`` (None when gone), held by this worker alone while it refreshes tokens: a row
    lock on PostgreSQL, a file lock on SQLite. For the org connection and for people's own links."""
    if db.features.has_select_for_update:
        with transaction.atomic():
            yield model._default_manager.select_for_update().filter(pk=pk).first()
    else:
        wait = sum(timeout()) + 10
        with file_lock(
            f"salesforce-token-{model._meta.model_name}-{pk}",
            wait=wait,
            on_timeout=lambda: NotConnected(f"Another worker has been refreshing for over {wait} s."),
        ):
            yield model._default_manager.filter(pk=pk).first()
