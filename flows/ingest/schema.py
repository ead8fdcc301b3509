"""Schema inference: field -> {type, nullable, example, count}, merged as records arrive."""

from __future__ import annotations

import json
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
                info["example"] = example_text(value)
        for name, info in fields.items():
            if name not in record:
                info["nullable"] = True
    for info in fields.values():
        if info["type"] is None:
            info["type"] = "null"
    return fields


def example_text(value: Any) -> str:
    """A short example as a person reads it: strings as they are, everything else as JSON."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text[:EXAMPLE_MAX]


def combine(
    old: Mapping[str, Any], old_seen: int, new: Mapping[str, Any], new_seen: int
) -> dict[str, dict[str, Any]]:
    """The schema of ``old_seen`` records described by ``old`` followed by ``new_seen`` described by ``new``
    (what ``merge`` gives when fed both lots of records one after the other)."""
    fields: dict[str, dict[str, Any]] = {}
    for name in list(old) + [n for n in new if n not in old]:
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            info = dict(a or b)  # type: ignore[arg-type]
            info["nullable"] = bool(info["nullable"] or (old_seen if a is None else new_seen) > 0)
        else:
            info = {
                "type": _merge_type(a["type"], b["type"]),
                "nullable": bool(a["nullable"] or b["nullable"]),
                "example": a["example"] if a["example"] is not None else b["example"],
                "count": a["count"] + b["count"],
            }
        fields[name] = info
    return fields


TYPE_WORDS = {"integer": "whole numbers", "number": "numbers", "boolean": "true/false", "string": "text"}


def conflicts(existing: Mapping[str, Any], incoming: Mapping[str, Any]) -> list[str]:
    """Why records described by ``incoming`` do not fit a Nexset described by ``existing`` (empty: they do).

    A field may be new or missing (it becomes nullable), and whole numbers fit number fields; a field
    whose values change kind (numbers to text, text to true/false...) does not fit, and neither does a
    file sharing no field with the Nexset.
    """
    if not existing:
        return []
    problems = []
    shared = [name for name in incoming if name in existing]
    if incoming and not shared:
        problems.append(
            f"None of the file's fields ({_names(incoming)}) is in the Nexset ({_names(existing)})."
        )
    for name in shared:
        old, new = existing[name]["type"], incoming[name]["type"]
        if old != "mixed" and _merge_type(old, new) == "mixed":
            problems.append(
                f"Field “{name}” holds {TYPE_WORDS.get(new, new)} in the file but "
                f"{TYPE_WORDS.get(old, old)} in the Nexset."
            )
    return problems


def _names(schema: Mapping[str, Any], limit: int = 6) -> str:
    names = list(schema)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
