"""Settling an unknown outcome of a create or publish by asking Clazar (DESIGN.md 6.6).

A create or publish whose answer was lost may or may not have happened, and is never sent again blindly.
Where the endpoint catalog says how (``Endpoint.lookup``), one lookup settles it:

- **create** (a list route): ``GET <list>?<param>=<the record's value>&last_modified_at_after=...``; the
  candidates are objects created after the attempt started (minus a few seconds for clock skew) that no
  other delivery of this destination already claims. Exactly one: it was created (succeeded, with its id).
  None: it was probably not created. Several: a person must choose.
- **publish** (an object route): ``GET <object>``; ``status == published`` means it took effect.

Found -> ``succeeded``. Not found, ambiguous, or no way to look it up -> ``needs_attention`` with a message
naming the two operator actions ("it was created: record the id" / "send again", which re-sends with the
same Idempotency-Key). Clazar unreachable during the lookup -> stay ``unknown`` and look again later
(backoff), up to DELIVERY_RECONCILE_TRIES, then ``needs_attention``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote, urlencode

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from clazar_dest.clazar.endpoints import BY_KEY, Endpoint
from clazar_dest.clazar.spec import RequestSpec
from flows import ratelimit
from flows.delivery.send import Context, finished
from flows.models import Attempt, Delivery
from flows.outcomes import backoff
from flows.sending import send_for_credential

log = logging.getLogger(__name__)

SKEW = timedelta(seconds=5)
ACTIONS = (
    "If it took effect in Clazar, record the object's id ('It was created'); otherwise use 'Send again', "
    "which re-sends it with the same Idempotency-Key."
)


@dataclass(frozen=True)
class Verdict:
    kind: str  # found | absent | ambiguous | impossible | error
    message: str
    object_id: str = ""


def settle(delivery: Delivery, ctx: Context) -> str:
    """Look up one unknown delivery held by this worker; return its new state."""
    attempt = Attempt.objects.filter(delivery_id=delivery.pk).order_by("-number").first()
    started = attempt.started_at if attempt else timezone.now() - timedelta(days=1)
    endpoint = BY_KEY.get(delivery.endpoint)
    verdict = look_up(delivery, endpoint, started, ctx)
    now = timezone.now()
    held = Delivery.objects.filter(pk=delivery.pk, state=Delivery.State.UNKNOWN)
    if verdict.kind == "found":
        changed = held.update(
            state=Delivery.State.SUCCEEDED,
            created_object_id=verdict.object_id[:255],
            last_error="",
            finished_at=now,
            lease_until=None,
            checks=F("checks") + 1,
            updated_at=now,
        )
        if changed and attempt is not None:
            Attempt.objects.filter(pk=attempt.pk).update(error=f"{attempt.error} {verdict.message}".strip())
        if changed:
            finished(delivery.pk, ctx)
        state = Delivery.State.SUCCEEDED
    elif verdict.kind == "error" and delivery.checks + 1 < settings.DELIVERY_RECONCILE_TRIES:
        held.update(
            lease_until=None,
            checks=F("checks") + 1,
            next_attempt_at=now + timedelta(seconds=backoff(delivery.checks + 1)),
            updated_at=now,
        )
        state = Delivery.State.UNKNOWN
    else:
        prior = Delivery.objects.values_list("last_error", flat=True).get(pk=delivery.pk)
        cause = prior.split(" It is not sent again")[0] if prior else "The outcome is unknown."
        held.update(
            state=Delivery.State.NEEDS_ATTENTION,
            last_error=f"{cause} {verdict.message} {ACTIONS}"[:5000],
            lease_until=None,
            checks=F("checks") + 1,
            updated_at=now,
        )
        state = Delivery.State.NEEDS_ATTENTION
    log.info("delivery %s: unknown outcome settled as %s (%s)", delivery.uuid, state, verdict.kind)
    return state


def _unsettled_twin(delivery: Delivery, field: str, value: object) -> bool:
    """Another delivery of the destination whose outcome is not known yet asks for an object with the
    same lookup value: a single match could be either one's."""
    others = (
        Delivery.objects.filter(
            destination_id=delivery.destination_id,
            endpoint=delivery.endpoint,
            is_test=False,
            state__in=(Delivery.State.UNKNOWN, Delivery.State.SENDING, Delivery.State.NEEDS_ATTENTION),
        )
        .exclude(pk=delivery.pk)
        .values_list("body", flat=True)
    )
    return any(_field(body, field) == value for body in others.iterator())


