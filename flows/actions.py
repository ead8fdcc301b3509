"""Operator actions on deliveries: retry, bulk retry or cancel of a filtered set, edit-and-replay, cancel,
and the two decisions a ``needs_attention`` delivery waits for.

Each action is a conditional UPDATE from the states it applies to (``filter(state__in=...).update(...)``),
so a worker claiming the same row at the same moment wins or loses cleanly: nothing is changed twice and
nothing changes under a worker's feet. Work put back in the queue is ``queued`` with ``next_attempt_at``
now, and the destination's worker is woken after commit. Every action checks the Operator role itself
(views check it too) and writes an audit event. Test sends are never touched.

A delivery that ended ``needs_attention`` may have been applied by Clazar (a create or publish whose answer
was lost), so it is never retried blindly: the operator either enters the id Clazar gave it or decides to
send it again. The same holds for one cancelled in that state.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

from django.db import transaction
from django.db.models import Exists, F, OuterRef, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from flows import audit
from flows.history import Filters
from flows.models import Attempt, Delivery, Destination
from flows.roles import OPERATOR, has_role

log = logging.getLogger(__name__)
S = Delivery.State

RETRYABLE = (S.FAILED, S.EXHAUSTED, S.CANCELLED)
REPLAYABLE = RETRYABLE
CANCELLABLE = (S.QUEUED, S.RETRY_SCHEDULED, S.NEEDS_ATTENTION)
BODY_SHOWN = 20_000
_OBJECT_ID = re.compile(r"^[^\s\x00-\x1f\x7f]{1,255}$")


class ActionError(Exception):
    """The action cannot be done; the message says why and what to do instead."""


@dataclass(frozen=True)
class Preview:
    """What a bulk action would change: ``count`` deliveries, none newer than ``upto``."""

    action: str
    count: int
    upto: int | None


def _as(request: HttpRequest | None, user: Any) -> Any:
    """audit.record reads the actor from the request; without one (a script, a test) the user stands in."""
    return request if request is not None else SimpleNamespace(user=user, META={})


def _require_operator(user: Any) -> None:
    if not has_role(user, OPERATOR):
        raise ActionError("Only Operators can change deliveries.")


def _wake(destination_id: int) -> None:
    """Nudge the destination's worker once the transaction commits."""
    from flows.tasks import wake

    wake(destination_id)


def _delivery(delivery_id: int) -> Delivery:
    try:
        return Delivery.objects.select_related("destination").get(pk=delivery_id, is_test=False)
    except Delivery.DoesNotExist:
        raise ActionError(
            "That delivery does not exist, or it is a test send (those are not retried)."
        ) from None


def _sendable(delivery: Delivery) -> None:
    if not delivery.url:
        raise ActionError(
            "This record never became a request (see its error): retrying would send nothing. Fix the record "
            "or the destination's settings; new records are planned as they arrive."
        )


def _unsure() -> Exists:
    """Deliveries with an attempt whose outcome Clazar never told us."""
    return Exists(Attempt.objects.filter(delivery=OuterRef("pk"), outcome=Attempt.Outcome.UNKNOWN))


def _wrong_state(delivery: Delivery, doing: str, allowed: tuple[str, ...]) -> ActionError:
    names = ", ".join(S(state).label.lower() for state in allowed)
    return ActionError(
        f"Delivery {str(delivery.uuid)[:8]} can't be {doing}: it is “{delivery.get_state_display()}” now, and "
        f"only {names} deliveries can. Reload to see its latest state."
    )


def _transition(
    delivery: Delivery, allowed: tuple[str, ...], doing: str, **changes: Any
) -> tuple[dict[str, Any], Delivery]:
    """Move ``delivery`` from one of ``allowed`` with a conditional update; the before-snapshot and the
    row re-read."""
    before = audit.snapshot(delivery, ["state", *[k for k in changes if k not in ("updated_at",)]])
    changes.setdefault("updated_at", timezone.now())
    if not Delivery.objects.filter(pk=delivery.pk, state__in=allowed, is_test=False).update(**changes):
        delivery.refresh_from_db(fields=["state"])
        raise _wrong_state(delivery, doing, allowed)
    delivery.refresh_from_db()
    return before, delivery


