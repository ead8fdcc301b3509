"""Reading a Nexset's records a page at a time: keyset pagination on ``seq`` and search on a field value.

Pages never use OFFSET: each one starts after (or before) a seq, so page 20,000 of a 1M-record Nexset
costs what page 1 costs (the (nexset, seq) unique index). A search is an exact match on one top-level
field through the JSON key lookup (``data -> 'field'`` on PostgreSQL, ``JSON_EXTRACT`` on SQLite),
typed from the schema so ``price = 19.99`` finds the number and ``zip = 02134`` the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.db.models import Q, QuerySet
from django.db.models.fields.json import KeyTransform

from flows.models import Nexset, Record

PAGE_SIZE = 50


@dataclass
class Page:
    records: list[Record]
    has_prev: bool = False
    has_next: bool = False
    name: str = ""
    text: str = ""
    searching: bool = False
    columns: list[str] = field(default_factory=list)

    @property
    def query(self) -> str:
        """The search, as query-string parameters for the pager's links."""
        return urlencode({"field": self.name, "value": self.text}) if self.searching else ""

    @property
    def first_seq(self) -> int | None:
        return self.records[0].seq if self.records else None

    @property
    def last_seq(self) -> int | None:
        return self.records[-1].seq if self.records else None


def candidates(text: str, kind: str) -> list[Any]:
    """The JSON values a typed-in search text may mean for a field of type ``kind``."""
    values: list[Any] = []
    stripped = text.strip()
    if stripped.lower() == "null":
        values.append(None)
    if kind in ("boolean", "mixed") and stripped.lower() in ("true", "false"):
        values.append(stripped.lower() == "true")
    if kind in ("integer", "number", "mixed"):
        try:
            number = float(stripped)
        except ValueError:
            pass
        else:
            if number == number and abs(number) != float("inf"):
                values.append(int(number) if number.is_integer() and "." not in stripped else number)
    if kind not in ("integer", "number", "boolean", "null") or not values:
        values.append(text)
    return values


def search(queryset: QuerySet[Record], name: str, text: str, kind: str) -> QuerySet[Record]:
    query = Q()
    for value in candidates(text, kind):
        query |= Q(_value=value)
    return queryset.alias(_value=KeyTransform(name, "data")).filter(query)


def page(
    nexset: Nexset,
    *,
    after: int | None = None,
    before: int | None = None,
    last: bool = False,
    name: str = "",
    text: str = "",
    size: int = PAGE_SIZE,
) -> Page:
    """One page of records in seq order: after a seq (next), before one (previous), or the last page."""
    queryset = Record.objects.filter(nexset=nexset).only("seq", "data", "source_ref", "created_at")
    searching = bool(name and name in nexset.schema)
    if searching:
        queryset = search(queryset, name, text, nexset.schema[name].get("type", "string"))
    if before is not None or last:
        window = queryset.filter(seq__lt=before) if before is not None else queryset
        rows = list(window.order_by("-seq")[: size + 1])
        has_prev = len(rows) > size
        rows = rows[:size][::-1]
        has_next = before is not None and _any(queryset.filter(seq__gte=before).order_by("seq"))
    else:
        start = after or 0
        rows = list(queryset.filter(seq__gt=start).order_by("seq")[: size + 1])
        has_next = len(rows) > size
        rows = rows[:size]
        has_prev = start > 0 and _any(queryset.filter(seq__lte=start).order_by("-seq"))
    return Page(rows, has_prev, has_next, name if searching else "", text if searching else "", searching)


def _any(queryset: QuerySet[Record]) -> bool:
    """Like exists(), but keeps the seq order so PostgreSQL walks the (nexset, seq) index."""
    return bool(queryset.values_list("seq", flat=True)[:1])


def number(raw: str | None) -> int | None:
    """A seq from a query string, or None for anything that is not a non-negative whole number."""
    if raw is None or not raw.isdigit() or len(raw) > 18:
        return None
    return int(raw)