def look_up(delivery: Delivery, endpoint: Endpoint | None, started: datetime, ctx: Context) -> Verdict:
    lookup = endpoint.lookup if endpoint else None
    if endpoint is None or lookup is None:
        return Verdict("impossible", "Clazar offers no way to look this request up.")
    base = ctx.credential.api_base.rstrip("/")
    if lookup.param:
        value = _field(delivery.body, lookup.field or lookup.param)
        if value is None:
            return Verdict(
                "impossible",
                f"The request has no single '{lookup.field}' to look the new {_noun(endpoint)} up by.",
            )
        since = (started - SKEW).isoformat()
        query = urlencode({lookup.param: value, "page_size": 100, "last_modified_at_after": since})
        answer = _get(f"{base}{lookup.path}?{query}", ctx)
        if isinstance(answer, Verdict):
            return answer
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list):
            return Verdict("error", "Clazar's list answer had no results.")
        ids = [
            str(o.get("id")) for o in results if isinstance(o, dict) and _after(o.get("created_at"), started)
        ]
        claimed = set(
            Delivery.objects.filter(destination_id=delivery.destination_id, created_object_id__in=ids)
            .exclude(pk=delivery.pk)
            .values_list("created_object_id", flat=True)
        )
        ids = [i for i in ids if i not in claimed]
        noun = _noun(endpoint)
        if len(ids) == 1 and _unsettled_twin(delivery, lookup.field or lookup.param, value):
            return Verdict(
                "ambiguous",
                f"A lookup by {lookup.field} {value!r} found {noun} {ids[0]}, but another record with the "
                "same value is also waiting for its outcome, so which one was created can't be told.",
            )
        if len(ids) == 1:
            return Verdict(
                "found",
                f"Reconciled: a lookup by {lookup.field} found {noun} {ids[0]}, created after this attempt "
                "started, so it was created once and not sent again.",
                ids[0],
            )
        if not ids:
            return Verdict(
                "absent",
                f"A lookup by {lookup.field} {value!r} found no {noun} created since the attempt, so it "
                "was probably not created.",
            )
        return Verdict(
            "ambiguous",
            f"A lookup by {lookup.field} {value!r} found {len(ids)} {noun}s created since the attempt "
            f"({', '.join(ids[:5])}); which one is this record's can't be told.",
        )
    target = delivery.target_id
    path = lookup.path.replace("{" + (endpoint.id_param or "") + "}", quote(target, safe=""))
    answer = _get(f"{base}{path}", ctx)
    if isinstance(answer, Verdict):
        return answer
    value = answer.get(lookup.done_field) if isinstance(answer, dict) else None
    if value == lookup.done_value:
        return Verdict(
            "found",
            f"Reconciled: {_noun(endpoint)} {target} has {lookup.done_field} '{value}', so it took effect "
            "and was not sent again.",
            target,
        )
    return Verdict(
        "absent",
        f"{_noun(endpoint).capitalize()} {target} has {lookup.done_field} '{value}': it did not take effect.",
    )


def _get(url: str, ctx: Context) -> dict | Verdict:
    if not ratelimit.wait_for(ctx.credential, timeout=settings.DELIVERY_LEASE_SECONDS / 2):
        return Verdict("error", "No request budget was free for the lookup.")
    result = send_for_credential(
        RequestSpec("GET", url, None, ()), ctx.credential.pk, idempotency_key=None, view=ctx.view
    )
    if result.status == 404:
        return Verdict("absent", "Clazar has no such object (HTTP 404).")
    if result.status != 200 or not isinstance(result.json, dict):
        return Verdict("error", f"The lookup failed: {result.error or f'HTTP {result.status}'}")
    return result.json


def _field(body: bytes | memoryview | None, name: str) -> str | None:
    if body is None:
        return None
    try:
        data = json.loads(bytes(body))
    except ValueError:
        return None
    value = data.get(name) if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        return None
    return str(value)


def _after(stamp: object, started: datetime) -> bool:
    if not isinstance(stamp, str):
        return False
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return False
    if when.tzinfo is None:
        return False
    return when >= started - SKEW


def _noun(endpoint: Endpoint) -> str:
    return endpoint.resource.replace("_", " ").rstrip("s")
