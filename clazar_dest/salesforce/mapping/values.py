"""Helpers every part of the mapping uses on Salesforce values: emptiness, case-insensitive field lookup, the
text a value map looks up, how a value is shown in a message, and ``_Fail`` (a value that can't be used).
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from jinja2.runtime import Undefined


class _Fail(Exception):
    """A value that can't be used. ``reason`` ("is not a date") is the message without the value and the
    hint, for the checks that name the value themselves."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or message


def _bad(value: Any, reason: str, hint: str = "") -> _Fail:
    return _Fail(f"{_show(value)} {reason}" + (f"; {hint}" if hint else ""), reason)


def _empty(value: Any) -> bool:
    if value is None or isinstance(value, Undefined):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, dict, tuple)):
        return not value
    return False


def _lookup(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = _get(value, key)
    return value


def _get(obj: dict[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    folded = key.casefold()
    for name, value in obj.items():
        if isinstance(name, str) and name.casefold() == folded:
            return value
    return None


def _key(value: Any) -> str | None:
    """The text a value map looks up."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "…" + text[-1]


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, timedelta):
        return "a time span (add it to a date: today + days(15))"
    return f"a {type(value).__name__} ({_show(value)})"
