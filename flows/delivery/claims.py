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

import functools
from datetime import UTC, datetime, timedelta

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
    destination_id: int,
    *,
    now: datetime | None = None,
    any_time: bool = False,
    states: tuple[str, ...] = SENDABLE,
) -> QuerySet[Delivery]:
    """Deliveries of the destination that may be claimed now, oldest first (``states``: of these only)."""
    older_open = Delivery.objects.filter(
        destination_id=destination_id,
        is_test=False,
        target_id=OuterRef("target_id"),
        id__lt=OuterRef("id"),
        state__in=Delivery.OPEN_STATES,
    ).exclude(target_id="")  # (what lets PostgreSQL use the partial index delivery_target_order)
    rows = Delivery.objects.filter(destination_id=destination_id, is_test=False, state__in=states)
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
    if connection.vendor == "postgresql":
        return _claim_postgresql(destination_id, limit, now, changes["lease_until"], any_time)
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
    sql = _update_sql(pick, bump)
    values = [changes["lease_until"], changes["updated_at"]] + ([changes["state"]] if bump else [])
    return _returned(sql, [*values, *params], changes["lease_until"])


# The claim's statement on PostgreSQL, compiled once per process: Django builds ``sendable`` from
# placeholder values (the claim runs every few milliseconds, and compiling the query cost more CPU than
# running it), then each call puts its own values where the placeholders were.
_PLACEHOLDER_ID = -7_315_021_993
_PLACEHOLDER_NOW = datetime(1901, 2, 3, 4, 5, 6, 789_012, tzinfo=UTC)
_ID, _NOW, _LIMIT = object(), object(), object()


@functools.cache
def _claim_statement(any_time: bool) -> tuple[str, tuple[object, ...]]:
    """The UPDATE, and its parameters after the SET's: constants, or _ID, _NOW and _LIMIT to fill in.

    The oldest due deliveries are picked per sendable state, each state's in id order from the
    ``delivery_history`` index (destination, state, id), then the oldest of both. One pick over both
    states had to be sorted (or walked the primary key past every finished delivery of the destination):
    its cost grew with the destination's history and its backlog, at every claim."""
    marks = {_PLACEHOLDER_ID: _ID, _PLACEHOLDER_NOW: _NOW}
    branches, template = [], []
    for n, state in enumerate(SENDABLE):
        query = sendable(_PLACEHOLDER_ID, now=_PLACEHOLDER_NOW, any_time=any_time, states=(state,))
        pick, params = query.values("id").query.sql_with_params()
        # The pick's SQL is Django's own; every value is a parameter.
        branches.append(f"SELECT id FROM ({pick} LIMIT %s FOR UPDATE SKIP LOCKED) AS state_{n}")  # noqa: S608
        template += [*(marks.get(p, p) for p in params), _LIMIT]
    if template.count(_ID) != 2 * len(SENDABLE) or template.count(_NOW) != (0 if any_time else len(SENDABLE)):
        raise RuntimeError("the claim query's parameters are not where they were expected")
    pick = f"SELECT id FROM ({' UNION ALL '.join(branches)}) AS due ORDER BY id LIMIT %s"  # noqa: S608
    return _update_sql(pick, bump=True, locked=True), (*template, _LIMIT)


def _claim_postgresql(
    destination_id: int, limit: int, now: datetime, lease_until: datetime, any_time: bool
) -> list[Delivery]:
    sql, template = _claim_statement(any_time)
    fill = {_ID: destination_id, _NOW: now, _LIMIT: limit}
    params = [fill.get(p, p) for p in template]
    return _returned(sql, [lease_until, now, Delivery.State.SENDING, *params], lease_until)


def _update_sql(pick: str, bump: bool, locked: bool = False) -> str:
    """``locked``: the pick locks its rows itself."""
    if not locked:
        pick += " FOR UPDATE SKIP LOCKED"  # (Django compiles select_for_update only inside a transaction)
    quote = connection.ops.quote_name
    sets = [f"{quote('lease_until')} = %s", f"{quote('updated_at')} = %s"]
    if bump:
        sets += [f"{quote('state')} = %s", f"{quote('attempts')} = {quote('attempts')} + 1"]
    table, key = quote(Delivery._meta.db_table), quote(Delivery._meta.pk.column)
    returning = ", ".join(quote(Delivery._meta.get_field(name).column) for name in _in_model_order())
    # The candidates' SQL is Django's own; every value is a parameter.
    return f"UPDATE {table} SET {', '.join(sets)} WHERE {key} IN ({pick}) RETURNING {returning}"  # noqa: S608


@functools.cache
def _in_model_order() -> tuple[str, ...]:
    """FIELDS in the model's order: the order ``Model.from_db`` takes values in."""
    return tuple(f.attname for f in Delivery._meta.concrete_fields if f.attname in FIELDS)


def _returned(sql: str, params: list, lease_until: datetime) -> list[Delivery]:
    """Run the claim; the rows it returns become Delivery objects (only FIELDS loaded), oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchall()
    rows = sorted(
        (Delivery.from_db(connection.alias, _in_model_order(), values) for values in found),
        key=lambda r: r.pk,
    )
    for row in rows:
        row.lease_until = lease_until
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
