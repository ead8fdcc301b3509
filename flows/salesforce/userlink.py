"""Each person's own Salesforce login (``SalesforceUserLink``), for actions that write to Salesforce as that
person rather than as the org's integration user: the write-back of created Clazar ids
(flows/salesforce/writeback.py).

- Linking reuses the org connection's OAuth web server flow (``connection.begin(request, purpose="user")``,
  ``connection.exchange``): the same single-use state, PKCE and instance-URL checks. A person may only link
  a user of the org the app is connected to; signing in to another org revokes the new tokens and stores
  nothing. Linking again replaces the link (and revokes the tokens it replaces).
- Disconnecting revokes the refresh token at Salesforce and deletes the link even when the revoke fails.
- ``client(user_id)`` gives a REST client as that person. On a 401 the access token is refreshed once for
  every worker at a time, the way ``connection.refresh`` does it for the org: a row lock on PostgreSQL, a
  file lock on SQLite; a rotated refresh token is stored by the refresh that won the lock.

Tokens are never logged, audited or shown; audit events name the Salesforce username.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.http import HttpRequest

from clazar_dest.salesforce import oauth
from clazar_dest.salesforce.client import SalesforceClient, SalesforceUnavailable
from clazar_dest.salesforce.oauth import OAuthError
from flows import audit
from flows.models import Nexset, SalesforceConnection, SalesforceUserLink
from flows.salesforce import connection
from flows.salesforce.source import SalesforceSource

log = logging.getLogger(__name__)

PURPOSE = "user"


class NotLinked(Exception):
    """No usable Salesforce login for this person (none, another org, refused). ``str()`` says what to do."""


@dataclass(frozen=True)
class Unlinked:
    username: str
    revoke_error: str | None


def same_org(a: str, b: str) -> bool:
    """Salesforce ids compare on their case-sensitive 15-character form (18 adds a checksum)."""
    return bool(a) and bool(b) and a[:15] == b[:15]


def link_of(user: Any) -> SalesforceUserLink | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return SalesforceUserLink.objects.filter(user=user).first()


def linked_users(org: SalesforceConnection | None) -> list[SalesforceUserLink]:
    """Links of the connected org, by app username (who write-backs may run as)."""
    if org is None:
        return []
    links = SalesforceUserLink.objects.select_related("user").order_by("user__username")
    return [link for link in links if same_org(link.org_id, org.org_id)]


def card(user: Any) -> dict[str, Any]:
    """What the profile page's Salesforce card shows."""
    org = connection.current()
    link = link_of(user)
    writes = []
    if link is not None:
        for nexset in Nexset.objects.filter(kind=Nexset.Kind.SALESFORCE).order_by("name"):
            source = SalesforceSource.from_json(nexset.source)
            if source is not None and source.writeback is not None and source.writeback.user_id == user.pk:
                writes.append(nexset)
    return {
        "sf_org": org,
        "sf_link": link,
        "sf_link_other_org": link is not None and org is not None and not same_org(link.org_id, org.org_id),
        "sf_writebacks": writes,
    }


# -- linking --------------------------------------------------------------------------------------------


def begin(request: HttpRequest) -> str:
    """The Salesforce sign-in URL for linking the requesting person. NotLinked when the org is not
    connected or the connected app settings are missing."""
    if connection.current() is None:
        raise NotLinked(
            "Salesforce is not connected: an Admin connects the org on the Salesforce page first, then you "
            "can link your own Salesforce user."
        )
    try:
        return connection.begin(request, purpose=PURPOSE)
    except connection.NotConnected as exc:
        raise NotLinked(str(exc)) from None


