"""Rules of the Clazar simulator: field validation (from the endpoint catalog), dates, numbers, masking.

Stdlib only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from clazar_dest.clazar.endpoints import CHOICES, FIELD_TYPES, REQUIRED_FIELDS

# JSON keys and headers masked in the request log.
SECRET_KEYS = frozenset({"client_secret", "access_token", "refresh_token", "password", "secret"})
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_when(value: object) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return False


def validate(resource: str, data: dict, partial: bool = False) -> dict[str, list[str]]:
    """DRF-style field errors for `data` under the catalog's rules."""
    errors: dict[str, list[str]] = {}
    for name in REQUIRED_FIELDS.get(resource, ()):
        if name not in data:
            if not partial:
                errors[name] = ["This field is required."]
        elif data[name] is None:
            errors[name] = ["This field may not be null."]
        elif isinstance(data[name], str) and not data[name].strip():
            errors[name] = ["This field may not be blank."]
    for name, options in CHOICES.get(resource, {}).items():
        value = data.get(name)
        if name not in errors and value is not None and value not in options:
            errors[name] = [f'"{value}" is not a valid choice.']
    for name, kind in FIELD_TYPES.get(resource, {}).items():
        value = data.get(name)
        if name in errors or value is None:
            continue
        if kind == "number" and not is_number(value):
            errors[name] = ["A valid number is required."]
        if kind == "datetime" and parse_when(value) is None:
            errors[name] = [
                "Datetime has wrong format. Use one of these formats instead: "
                "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
            ]
    return errors


def type_name(value: Any) -> str:
    return {list: "list", str: "str", int: "int", float: "float", bool: "bool"}.get(type(value), "null")


CONFIG_CHECKS: dict[str, Callable[[Any], bool]] = {
    "expires_in": lambda v: is_number(v) and not isinstance(v, str) and v > 0,
    "rate_limit": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "rate_window": lambda v: is_number(v) and not isinstance(v, str) and v > 0,
    "rate_scope": lambda v: v in ("token", "client"),
    "idempotency": lambda v: isinstance(v, bool),
    "page_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "max_page_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
}
