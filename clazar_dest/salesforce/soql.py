"""Build SOQL safely: checked names, escaped literals, a vetted user filter. Pure functions, no I/O.

``select()`` is the one query the sync runs: the chosen fields plus ``Id`` and ``SystemModstamp``, the
user's filter in parentheses, ``SystemModstamp >= <since>`` for incremental reads, ordered by
``SystemModstamp, Id`` so a page boundary never skips a record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal

MAX_FILTER = 4000
MAX_DEPTH = 5  # Salesforce follows at most five child-to-parent relationships in one field path

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,79}")
_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}
_CLAUSES = re.compile(r"\b(SELECT|FROM|LIMIT|OFFSET|HAVING|ORDER\s+BY|GROUP\s+BY)\b", re.IGNORECASE)
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})")


def sobject_name(name: str) -> str:
    """An sObject API name (``Opportunity``, ``ns__Thing__c``); ValueError otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{_show(name)} is not a Salesforce object name: use the API name, like Opportunity or Thing__c."
        )
    return name


def field_path(name: str) -> str:
    """A field API name, possibly through parent relationships (``Name``, ``Account.Name``,
    ``Custom__c``, ``Owner.Manager.Email``); ValueError otherwise."""
    parts = name.split(".") if isinstance(name, str) else []
    if not parts or len(parts) > MAX_DEPTH + 1 or not all(_NAME.fullmatch(part) for part in parts):
        raise ValueError(
            f"{_show(name)} is not a Salesforce field name: use API names like Name, Account.Name or "
            "Custom__c (letters, digits and underscores, relationships joined with dots)."
        )
    return name


def literal(value: object) -> str:
    """``value`` written as a SOQL literal. Strings are quoted and escaped; datetimes must be aware and are
    written in UTC to the second."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        number = Decimal(repr(value)) if isinstance(value, float) else value
        if not number.is_finite():
            raise ValueError(f"{value!r} can't be written in SOQL: only finite numbers can.")
        return format(number, "f")
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(
                f"The datetime {value.isoformat()} has no time zone: SOQL needs an exact instant (use UTC)."
            )
        return value.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat() + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return "'" + "".join(_ESCAPES.get(char, char) for char in value) + "'"
    raise TypeError(f"A {type(value).__name__} can't be written as a SOQL literal.")


def check_filter(text: str) -> str:
    """A user's WHERE condition, stripped, if it is safe to put inside ``WHERE ( ... )``: quotes and
    parentheses balanced, no ``;`` and no other clause (SELECT, FROM, LIMIT, OFFSET, ORDER BY, GROUP BY,
    HAVING) outside quotes. ValueError with what is wrong and where otherwise; "" stays ""."""
    text = (text or "").strip()
    if len(text) > MAX_FILTER:
        raise ValueError(f"The filter is {len(text)} characters long; at most {MAX_FILTER} are allowed.")
    outside = []  # the text with each quoted string blanked, for the keyword check
    depth = 0
    opened: list[int] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "'":
            start = i
            i += 1
            while i < len(text) and text[i] != "'":
                i += 2 if text[i] == "\\" else 1
            if i >= len(text):
                raise ValueError(
                    f"The filter has a quote at character {start + 1} that is never closed: close the text "
                    "with ' (write \\' for a quote inside the text)."
                )
            outside.append(" " * (i - start + 1))
            i += 1
            continue
        if char == '"':
            raise ValueError(
                f"The filter has a double quote at character {i + 1}: SOQL text goes in single quotes, "
                "like StageName = 'Closed Won'."
            )
        if char in ";\\":
            raise ValueError(f"The filter can't contain {char!r} (found at character {i + 1}).")
        if char == "(":
            depth += 1
            opened.append(i)
        elif char == ")":
            if depth == 0:
                raise ValueError(f"The filter has a ')' at character {i + 1} without a matching '('.")
            depth -= 1
            opened.pop()
        outside.append(char)
        i += 1
    if depth:
        raise ValueError(f"The filter has a '(' at character {opened[-1] + 1} that is never closed.")
    found = _CLAUSES.search("".join(outside))
    if found:
        keyword = " ".join(found.group(1).upper().split())
        raise ValueError(
            f"The filter can't contain {keyword} (outside quotes): write only the condition, like "
            "StageName = 'Closed Won' AND Amount > 1000."
        )
    return text


def select(
    object_name: str,
    fields: Iterable[str],
    *,
    where: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> str:
    """``SELECT <fields> FROM <object> [WHERE (<where>) AND SystemModstamp >= <since>]
    ORDER BY SystemModstamp, Id [LIMIT n]``. The fields keep their order without repeats (compared
    without case, as Salesforce does); ``Id`` and ``SystemModstamp`` are added when missing."""
    name = sobject_name(object_name)
    if isinstance(fields, str):
        raise TypeError("fields must be a list of field names, not one string.")
    chosen: dict[str, str] = {}
    for field in fields:
        chosen.setdefault(field_path(field).lower(), field)
    columns = list(chosen.values())
    if "id" not in chosen:
        columns.insert(0, "Id")
    if "systemmodstamp" not in chosen:
        columns.append("SystemModstamp")
    conditions = []
    condition = check_filter(where or "")
    if condition:
        conditions.append(f"({condition})")
    if since is not None:
        conditions.append(f"SystemModstamp >= {literal(since)}")
    query = f"SELECT {', '.join(columns)} FROM {name}"  # noqa: S608 (names checked above)
    if conditions:
        query += " WHERE " + " AND ".join(conditions)
    query += " ORDER BY SystemModstamp, Id"
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive whole number, not {limit!r}.")
        query += f" LIMIT {limit}"
    return query


def parse_datetime(value: str) -> datetime:
    """An aware UTC datetime from Salesforce's ``2026-01-31T10:00:00.000+0000`` or an ISO 8601 form with
    an offset (``...Z``, ``...+00:00``). ValueError for anything else, including a missing offset."""
    if not isinstance(value, str) or not _DATETIME.fullmatch(value.strip()):
        raise ValueError(
            f"{_show(value)} is not a Salesforce datetime (expected like 2026-01-31T10:00:00.000+0000)."
        )
    try:
        return datetime.fromisoformat(value.strip()).astimezone(UTC)
    except ValueError:
        raise ValueError(f"{_show(value)} is not a valid date and time.") from None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
