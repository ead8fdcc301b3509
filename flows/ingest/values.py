"""How text values become typed JSON values, and which JSON values we keep.

Typing is per column and only where it is unambiguous (the whole column agrees):

- **integer**: ``-?(0|[1-9][0-9]*)`` within +-(2**53 - 1), the range every JSON reader (JavaScript
  included) holds exactly. Leading zeros (``007``, zip codes) or longer digit strings (account numbers)
  keep the column as text.
- **number**: integers and plain decimals (``19.99``, ``-0.5``; no exponent, no thousands separators,
  no decimal comma) whose value a double holds exactly, i.e. about 15 significant digits. The JSON we
  store is the file's own digits, so nothing is rounded. A column with one value a double cannot hold
  exactly stays text, so no digit is ever lost.
- **boolean**: ``true`` / ``false`` in any letter case (``0``/``1`` are integers; ``yes``/``no`` stay text).
- An empty cell is JSON null in every column; a column with no value at all has type null.
- Anything else is text, as written. The "keep everything as text" switch skips typing (empty cells
  then stay empty strings).

JSON input keeps its own types, with the same promise for decimals: a JSON number with more digits than
a double holds is kept as a string of its exact digits, and NaN/Infinity (not JSON) are refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

MAX_SAFE_INT = 2**53 - 1
MAX_DEPTH = 32

_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,15})")
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
_BOOLEANS = {"true": "true", "false": "false"}

INTEGER, NUMBER, BOOLEAN, STRING, NULL = "integer", "number", "boolean", "string", "null"


def is_integer(text: str) -> bool:
    return _INT.fullmatch(text) is not None and (len(text) < 16 or abs(int(text)) <= MAX_SAFE_INT)


def exact_float(text: str) -> bool:
    """True when ``float(text)`` holds the same decimal value as ``text``."""
    value = float(text)
    if not math.isfinite(value):
        return False
    shortest = repr(value)
    return shortest == text or Decimal(shortest) == Decimal(text)


def is_number(text: str) -> bool:
    return is_integer(text) or (_DECIMAL.fullmatch(text) is not None and exact_float(text))


def is_boolean(text: str) -> bool:
    return text.lower() in _BOOLEANS


_CHECKS: dict[str, Callable[[str], bool]] = {INTEGER: is_integer, NUMBER: is_number, BOOLEAN: is_boolean}
# Whole batches at once ("\n"-joined cells, empty ones included): short integers and decimals of at most
# 15 characters are always exact in a double, so only longer values need ``_CHECKS`` one by one.
_BATCH_CHECKS = {
    INTEGER: re.compile(r"(?:(?=-?[0-9]{1,15}\n)-?(?:0|[1-9][0-9]*))?\n", re.ASCII),
    NUMBER: re.compile(r"(?:(?=-?[0-9.]{1,15}\n)-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?)?\n", re.ASCII),
    BOOLEAN: re.compile(r"(?:[tT][rR][uU][eE]|[fF][aA][lL][sS][eE])?\n"),
}
_BATCH_CHECKS = {kind: re.compile(f"(?:{rx.pattern})*", rx.flags) for kind, rx in _BATCH_CHECKS.items()}


class Column:
    """What one CSV column holds, gathered batch by batch in the checking pass."""

    __slots__ = ("count", "empty", "example", "kinds", "name")

    def __init__(self, name: str, *, text: bool = False) -> None:
        self.name = name
        self.kinds = set() if text else {INTEGER, NUMBER, BOOLEAN}
        self.count = 0
        self.empty = 0
        self.example: str | None = None

    def feed(self, values: Sequence[str]) -> None:
        self.count += len(values)
        self.empty += values.count("")
        if self.example is None:
            self.example = next((v for v in values if v), None)
        if not self.kinds:
            return
        joined = "\n".join(values) + "\n"
        whole = joined.count("\n") == len(values)  # no cell holds a line break
        distinct: set[str] | None = None
        for kind in list(self.kinds):
            if whole and _BATCH_CHECKS[kind].fullmatch(joined):
                continue
            if distinct is None:
                distinct = set(values)
                distinct.discard("")
            if not all(map(_CHECKS[kind], distinct)):
                self.kinds.discard(kind)

    @property
    def kind(self) -> str:
        if self.count == self.empty and self.kinds:
            return NULL
        for kind in (INTEGER, NUMBER, BOOLEAN):
            if kind in self.kinds:
                return kind
        return STRING

    def schema(self, *, text: bool) -> dict[str, Any]:
        kind = STRING if text and self.count > 0 else self.kind
        nullable = self.empty > 0 and not text
        example = self.example[:80] if self.example is not None else None
        return {"type": kind, "nullable": nullable, "example": example, "count": self.count}


def encoder(kind: str, *, text: bool) -> Callable[[Iterable[str]], list[str]]:
    """A function turning one column's cells into JSON texts, for the storing pass."""
    if text:
        return lambda values: list(map(encode_basestring, values))
    if kind in (INTEGER, NUMBER):
        return lambda values: [v or "null" for v in values]
    if kind == BOOLEAN:
        return lambda values: [_BOOLEANS[v.lower()] if v else "null" for v in values]
    if kind == NULL:
        return lambda values: ["null" for _ in values]
    return lambda values: [encode_basestring(v) if v else "null" for v in values]


def typed(text: str, kind: str) -> Any:
    """One cell as the value the storing pass writes (for tests and previews; not the fast path)."""
    return json.loads(encoder(kind, text=False)([text])[0])


# JSON input ----------------------------------------------------------------------------------------


class JsonNumbers:
    """``parse_float``/``parse_constant`` hooks: exact decimals, and a flag when NaN/Infinity is seen."""

    def __init__(self) -> None:
        self.constant = False

    def parse_float(self, text: str) -> float | str:
        value = float(text)
        if math.isfinite(value) and exact_float(text):
            return value
        return text  # more digits than a double holds, or out of its range: keep them all

    def parse_constant(self, text: str) -> None:
        self.constant = True
        return None


_SUSPECT = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, bool):
        return f"the JSON value {json.dumps(value)}"
    if isinstance(value, int | float):
        return "a JSON number"
    if value is None:
        return "JSON null"
    return "a JSON object"


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def record_problem(value: Any, raw: str, numbers: JsonNumbers) -> str | None:
    """Why a parsed JSON value cannot be stored as a record, or None when it can."""
    if not isinstance(value, dict):
        return f"is {kind_of(value)}, not an object: each record must be a JSON object"
    if numbers.constant:
        return "holds NaN or Infinity, which JSON does not allow: use null or a number"
    if any(isinstance(v, dict | list) for v in value.values()) and too_deep(value):
        return f"is nested more than {MAX_DEPTH} levels deep"
    if _SUSPECT.search(raw):
        text = json.dumps(value, ensure_ascii=False)
        if _NUL_ESCAPE.search(text):
            return "holds a NUL character (\\u0000), which the database cannot store"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "holds an unpaired UTF-16 surrogate (\\ud800-\\udfff), which is not text"
    return None


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))
