"""Schema inference: field -> {type, nullable, example, count}, merged as records arrive."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

EXAMPLE_MAX = 80


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string"


def _merge_type(old: str | None, new: str) -> str:
    if old is None or old == "null":
        return new
    if new == "null" or new == old:
        return old
    if {old, new} == {"integer", "number"}:
        return "number"
    return "mixed"


def merge(schema: Mapping[str, Any], records: Iterable[Mapping[str, Any]], *, seen: int) -> dict[str, Any]:
    """Return ``schema`` updated with ``records``. ``seen`` is how many records the schema already covers."""
    fields: dict[str, dict[str, Any]] = {name: dict(info) for name, info in schema.items()}
    total = seen
    for record in records:
        total += 1
        for name, value in record.items():
            info = fields.get(name)
            if info is None:
                # Records before this one lacked the field: it is nullable unless this is the first record.
                info = fields[name] = {"type": None, "nullable": total > 1, "example": None, "count": 0}
            kind = type_name(value)
            info["type"] = _merge_type(info["type"], kind)
            info["count"] += 1
            if value is None:
                info["nullable"] = True
            elif info["example"] is None:
                text = value if isinstance(value, str) else repr(value)
                info["example"] = text[:EXAMPLE_MAX]
        for name, info in fields.items():
            if name not in record:
                info["nullable"] = True
    for info in fields.values():
        if info["type"] is None:
            info["type"] = "null"
    return fields
