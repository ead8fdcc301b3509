"""The sweeper (beat, every CELERY_SWEEP_SECONDS): what makes lost messages and dead workers only delays.

1. Expired leases: a delivery still ``sending`` past its lease belongs to a worker that died or hung. If
   its attempt was never opened, nothing was sent: queued again (the claim is not counted). If it was
   opened, the request may have reached Clazar: idempotent methods (PUT, PATCH, DELETE) are queued again;
   creates and publishes become ``unknown`` and are looked up by the next deliver task.
2. Due retries: ``retry_scheduled`` whose time has come -> ``queued``.
3. Wake-ups, one message per destination: active destinations with new records past the cursor or due
   work (and a credential not paused by a 429), and auto-paused destinations whose probe is due.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.db.models import Count, F
from django.utils import timezone

from flows.delivery.engine import due_work
from flows.delivery.send import unsafe
from flows.models import Attempt, Delivery, Destination

log = logging.getLogger(__name__)

STOPPED = "The worker sending it stopped (or lost its lease) before Clazar's answer was recorded."


def sweep() -> dict[str, int]:
    """One sweep; returns the open deliveries by state as found at the start."""
    now = timezone.now()
    counts = dict(
        Delivery.objects.filter(state__in=Delivery.OPEN_STATES, is_test=False)
        .values_list("state")
        .annotate(n=Count("id"))
        .values_list("state", "n")
    )
    expired = resolve_leases(now)
    requeued = Delivery.objects.filter(
        is_test=False, state=Delivery.State.RETRY_SCHEDULED, next_attempt_at__lte=now
    ).update(state=Delivery.State.QUEUED, updated_at=now)
    Delivery.objects.filter(is_test=False, state=Delivery.State.QUEUED, next_attempt_at__isnull=True).update(
        next_attempt_at=now
    )
    woken = wake_due(now)
    log.info("sweep: open deliveries %s", counts or "none")
    if expired or requeued or woken:
        log.info("sweep: %s leases resolved, %s retries due, woke %s", expired, requeued, woken or "none")
    return counts


def resolve_leases(now: datetime, limit: int = 500) -> int:
    rows = list(
        Delivery.objects.filter(is_test=False, state=Delivery.State.SENDING, lease_until__lt=now).only(
            "id", "uuid", "attempts", "method", "endpoint"
        )[:limit]
    )
    return sum(resolve_lease(row, now) for row in rows)


def resolve_lease(delivery: Delivery, now: datetime) -> bool:
    attempt = Attempt.objects.filter(delivery_id=delivery.pk, number=delivery.attempts).first()
    held = Delivery.objects.filter(
        pk=delivery.pk, state=Delivery.State.SENDING, attempts=delivery.attempts, lease_until__lt=now
    )
    with transaction.atomic():
        if attempt is None:
            changed = held.update(
                state=Delivery.State.QUEUED,
                attempts=F("attempts") - 1,
                lease_until=None,
                next_attempt_at=now,
                updated_at=now,
            )
            how = "queued again (nothing was sent)"
        elif not unsafe(delivery.method, delivery.endpoint):
            changed = held.update(
                state=Delivery.State.QUEUED,
                lease_until=None,
                next_attempt_at=now,
                last_error=f"{STOPPED} Sent again: {delivery.method} is safe to repeat.",
                updated_at=now,
            )
            how = "queued again (safe to repeat)"
        else:
            changed = held.update(
                state=Delivery.State.UNKNOWN,
                lease_until=None,
                next_attempt_at=now,
                last_error=f"Outcome unknown: {STOPPED} It is not sent again automatically; Clazar is "
                "asked whether it took effect.",
                updated_at=now,
            )
            how = "outcome unknown, to be looked up"
        if changed and attempt is not None:
            Attempt.objects.filter(pk=attempt.pk, outcome=Attempt.Outcome.SENDING).update(
                outcome=Attempt.Outcome.UNKNOWN, finished_at=now, error=STOPPED
            )
    if changed:
        log.warning("delivery %s: lease expired; %s", delivery.uuid, how)
    return bool(changed)


def wake_due(now: datetime) -> list[int]:
    from flows.tasks import deliver

    woken = []
    destinations = Destination.objects.filter(
        status__in=(Destination.Status.ACTIVE, Destination.Status.AUTO_PAUSED)
    ).values_list("id", "status", "cursor", "probe_at", "nexset__last_seq", "credential__paused_until")
    for dest_id, status, cursor, probe_at, last_seq, paused_until in destinations:
        if paused_until is not None and paused_until > now:
            wanted = False  # the credential waits for Clazar's Retry-After, probes included
        elif status == Destination.Status.AUTO_PAUSED:
            wanted = probe_at is not None and probe_at <= now
        else:
            wanted = last_seq > cursor or due_work(dest_id, now)
        if wanted:
            deliver.delay(dest_id)
            woken.append(dest_id)
    return woken
