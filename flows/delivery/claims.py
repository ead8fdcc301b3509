"""Claiming due deliveries, so each is sent by one worker at a time (DESIGN.md 6.2 and 6.9).

- PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` picks rows no other worker is claiming, then one UPDATE
  marks them ``sending`` with a lease and ``attempts + 1``.
- SQLite: transactions here are IMMEDIATE (they take the database write lock at BEGIN), and each row is
  claimed with a conditional ``UPDATE ... WHERE state IN (queued, retry_scheduled)``: a row another
  process took meanwhile updates nothing.

Due: ``queued`` or ``retry_scheduled`` with ``next_attempt_at <= now``. Ordering: a delivery with a
``target_id`` is claimable only when no older delivery of the same destination and target is still open
(queued, sending, retry_scheduled, unknown), so two updates of one object are never sent out of order.
A second claim (a duplicate wake-up) finds nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from flows.models import Delivery

SENDABLE = (Delivery.State.QUEUED, Delivery.State.RETRY_SCHEDULED)
# What a sender needs from a claimed row.
FIELDS = (
    "id",
    "uuid",
    "destination_id",
    "state",
    "attempts",
    "attempts_base",
    "method",
    "url",
    "body",
    "target_id",
    "endpoint",
    "idempotency_key",
    "checks",
)


def sendable(
    destination_id: int, *, now: datetime | None = None, any_time: bool = False
) -> QuerySet[Delivery]:
    """Deliveries of the destination that may be claimed now, oldest first."""
    older_open = Delivery.objects.filter(
        destination_id=destination_id,
        is_test=False,
        target_id=OuterRef("target_id"),
        id__lt=OuterRef("id"),
        state__in=Delivery.OPEN_STATES,
    )
    rows = Delivery.objects.filter(destination_id=destination_id, is_test=False, state__in=SENDABLE)
    if not any_time:
        rows = rows.filter(next_attempt_at__lte=now or timezone.now())
    return rows.filter(Q(target_id="") | ~Exists(older_open)).order_by("id")


def unsettled(destination_id: int, *, now: datetime | None = None) -> QuerySet[Delivery]:
    """Unknown outcomes due for a lookup and not being looked up by another worker."""
    now = now or timezone.now()
    return (
        Delivery.objects.filter(
            destination_id=destination_id,
            is_test=False,
            state=Delivery.State.UNKNOWN,
            next_attempt_at__lte=now,
        )
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .order_by("id")
    )


def claim(destination_id: int, limit: int, lease_seconds: float, *, any_time: bool = False) -> list[Delivery]:
    """Claim up to ``limit`` due deliveries: state ``sending``, a lease, ``attempts + 1``. ``any_time``
    ignores ``next_attempt_at`` (the circuit breaker's probe takes the oldest pending delivery)."""
    if limit <= 0:
        return []
    now = timezone.now()
    changes = {
        "state": Delivery.State.SENDING,
        "lease_until": now + timedelta(seconds=lease_seconds),
        "attempts": F("attempts") + 1,
        "updated_at": now,
    }
    candidates = sendable(destination_id, now=now, any_time=any_time).only(*FIELDS)
    return _take(candidates, limit, Q(state__in=SENDABLE), changes, bump=True)


def claim_unsettled(destination_id: int, limit: int, lease_seconds: float) -> list[Delivery]:
    """Claim unknown outcomes for a lookup: the state stays ``unknown``; only the lease is taken."""
    if limit <= 0:
        return []
    now = timezone.now()
    changes = {"lease_until": now + timedelta(seconds=lease_seconds), "updated_at": now}
    still = Q(state=Delivery.State.UNKNOWN) & (Q(lease_until__isnull=True) | Q(lease_until__lt=now))
    return _take(unsettled(destination_id, now=now).only(*FIELDS), limit, still, changes, bump=False)


def _take(candidates: QuerySet[Delivery], limit: int, still: Q, changes: dict, bump: bool) -> list[Delivery]:
    if connection.vendor == "postgresql":
        return _take_postgresql(candidates, limit, changes, bump)
    with transaction.atomic():
        rows = [
            row
            for row in candidates[:limit]
            if Delivery.objects.filter(Q(pk=row.pk) & still).update(**changes)
        ]
    for row in rows:
        if bump:
            row.attempts += 1
            row.state = Delivery.State.SENDING
        row.lease_until = changes["lease_until"]
    return rows


def _take_postgresql(candidates: QuerySet[Delivery], limit: int, changes: dict, bump: bool) -> list[Delivery]:
    """One statement: ``UPDATE ... WHERE id IN (<candidates> FOR UPDATE SKIP LOCKED LIMIT n) RETURNING``
    the fields a sender needs, as they are after the claim."""
    pick, params = candidates.values("id")[:limit].query.sql_with_params()
    pick += " FOR UPDATE SKIP LOCKED"  # (Django compiles select_for_update only inside a transaction)
    quote = connection.ops.quote_name
    fields = [Delivery._meta.get_field(name) for name in FIELDS]
    sets = [f"{quote('lease_until')} = %s", f"{quote('updated_at')} = %s"]
    values = [changes["lease_until"], changes["updated_at"]]
    if bump:
        sets += [f"{quote('state')} = %s", f"{quote('attempts')} = {quote('attempts')} + 1"]
        values.append(changes["state"])
    table, key = quote(Delivery._meta.db_table), quote(Delivery._meta.pk.column)
    returning = ", ".join(quote(f.column) for f in fields)
    # The candidates' SQL is Django's own; every value is a parameter. ``raw`` turns the rows into
    # Delivery objects with the ORM's own conversions.
    sql = f"UPDATE {table} SET {', '.join(sets)} WHERE {key} IN ({pick}) RETURNING {returning}"  # noqa: S608
    rows = sorted(Delivery.objects.raw(sql, [*values, *params]), key=lambda row: row.pk)
    for row in rows:
        row.lease_until = changes["lease_until"]
    return rows


def release(delivery: Delivery) -> bool:
    """Give a claimed delivery back untouched (nothing was sent): queued again, the claim not counted."""
    return bool(
        Delivery.objects.filter(
            pk=delivery.pk, state=Delivery.State.SENDING, attempts=delivery.attempts
        ).update(
            state=Delivery.State.QUEUED,
            lease_until=None,
            attempts=F("attempts") - 1,
            next_attempt_at=timezone.now(),
            updated_at=timezone.now(),
        )
    )