def _requeue() -> dict[str, Any]:
    """A person queues it again: a fresh round of the retry schedule starts (``attempts_base``)."""
    return {
        "state": S.QUEUED,
        "attempts_base": F("attempts"),
        "next_attempt_at": timezone.now(),
        "lease_until": None,
        "finished_at": None,
    }


def body_text(body: bytes | memoryview | None) -> str:
    if body is None:
        return ""
    text = bytes(body)[:BODY_SHOWN].decode("utf-8", "replace")
    return text + ("…" if len(body) > BODY_SHOWN else "")


def retry(delivery_id: int, *, user: Any, request: HttpRequest | None = None) -> Delivery:
    """Send a failed, exhausted or cancelled delivery again, as it was planned."""
    _require_operator(user)
    delivery = _delivery(delivery_id)
    _sendable(delivery)
    if (
        delivery.state == S.CANCELLED
        and Attempt.objects.filter(delivery=delivery, outcome=Attempt.Outcome.UNKNOWN).exists()
    ):
        raise ActionError(
            "This delivery was cancelled while Clazar's answer to it was unknown: it may have been applied. "
            "Check Clazar first; if it was not, use edit-and-replay to send it deliberately."
        )
    with transaction.atomic():
        before, delivery = _transition(delivery, RETRYABLE, "retried", **_requeue())
        audit.record(
            _as(request, user),
            "delivery.retry",
            delivery,
            before=before,
            after=audit.snapshot(delivery, list(before)),
        )
        _wake(delivery.destination_id)
    return delivery


