"""Showing record values in tables and JSON views."""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.utils.html import format_html
from django.utils.safestring import mark_safe

register = template.Library()

CELL_MAX = 60


@register.filter
def cell(data: Any, name: str) -> str:
    """One field of a record as a table cell: text shortened, null and missing fields marked."""
    if not isinstance(data, dict) or name not in data:
        return mark_safe('<span class="value-missing" title="not in this record">–</span>')
    value = data[name]
    if value is None:
        return mark_safe('<span class="value-null">null</span>')
    if isinstance(value, bool):
        return format_html('<span class="value-bool">{}</span>', "true" if value else "false")
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        css = "value-json"
    else:
        text = str(value)
        css = "value-number" if isinstance(value, int | float) else "value-text"
    if len(text) > CELL_MAX:
        return format_html('<span class="{}" title="{}">{}…</span>', css, text[:500], text[:CELL_MAX])
    return format_html('<span class="{}">{}</span>', css, text)


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False)


@register.filter
def duration(seconds: Any) -> str:
    """0.6 s, 12 s, 3 min 5 s, 1 h 2 min."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{float(seconds):.1f} s"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes} min {rest} s" if rest and minutes < 10 else f"{minutes} min"
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min"
