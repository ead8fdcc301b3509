"""A destination's delivery history: one filter, keyset pages, and the rows of the CSV export.

The same ``Filters`` builds the queryset for the history page, the CSV export and the bulk actions
(``flows.actions``), so what a bulk action previews is what it changes. Pages never use OFFSET: each one
starts below (older) or above (newer) a delivery id, so the 20,000th page costs what the first costs. A
record filter ``field=value`` is an exact match on a top-level field of the delivery's records through the
JSON key lookup (``data -> 'field'`` on PostgreSQL, ``JSON_EXTRACT`` on SQLite), typed from the Nexset's
schema the way the Nexset record search is.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db import connection
from django.db.models import Q, QuerySet
from django.db.models.fields.json import KeyTransform
from django.http import QueryDict
from django.utils import timezone

from flows import browse
from flows.models import Delivery, DeliveryItem, Destination, Record

PAGE_SIZE = 50
# A record filter matching up to this many records looks them up first, then their deliveries by index.
MATCH_LIMIT = 5000
EXPORT_CHUNK = 2000
S = Delivery.State

# Filter choices beyond single states: (value, label, states).
GROUPS = (
    ("pending", "Pending (not finished)", (S.QUEUED, S.SENDING, S.RETRY_SCHEDULED, S.UNKNOWN)),
    ("problems", "Problems (need a look)", (S.FAILED, S.EXHAUSTED, S.NEEDS_ATTENTION)),
)
PERIODS = (
    ("", "Any time"),
    ("1h", "Last hour"),
    ("24h", "Last 24 hours"),
    ("7d", "Last 7 days"),
    ("custom", "Between…"),
)
_SPANS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}


def states_for(value: str) -> tuple[str, ...]:
    """The states a state filter value stands for (empty: any state)."""
    for key, _label, states in GROUPS:
        if value == key:
            return tuple(states)
    return (value,) if value in S.values else ()


def _moment(raw: str) -> datetime | None:
    """A datetime typed in a ``datetime-local`` input (or ISO 8601), in the current time zone."""
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    return timezone.make_aware(value) if timezone.is_naive(value) else value


@dataclass(frozen=True)
class Filters:
    """What the history shows. ``problems`` lists what could not be understood, for the form to say."""

    state: str = ""
    status: str = ""
    period: str = ""
    since: str = ""
    until: str = ""
    record: str = ""
    tests: bool = False
    problems: tuple[str, ...] = ()
    # Resolved from the raw values above by ``parse``.
    start: datetime | None = None
    end: datetime | None = None
    field_name: str = ""
    field_values: tuple[Any, ...] = ()

    @classmethod
    def parse(cls, query: QueryDict | dict[str, str], destination: Destination) -> Filters:
        get = query.get
        raw = cls(
            state=(get("state") or "").strip(),
            status=(get("status") or "").strip(),
            period=(get("period") or "").strip(),
            since=(get("since") or "").strip(),
            until=(get("until") or "").strip(),
            record=(get("record") or "").strip(),
            tests=(get("tests") or "") in ("1", "on", "true"),
        )
        return raw._resolved(destination, timezone.now())

    def _resolved(self, destination: Destination, now: datetime) -> Filters:
        problems: list[str] = []
        state = self.state if states_for(self.state) else ""
        if self.state and not state:
            problems.append(f"“{self.state}” is not a delivery state.")
        status = self.status
        if status and status.lower() != "none" and not (status.isdigit() and 100 <= int(status) <= 599):
            problems.append("Status code: type an HTTP status such as 400 or 503, or “none”.")
            status = ""
        start = end = None
        period = self.period if self.period in dict(PERIODS) else ""
        if period in _SPANS:
            start = now - _SPANS[period]
        elif period == "custom":
            start, end = (
                _moment(self.since) if self.since else None,
                _moment(self.until) if self.until else None,
            )
            if (self.since and start is None) or (self.until and end is None):
                problems.append("Time range: use dates such as 2025-11-25 14:30.")
        name, values = "", ()
        if self.record:
            name, sep, text = self.record.partition("=")
            name = name.strip()
            schema = destination.nexset.schema or {}
            if not sep or not name:
                problems.append("Record filter: write field=value, for example buyer=123456789012.")
                name = ""
            elif name not in schema:
                known = ", ".join(list(schema)[:8]) or "none yet"
                problems.append(f"Record filter: the records have no field “{name}” (fields: {known}).")
                name = ""
            else:
                values = tuple(browse.candidates(text.strip(), schema[name].get("type", "string")))
        return replace(
            self,
            state=state,
            status=status,
            period=period,
            problems=tuple(problems),
            start=start,
            end=end,
            field_name=name,
            field_values=values,
        )

    @property
    def active(self) -> bool:
        return bool(self.state or self.status or self.start or self.end or self.field_name)

    def apply(self, queryset: QuerySet[Delivery], destination: Destination) -> QuerySet[Delivery]:
        queryset = queryset.filter(destination=destination, is_test=self.tests)
        states = states_for(self.state)
        if states:
            queryset = (
                queryset.filter(state__in=states) if len(states) > 1 else queryset.filter(state=states[0])
            )
        if self.status.lower() == "none":
            queryset = queryset.filter(last_status__isnull=True)
        elif self.status:
            queryset = queryset.filter(last_status=int(self.status))
        if self.start:
            queryset = queryset.filter(finished_at__gte=self.start)
        if self.end:
            queryset = queryset.filter(finished_at__lt=self.end)
        if self.field_name:
            matching = _records_with(destination, self.field_name, self.field_values)
            found = list(matching[: MATCH_LIMIT + 1])
            records: Any = found if len(found) <= MATCH_LIMIT else matching
            items = DeliveryItem.objects.filter(
                destination=destination, is_test=self.tests, record_id__in=records
            ).values("delivery_id")
            queryset = queryset.filter(pk__in=items)
        return queryset

    def params(self, *, absolute: bool = False) -> dict[str, str]:
        """The filter as query parameters. ``absolute`` pins a relative period to the times it resolved to,
        so a confirmation posted later acts on the same window."""
        out: dict[str, str] = {}
        if self.state:
            out["state"] = self.state
        if self.status:
            out["status"] = self.status
        if absolute and self.period in _SPANS:
            out["period"] = "custom"
            if self.start:
                out["since"] = self.start.isoformat()
        elif self.period:
            out["period"] = self.period
            if self.period == "custom":
                out.update({k: v for k, v in (("since", self.since), ("until", self.until)) if v})
        if self.field_name:
            out["record"] = self.record
        if self.tests:
            out["tests"] = "1"
        return out

    @property
    def query(self) -> str:
        return urlencode(self.params())

    def describe(self) -> str:
        """The filter in words, for confirmations and the audit trail."""
        parts = []
        if self.state:
            parts.append(dict((k, label) for k, label, _ in GROUPS).get(self.state) or S(self.state).label)
        if self.status:
            parts.append("no HTTP status" if self.status.lower() == "none" else f"HTTP {self.status}")
        if self.start or self.end:
            fmt = "%Y-%m-%d %H:%M"
            since = timezone.localtime(self.start).strftime(fmt) if self.start else "the start"
            until = timezone.localtime(self.end).strftime(fmt) if self.end else "now"
            parts.append(f"finished between {since} and {until}")
        if self.field_name:
            parts.append(f"records with {self.record}")
        if self.tests:
            parts.append("test sends")
        return ", ".join(parts) or "all deliveries"


def _records_with(destination: Destination, name: str, values: Iterable[Any]) -> QuerySet[Record]:
    """The ids of the Nexset's records whose field ``name`` is one of ``values``. On PostgreSQL this is
    JSON containment (``data @> '{"name": value}'``), which a GIN index on ``data`` can answer."""
    records = Record.objects.filter(nexset_id=destination.nexset_id).order_by()
    query = Q()
    if connection.vendor == "postgresql":
        for value in values:
            query |= Q(data__contains={name: value})
        return records.filter(query).values_list("pk", flat=True)
    for value in values:
        query |= Q(_value=value)
    return records.alias(_value=KeyTransform(name, "data")).filter(query).values_list("pk", flat=True)


@dataclass
class Page:
    rows: list[Delivery]
    filters: Filters
    has_newer: bool = False
    has_older: bool = False
    seqs: dict[int, list[int]] = field(default_factory=dict)

    @property
    def newest_id(self) -> int | None:
        return self.rows[0].pk if self.rows else None

    @property
    def oldest_id(self) -> int | None:
        return self.rows[-1].pk if self.rows else None


LIST_FIELDS = (
    "id",
    "uuid",
    "destination_id",
    "state",
    "is_test",
    "attempts",
    "next_attempt_at",
    "method",
    "url",
    "target_id",
    "created_object_id",
    "last_status",
    "last_error",
    "created_at",
    "finished_at",
)


def base(destination: Destination, filters: Filters) -> QuerySet[Delivery]:
    return filters.apply(Delivery.objects.only(*LIST_FIELDS), destination)


def page(
    destination: Destination,
    filters: Filters,
    *,
    before: int | None = None,
    after: int | None = None,
    size: int | None = None,
) -> Page:
    """Newest first. ``before``: the page of older rows below that id; ``after``: newer rows above it.
    Rows are never deleted one by one, so a page reached through a pager link always has a way back."""
    size = size or PAGE_SIZE
    queryset = base(destination, filters)
    if after is not None and before is None:
        rows = list(queryset.filter(pk__gt=after).order_by("pk")[: size + 1])
        has_newer = len(rows) > size
        rows = rows[:size][::-1]
        has_older = True
    else:
        window = queryset.filter(pk__lt=before) if before is not None else queryset
        rows = list(window.order_by("-pk")[: size + 1])
        has_older = len(rows) > size
        rows = rows[:size]
        has_newer = before is not None
    result = Page(rows, filters, has_newer=has_newer, has_older=has_older)
    result.seqs = seqs_of([row.pk for row in rows])
    return result


def seqs_of(delivery_ids: list[int]) -> dict[int, list[int]]:
    """The record seqs each delivery covers."""
    out: dict[int, list[int]] = defaultdict(list)
    if delivery_ids:
        pairs = (
            DeliveryItem.objects.filter(delivery_id__in=delivery_ids)
            .order_by("record__seq")
            .values_list("delivery_id", "record__seq")
        )
        for delivery_id, seq in pairs:
            out[delivery_id].append(seq)
    return dict(out)


def seq_label(seqs: list[int]) -> str:
    """#7, #7, #9 or #100–#199 (100)."""
    if not seqs:
        return "–"
    if len(seqs) == 1:
        return f"#{seqs[0]}"
    if len(seqs) == 2:
        return f"#{seqs[0]}, #{seqs[1]}"
    return f"#{seqs[0]}–#{seqs[-1]} ({len(seqs)})"


