"""The field-mapping form: POST fields <-> the mapping's JSON (clazar_dest/salesforce/mapping/).

Per Clazar field ``t``: ``m-t-source`` (""/field/constant/expression), ``m-t-value``, a fallback
``m-t-fb-source`` / ``m-t-fb-value``, a value map ``m-t-values`` (lines "Salesforce value = Clazar value")
and ``m-t-default`` (used when the map has no entry). Custom properties are rows ``cp-i-name``,
``cp-i-source``, ``cp-i-value``.
"""

from __future__ import annotations

from typing import Any

from django.http import QueryDict

from clazar_dest.salesforce.mapping import TARGETS

EXTRA_ROWS = 3


def _rule(data: QueryDict, prefix: str) -> dict[str, Any] | None:
    source = data.get(f"{prefix}-source", "").strip()
    if not source:
        return None
    rule: dict[str, Any] = {"source": source, "value": data.get(f"{prefix}-value", "")}
    fb_source = data.get(f"{prefix}-fb-source", "").strip()
    if fb_source:
        rule["fallback"] = {"source": fb_source, "value": data.get(f"{prefix}-fb-value", "")}
    values = parse_values(data.get(f"{prefix}-values", ""))
    if values:
        rule["values"] = values
    default = data.get(f"{prefix}-default", "").strip()
    if default:
        rule["values_default"] = default
    return rule


def parse_values(text: str) -> dict[str, str]:
    """Lines "Closed Won = launched" -> {"Closed Won": "launched"}; blank lines skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        left, sep, right = line.partition("=")
        out[left.strip()] = right.strip() if sep else ""
    return out


def from_post(data: QueryDict) -> dict[str, Any]:
    fields = {}
    for target in TARGETS:
        rule = _rule(data, f"m-{target.name}")
        if rule is not None:
            fields[target.name] = rule
    custom = {}
    index = 0
    while f"cp-{index}-name" in data:
        name = data.get(f"cp-{index}-name", "").strip()
        rule = _rule(data, f"cp-{index}")
        if name and rule is not None:
            custom[name] = rule
        elif name or rule is not None:
            custom[name or f"(row {index + 1})"] = rule or {"source": "", "value": ""}
        index += 1
    return {"fields": fields, "custom_properties": custom}


def rows(mapping_json: dict[str, Any] | None, errors: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """What the template shows: one row per target and the custom property rows (+ empty ones)."""
    mapping_json = mapping_json or {}
    errors = errors or {}
    fields = mapping_json.get("fields") or {}
    targets = []
    for target in TARGETS:
        rule = fields.get(target.name) or {}
        targets.append({"target": target, "rule": _show(rule), "errors": errors.get(target.name, [])})
    custom = []
    for name, rule in (mapping_json.get("custom_properties") or {}).items():
        custom.append(
            {"name": name, "rule": _show(rule or {}), "errors": errors.get(f"custom_properties.{name}", [])}
        )
    for _ in range(EXTRA_ROWS):
        custom.append({"name": "", "rule": _show({}), "errors": []})
    other = [
        msg for key, msgs in errors.items() if key in ("fields", "custom_properties", "") for msg in msgs
    ]
    return {"targets": targets, "custom": custom, "other_errors": other}


def _show(rule: dict[str, Any]) -> dict[str, Any]:
    fallback = rule.get("fallback") or {}
    values = rule.get("values") or {}
    return {
        "source": rule.get("source", ""),
        "value": rule.get("value", ""),
        "fb_source": fallback.get("source", ""),
        "fb_value": fallback.get("value", ""),
        "values": "\n".join(f"{k} = {v}" for k, v in values.items()),
        "default": rule.get("values_default") or "",
    }
