"""Activate and deactivate a destination (DESIGN.md 6.1; issue 7, Build 1). Views call these.

``preview`` says what activation would do ("12,408 records will be sent with Create Private Offer to
api.clazar.io") and what stands in the way. ``activate`` refuses a config that can't be sent, a
credential Clazar rejected or an API base no longer allowed, and for irreversible templates (publish,
delete; an Advanced DELETE too) the typed confirmation: the record count as shown. It sets the destination
active and wakes the engine after commit. ``deactivate`` pauses it: the deliver loop sees the status within
half a second and claims nothing more; requests already in flight finish and are recorded. Both audited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from flows import audit, search_index
from flows.config import DestinationConfig
from flows.models import Credential, Destination, Record
from flows.sending import pinned

log = logging.getLogger(__name__)

AUDITED = ["status", "paused_reason", "activated_at", "cursor"]


class ActivationError(ValueError):
    """Activation was refused; the message says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ActivationPreview:
    """What activating would do. ``problems`` block activation; ``notes`` only inform."""

    count: int  # records that will be sent now (seq > cursor)
    label: str  # the template's label, or "Advanced"
    method: str
    host: str  # the API base host, e.g. "api.clazar.io"
    irreversible: bool
    confirm_word: str  # what to type for irreversible templates ("" otherwise)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.problems

    @property
    def sentence(self) -> str:
        """E.g. "12,408 records will be sent with Create Private Offer to api.clazar.io"."""
        noun = "record" if self.count == 1 else "records"
        return f"{self.count:,} {noun} will be sent with {self.label} ({self.method}) to {self.host}"


def preview(destination: Destination) -> ActivationPreview:
    config = DestinationConfig.from_json(destination.config)
    credential = destination.credential
    endpoint = config.endpoint()
    count = Record.objects.filter(nexset_id=destination.nexset_id, seq__gt=destination.cursor).count()
    irreversible = (
        bool(endpoint.irreversible) if endpoint else config.mode == "advanced" and config.method == "DELETE"
    )
    problems: list[str] = []
    errors = config.validate(credential.api_base)
    for path, messages in errors.items():
        problems += [f"{path}: {m}" if path else m for m in messages]
    if not errors:
        where = pinned(f"{credential.api_base.rstrip('/')}/", credential.api_base)
        if where:
            problems.append(f"The credential can't be used: {where}")
    if credential.status == Credential.Status.REJECTED:
        why = f" ({credential.last_error})" if credential.last_error else ""
        problems.append(
            f"Clazar rejected the credential {credential.name}{why}. Fix its client ID or secret and test it."
        )
    notes = []
    if count == 0:
        notes.append("The Nexset has no records to send yet; new records will be sent as they arrive.")
    if destination.status == Destination.Status.ACTIVE:
        notes.append("The destination is already active.")
    return ActivationPreview(
        count=count,
        label="Advanced" if config.mode == "advanced" else (endpoint.label if endpoint else "No template"),
        method=config.effective_method(),
        host=urlsplit(credential.api_base).netloc or credential.api_base,
        irreversible=irreversible,
        confirm_word=str(count) if irreversible else "",
        problems=problems,
        notes=notes,
    )


def activate(
    destination_id: int, *, user: Any, confirm: str = "", request: HttpRequest | None = None
) -> None:
    """Make the destination active (or resume it) and wake the engine after commit."""
    from flows.tasks import wake

    with transaction.atomic():
        dest = Destination.objects.select_for_update().select_related("credential").get(pk=destination_id)
        if dest.status == Destination.Status.ACTIVE:
            return
        shown = preview(dest)
        if shown.problems:
            raise ActivationError("Can't activate: " + " ".join(shown.problems))
        if shown.irreversible and confirm.strip().replace(",", "") != shown.confirm_word:
            raise ActivationError(
                f"{shown.label} is irreversible. Type {shown.confirm_word} (the number of records that will "
                "be sent) to confirm."
            )
        before = audit.snapshot(dest, AUDITED)
        dest.status = Destination.Status.ACTIVE
        dest.activated_at = timezone.now()
        dest.paused_reason = ""
        dest.failures = 0
        dest.probe_at = None
        dest.save(
            update_fields=["status", "activated_at", "paused_reason", "failures", "probe_at", "updated_at"]
        )
        audit.record(
            _as_request(request, user),
            "destination.activate",
            dest,
            before=before,
            after=audit.snapshot(dest, AUDITED),
            extra={"records": shown.count, "endpoint": shown.label, "host": shown.host},
        )
        wake(dest.pk)
        # Its history will be searched by record field: a large Nexset gets its search index now, while
        # the first deliveries go out, rather than at the first search.
        search_index.request(dest.nexset)
    log.info("destination %s activated: %s", dest.uuid, shown.sentence)


def deactivate(destination_id: int, *, user: Any, request: HttpRequest | None = None) -> None:
    """Pause the destination: no new sends within about a second; in-flight requests finish."""
    with transaction.atomic():
        dest = Destination.objects.select_for_update().get(pk=destination_id)
        if dest.status in (Destination.Status.PAUSED, Destination.Status.DRAFT):
            return
        before = audit.snapshot(dest, AUDITED)
        who = getattr(user, "get_username", lambda: "")() or "an operator"
        dest.status = Destination.Status.PAUSED
        dest.paused_reason = f"Deactivated by {who}."
        dest.probe_at = None
        dest.save(update_fields=["status", "paused_reason", "probe_at", "updated_at"])
        audit.record(
            _as_request(request, user),
            "destination.deactivate",
            dest,
            before=before,
            after=audit.snapshot(dest, AUDITED),
        )
    log.info("destination %s deactivated", dest.uuid)


def pause_all(*, user: Any, request: HttpRequest | None = None) -> list[str]:
    """Pause every active or auto-paused destination (an Admin's stop button). Returns their names.
    Each is audited like a deactivation; in-flight requests finish and are recorded."""
    running = (Destination.Status.ACTIVE, Destination.Status.AUTO_PAUSED)
    names = []
    for pk, name in Destination.objects.filter(status__in=running).values_list("id", "name"):
        deactivate(pk, user=user, request=request)
        names.append(name)
    audit.record(_as_request(request, user), "deliveries.pause_all", extra={"paused": names})
    log.warning("all deliveries paused by %s: %s", getattr(user, "username", "?"), ", ".join(names) or "none")
    return names


def _as_request(request: HttpRequest | None, user: Any) -> Any:
    """audit.record reads the actor from the request; without one, stand in with the user."""
    if request is not None or user is None:
        return request
    return SimpleNamespace(user=user, META={})