# CSV export ----------------------------------------------------------------------------------------------

CSV_HEADER = (
    "delivery",
    "state",
    "method",
    "url",
    "http_status",
    "attempts",
    "records",
    "target_id",
    "created_object_id",
    "last_error",
    "created_at",
    "finished_at",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """Text that a spreadsheet would run as a formula gets a leading quote (OWASP CSV injection)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_lines(destination: Destination, filters: Filters) -> Iterator[str]:
    """The filtered history as CSV lines, newest first, read in keyset chunks (constant memory)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_HEADER)
    queryset = base(destination, filters)
    before: int | None = None
    while True:
        window = queryset.filter(pk__lt=before) if before is not None else queryset
        rows = list(window.order_by("-pk")[:EXPORT_CHUNK])
        if not rows:
            return
        seqs = seqs_of([row.pk for row in rows])
        for row in rows:
            cells = (
                str(row.uuid),
                row.state,
                row.method,
                row.url,
                row.last_status if row.last_status is not None else "",
                row.attempts,
                " ".join(str(seq) for seq in seqs.get(row.pk, [])),
                row.target_id,
                row.created_object_id,
                row.last_error,
                row.created_at.isoformat(),
                row.finished_at.isoformat() if row.finished_at else "",
            )
            yield writer.writerow([safe_cell(cell) for cell in cells])
        before = rows[-1].pk
