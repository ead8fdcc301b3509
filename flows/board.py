"""What the dashboard reads, fast enough for a 3-second poll over millions of deliveries.

Counting a million rows costs about 100 ms however it is indexed, so a poll never does it:

- **Counts by state** are exact up to ``CAP`` per destination and state (each reads at most ``CAP`` index
  entries) and shown as "100,000+" beyond it.
- **Succeeded**, which drives the progress bar, is exact at any size. Succeeded is final (nothing moves a
  delivery out of it) and its ``finished_at`` never changes afterwards, so the number that finished before
  the last settled bucket edge (``SETTLE`` ago, on a 10-minute boundary) is kept in the cache and carried
  forward; a poll counts only the ones after it.
- **The outcome chart** keeps its 10-minute buckets in the cache once they closed before that edge; a poll
  counts only what finished since. (A delivery retried later stays in the bucket where it failed: the
  chart shows what happened when.)
- **The rate** is the number of deliveries finished in the last minute.

The last three come from one query over the deliveries finished since the edge. It wants an index on
(destination, finished_at); the capped counts and the last error want one on (destination, state, id);
both partial on non-test deliveries (``bench/pages.py`` measures with and without them). The first view
after the cache was emptied counts everything once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Q
from django.db.models.functions import ExtractMinute, Floor, TruncHour

from flows import charts
from flows.models import Delivery, DeliveryItem, Destination

S = Delivery.State
CAP = 100_000
SETTLE = timedelta(minutes=10)
CACHE_SECONDS = 3 * 24 * 3600
CAPPED_STATES = tuple(s for s in S.values if s != S.SUCCEEDED)

Buckets = dict[tuple[datetime, str], int]


@dataclass
class Board:
    counts: dict[int, dict[str, int]] = field(default_factory=dict)
    outcomes: dict[int, Buckets] = field(default_factory=dict)
    rates: dict[int, int] = field(default_factory=dict)


def read(destinations: list[Destination], now: datetime) -> Board:
    """Counts by state, chart buckets and rate for ``destinations`` (non-test deliveries only)."""
    board = Board(counts=capped(destinations))
    if not destinations:
        return board
    edge = charts.floor(now - SETTLE)
    first, _ = charts.window(now)
    keys = {d.pk: (f"board:succeeded:{d.uuid}", f"board:chart:{d.uuid}") for d in destinations}
    cached = cache.get_many([key for pair in keys.values() for key in pair])
    base: dict[int, tuple[int, datetime]] = {}
    kept: dict[int, Buckets] = {}
    since: dict[int, datetime] = {}
    for pk, (succeeded_key, chart_key) in keys.items():
        if succeeded_key in cached:
            entry = cached[succeeded_key]
            base[pk] = (entry["base"], min(_moment(entry["until"]), edge))
        chart = cached.get(chart_key)
        kept[pk], since[pk] = {}, first
        if chart and first < _moment(chart["upto"]) <= edge + charts.BUCKET:
            since[pk] = _moment(chart["upto"])
            kept[pk] = {(_moment(b), s): n for b, s, n in chart["buckets"] if _moment(b) >= first}
    cold = [pk for pk in keys if pk not in base]
    for pk, n in _succeeded_before(cold, edge).items():
        base[pk] = (n, edge)
    lower = {pk: min(since[pk], base[pk][1], now - timedelta(minutes=1)) for pk in keys}
    fresh, recent = _finished_since(lower, now - timedelta(minutes=1))
    store = {}
    for pk, (succeeded_key, chart_key) in keys.items():
        rows = fresh.get(pk, {})
        count, until = base[pk]
        count += sum(n for (b, s), n in rows.items() if s == S.SUCCEEDED and until <= b < edge)
        live = sum(n for (b, s), n in rows.items() if s == S.SUCCEEDED and b >= edge)
        if count + live:
            board.counts.setdefault(pk, {})[S.SUCCEEDED] = count + live
        merged = dict(kept[pk])
        for (b, s), n in rows.items():
            if b >= since[pk]:
                merged[(b, s)] = merged.get((b, s), 0) + n
        board.outcomes[pk] = merged
        board.rates[pk] = recent.get(pk, 0)
        closed = [(_stamp(b), s, n) for (b, s), n in merged.items() if b < edge]
        store[succeeded_key] = {"base": count, "until": _stamp(edge)}
        store[chart_key] = {"upto": _stamp(max(edge, since[pk])), "buckets": closed}
    cache.set_many(store, CACHE_SECONDS)
    return board


def _per_pair(select: str, destinations: list[Destination], states: tuple[str, ...]) -> list[tuple]:
    """Run ``select`` (one row, with %s for destination id and state) for every destination and state, as
    one UNION ALL statement. Each branch gets its own values, so the planner sizes each one with the real
    destination and state (a correlated subquery would get one generic plan for all of them)."""
    if not destinations:
        return []
    pairs = [(d.pk, state) for d in destinations for state in states]
    sql = " UNION ALL ".join([select] * len(pairs))
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for pk, state in pairs for value in (pk, state, pk, state, False)])
        return cursor.fetchall()


def capped(destinations: list[Destination]) -> dict[int, dict[str, int]]:
    """For every destination and state but succeeded, COUNT over at most CAP + 1 rows."""
    delivery = Delivery._meta.db_table  # a model's table name; every value is a parameter
    select = (
        "SELECT CAST(%s AS BIGINT), CAST(%s AS VARCHAR(16)), (SELECT COUNT(*) FROM (SELECT 1 FROM "  # noqa: S608
        f"{delivery} x WHERE x.destination_id = %s AND x.state = %s AND x.is_test = %s LIMIT {CAP + 1:d}) c)"
    )
    out: dict[int, dict[str, int]] = {}
    for pk, state, n in _per_pair(select, destinations, CAPPED_STATES):
        if n:
            out.setdefault(pk, {})[state] = n
    return out


def last_errors(destinations: list[Destination], states: tuple[str, ...]) -> dict[int, Delivery]:
    """The newest non-test delivery with an error per destination: the newest per (destination, state),
    one step down the (destination, state, id) index each, then the newest of those."""
    delivery = Delivery._meta.db_table
    select = (
        "SELECT CAST(%s AS BIGINT), CAST(%s AS VARCHAR(16)), (SELECT x.id FROM "  # noqa: S608
        f"{delivery} x WHERE x.destination_id = %s AND x.state = %s AND x.is_test = %s AND x.last_error <> '' "
        "ORDER BY x.id DESC LIMIT 1)"
    )
    ids = [found for _, _, found in _per_pair(select, destinations, states) if found is not None]
    newest: dict[int, Delivery] = {}
    for row in Delivery.objects.filter(pk__in=ids).only("id", "destination_id", "last_error", "updated_at"):
        if row.destination_id not in newest or row.pk > newest[row.destination_id].pk:
            newest[row.destination_id] = row
    return newest


def _stamp(moment: datetime) -> float:
    return moment.timestamp()


def _moment(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, tz=UTC)


def _succeeded_before(destination_ids: list[int], edge: datetime) -> dict[int, int]:
    """The full count, once per destination after the cache was emptied."""
    if not destination_ids:
        return {}
    found = dict(
        Delivery.objects.filter(
            Q(finished_at__lt=edge) | Q(finished_at__isnull=True),
            destination_id__in=destination_ids,
            is_test=False,
            state=S.SUCCEEDED,
        )
        .order_by()
        .values_list("destination_id")
        .annotate(n=Count("id"))
    )
    return {pk: found.get(pk, 0) for pk in destination_ids}


def _finished_since(
    lower: dict[int, datetime], minute_ago: datetime
) -> tuple[dict[int, Buckets], dict[int, int]]:
    """Deliveries finished since each destination's lower bound, per 10-minute bucket and state; and how
    many of them finished in the last minute."""
    where = Q()
    for pk, start in lower.items():
        where |= Q(destination_id=pk, finished_at__gte=start)
    rows = (
        Delivery.objects.filter(where, is_test=False)
        .order_by()
        .annotate(hour=TruncHour("finished_at"), tenth=Floor(ExtractMinute("finished_at") / 10))
        .values_list("destination_id", "hour", "tenth", "state")
        .annotate(n=Count("id"), recent=Count("id", filter=Q(finished_at__gte=minute_ago)))
    )
    buckets: dict[int, Buckets] = {}
    recent: dict[int, int] = {}
    for pk, hour, tenth, state, n, last_minute in rows:
        bucket = hour + timedelta(minutes=10 * int(tenth))
        buckets.setdefault(pk, {})[(bucket, state)] = n
        recent[pk] = recent.get(pk, 0) + last_minute
    return buckets, recent


def delivered_records(batched: Iterable[Destination]) -> dict[int, int]:
    """Records in succeeded deliveries, for destinations that batch (one delivery, many records)."""
    ids = [d.pk for d in batched]
    if not ids:
        return {}
    rows = (
        DeliveryItem.objects.filter(destination_id__in=ids, is_test=False, delivery__state=S.SUCCEEDED)
        .order_by()
        .values_list("destination_id")
        .annotate(n=Count("id"))
    )
    return dict(rows)