def finish(request: HttpRequest, flow: dict) -> SalesforceUserLink:
    """The callback of a link: check it, require the connected org, and store (or replace) the person's
    link. Raises connection.ConnectError with nothing stored and the new tokens revoked."""
    tokens, identity, instance, org_name = connection.exchange(request, flow)
    base = connection.login_base(flow.get("environment") or environment())
    org = connection.current()
    if org is None or not same_org(org.org_id, identity.org_id):
        revoke_quietly(base, tokens.refresh_token or tokens.access_token)
        signed_in = f"{org_name or 'an org'} ({identity.org_id})"
        if org is None:
            message = (
                f"You signed in to {signed_in} as {identity.username}, but the app is not connected to "
                "Salesforce any more: an Admin connects the org first. Nothing was stored."
            )
        else:
            connected = f"{org.org_name or 'an org'} ({org.org_id})"
            message = (
                f"You signed in to {signed_in} as {identity.username}, but the app is connected to "
                f"{connected}. Nothing was stored and the sign-in was revoked: log out of Salesforce (or use "
                f"a private window), then connect again with your user of {org.org_name or org.org_id}."
            )
        raise connection.ConnectError("other_org", message)
    fields = {
        "org_id": identity.org_id,
        "sf_user_id": identity.user_id,
        "username": identity.username,
        "instance_url": instance,
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
    }
    with transaction.atomic():
        link = SalesforceUserLink.objects.select_for_update().filter(user=request.user).first()
        before = audit.snapshot(link) if link is not None else None
        replaced = link.refresh_token.reveal() if link is not None and link.refresh_token else ""
        if link is None:
            link = SalesforceUserLink(user=request.user)
        for name, value in fields.items():
            setattr(link, name, value)
        link.save()
        if replaced and replaced != tokens.refresh_token:
            transaction.on_commit(lambda: revoke_quietly(base, replaced))
        audit.record(
            request,
            "salesforce.user_link",
            link,
            before=before,
            after=audit.snapshot(link),
            extra={"salesforce_user": identity.username, "org_id": identity.org_id, "relinked": bool(before)},
        )
    log.info("salesforce: %s linked the Salesforce user %s", request.user.get_username(), identity.username)
    return link


def disconnect(request: HttpRequest) -> Unlinked | None:
    """Revoke the person's refresh token at Salesforce, then delete the link whatever the revoke did.
    None when there was no link."""
    link = link_of(request.user)
    if link is None:
        return None
    problem = revoke(connection.login_base(environment()), link.refresh_token.reveal())
    if problem:
        log.warning(
            "salesforce: revoke failed unlinking %s (%s); deleting the link anyway", link.username, problem
        )
    before = audit.snapshot(link)
    with transaction.atomic():
        SalesforceUserLink.objects.filter(pk=link.pk).delete()
        audit.record(
            request,
            "salesforce.user_unlink",
            before=before,
            extra={"salesforce_user": link.username, "revoke_error": problem or ""},
        )
    return Unlinked(link.username, problem)


def environment() -> str:
    """The login environment of the org (a link is always of the connected org)."""
    row = connection.current() or connection.app()
    return row.environment if row is not None else "production"


def revoke(base: str, token: str) -> str | None:
    """Revoke ``token`` (and its grant); the problem, if any, as a sentence."""
    if not token:
        return None
    try:
        oauth.revoke(base, token, timeout=connection.timeout())
    except (OAuthError, SalesforceUnavailable) as exc:
        return str(exc)
    return None


def revoke_quietly(base: str, token: str) -> None:
    problem = revoke(base, token)
    if problem:
        log.warning("salesforce: could not revoke a discarded user token: %s", problem)


# -- tokens for the REST client ----------------------------------------------------------------------------


def client(user_id: int) -> tuple[SalesforceUserLink, SalesforceClient]:
    """The person's link and a REST client acting as them. NotLinked (saying what to do) when they have no
    link, or it belongs to another org than the connected one."""
    link = SalesforceUserLink.objects.select_related("user").filter(user_id=user_id).first()
    if link is None:
        raise NotLinked(
            "This app user has no Salesforce link: they click “Connect my Salesforce user” on their profile "
            "page, or an Admin picks another user."
        )
    org = connection.current()
    if org is None:
        raise NotLinked("Salesforce is not connected: an Admin connects the org on the Salesforce page.")
    if not same_org(link.org_id, org.org_id):
        raise NotLinked(
            f"The Salesforce user {link.username} is of another org ({link.org_id}) than the connected one "
            f"({org.org_id}): they disconnect and connect again on their profile page."
        )
    pk = link.pk
    rest = SalesforceClient(
        link.instance_url,
        link.access_token.reveal(),
        refresh=lambda failed: refresh(pk, failed),
        timeout=connection.timeout(),
    )
    return link, rest


def refresh(link_id: int, failed: str) -> str:
    """A new access token for the link after ``failed`` was refused; one refresh for all workers at a time.
    NotLinked when the link is gone or Salesforce refuses its refresh token (the person links again)."""

    def refused(link: SalesforceUserLink, reason: str) -> Exception:
        message = f"Salesforce refused the refresh token of {link.username} ({reason})"
        log.warning("salesforce: user link %s refused: %s", link_id, message)
        return NotLinked(f"{message}. They disconnect and connect again on their profile page.")

    return connection.refresh_row(
        SalesforceUserLink,
        link_id,
        failed,
        gone=lambda: NotLinked("The Salesforce link was disconnected."),
        no_app=lambda: NotLinked(
            "The connected app settings are missing: an Admin saves them on the Salesforce page."
        ),
        environment=lambda link: environment(),
        refused=refused,
        label=f"user link {link_id}",
    )