def replay(delivery_id: int, text: str, *, user: Any, request: HttpRequest | None = None) -> Delivery:
    """Store an edited JSON body on this delivery only (the old one stays in the audit diff) and queue it."""
    _require_operator(user)
    delivery = _delivery(delivery_id)
    _sendable(delivery)
    if delivery.body is None:
        raise ActionError(f"A {delivery.method} request has no body to edit: retry it instead.")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ActionError(
            f"The edited body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        ) from None
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    old = body_text(delivery.body)
    with transaction.atomic():
        before, delivery = _transition(delivery, REPLAYABLE, "replayed", body=body, **_requeue())
        before["body"] = old
        after = audit.snapshot(delivery, [k for k in before if k != "body"])
        after["body"] = body_text(body)
        audit.record(_as(request, user), "delivery.replay", delivery, before=before, after=after)
        _wake(delivery.destination_id)
    return delivery


def cancel(delivery_id: int, *, user: Any, request: HttpRequest | None = None) -> Delivery:
    """Drop pending work: a queued, retry-scheduled or needs-attention delivery is not sent."""
    _require_operator(user)
    delivery = _delivery(delivery_id)
    with transaction.atomic():
        before, delivery = _transition(
            delivery,
            CANCELLABLE,
            "cancelled",
            state=S.CANCELLED,
            next_attempt_at=None,
            lease_until=None,
            finished_at=timezone.now(),
        )
        audit.record(
            _as(request, user),
            "delivery.cancel",
            delivery,
            before=before,
            after=audit.snapshot(delivery, list(before)),
        )
    return delivery


def mark_created(
    delivery_id: int, object_id: str, *, user: Any, request: HttpRequest | None = None
) -> Delivery:
    """The operator found the object in Clazar: the delivery succeeded, with that id."""
    _require_operator(user)
    object_id = (object_id or "").strip()
    if not _OBJECT_ID.match(object_id):
        raise ActionError(
            "Enter the id Clazar gave the object (as shown in Clazar: no spaces, at most 255 characters)."
        )
    delivery = _delivery(delivery_id)
    with transaction.atomic():
        before, delivery = _transition(
            delivery,
            (S.NEEDS_ATTENTION,),
            "marked as created",
            state=S.SUCCEEDED,
            created_object_id=object_id,
            last_error="",
            next_attempt_at=None,
            lease_until=None,
            finished_at=timezone.now(),
        )
        audit.record(
            _as(request, user),
            "delivery.mark_created",
            delivery,
            before=before,
            after=audit.snapshot(delivery, list(before)),
        )
        transaction.on_commit(lambda: _settled(delivery.pk))
    return delivery


def _settled(delivery_id: int) -> None:
    """A delivery settled by hand: its response goes to the response Nexset like any final one."""
    from flows.delivery import settled

    settled(delivery_id)


def send_again(delivery_id: int, *, user: Any, request: HttpRequest | None = None) -> Delivery:
    """The operator checked Clazar and the object is not there: send the request once more."""
    _require_operator(user)
    delivery = _delivery(delivery_id)
    with transaction.atomic():
        before, delivery = _transition(delivery, (S.NEEDS_ATTENTION,), "sent again", **_requeue())
        audit.record(
            _as(request, user),
            "delivery.send_again",
            delivery,
            before=before,
            after=audit.snapshot(delivery, list(before)),
            extra={"decision": "The operator checked Clazar and chose to send it again."},
        )
        _wake(delivery.destination_id)
    return delivery


# Bulk actions on a filtered set -------------------------------------------------------------------------

BULK = {
    "retry": (RETRYABLE, "retried"),
    "cancel": ((S.QUEUED, S.RETRY_SCHEDULED), "cancelled"),
}


def bulk_set(destination: Destination, filters: Filters, action: str) -> QuerySet[Delivery]:
    """The deliveries ``action`` applies to within the filtered history (test sends never)."""
    if action not in BULK:
        raise ActionError(f"Unknown bulk action “{action}”.")
    allowed, _ = BULK[action]
    queryset = replace(filters, tests=False).apply(Delivery.objects.all(), destination)
    queryset = queryset.filter(state__in=allowed)
    if action == "retry":  # never built into a request, or cancelled while unknown: not blindly
        queryset = queryset.exclude(url="").exclude(_unsure(), state=S.CANCELLED)
    return queryset


def preview(destination: Destination, filters: Filters, action: str) -> Preview:
    """How many deliveries ``bulk`` would change now; ``upto`` pins the set so later arrivals stay out."""
    queryset = bulk_set(destination, filters, action)
    upto = queryset.order_by("-pk").values_list("pk", flat=True).first()
    count = queryset.filter(pk__lte=upto).count() if upto is not None else 0
    return Preview(action, count, upto)


def bulk(
    destination: Destination,
    filters: Filters,
    action: str,
    *,
    upto: int | None,
    user: Any,
    request: HttpRequest | None = None,
) -> int:
    """Apply ``action`` to the set a preview showed (ids up to ``upto``); returns how many changed."""
    _require_operator(user)
    if upto is None:
        return 0
    queryset = bulk_set(destination, filters, action).filter(pk__lte=upto)
    allowed, _ = BULK[action]
    now = timezone.now()
    if action == "retry":
        changes = {**_requeue(), "updated_at": now}
    else:
        changes = {
            "state": S.CANCELLED,
            "next_attempt_at": None,
            "lease_until": None,
            "finished_at": now,
            "updated_at": now,
        }
    with transaction.atomic():
        ids = queryset.values("pk")
        changed = Delivery.objects.filter(pk__in=ids, state__in=allowed).update(**changes)
        audit.record(
            _as(request, user),
            f"delivery.bulk_{action}",
            destination,
            extra={
                "count": changed,
                "filter": filters.describe(),
                "params": filters.params(absolute=True),
                "up_to_delivery_id": upto,
            },
        )
        if changed and action == "retry":
            _wake(destination.pk)
    log.info("bulk %s on destination %s: %s deliveries", action, destination.uuid, changed)
    return changed
