"""Audit events: who did what to which object, with a before/after diff where secrets are masked."""

from __future__ import annotations

import logging
from typing import Any

from django.db import models
from django.http import HttpRequest

from flows.models import AuditEvent
from flows.secrets import MASK, EncryptedTextField, Secret

log = logging.getLogger(__name__)
_SECRET_WORDS = ("secret", "token", "password", "key")


def snapshot(obj: models.Model, fields: list[str] | None = None) -> dict[str, Any]:
    """A JSON-safe view of ``obj``'s concrete fields; encrypted fields show only whether they are set."""
    data: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        if fields is not None and field.name not in fields:
            continue
        if field.name in ("id", "created_at", "updated_at"):
            continue
        value = getattr(obj, field.attname)
        if (
            isinstance(field, EncryptedTextField)
            or isinstance(value, Secret)
            or any(word in field.name for word in _SECRET_WORDS)
        ):
            data[field.name] = MASK if value else ""
        elif isinstance(value, str | int | float | bool | dict | list) or value is None:
            data[field.name] = value
        else:
            data[field.name] = str(value)
    return data


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    before, after = before or {}, after or {}
    keys = sorted(set(before) | set(after))
    return {
        k: {"before": before.get(k), "after": after.get(k)} for k in keys if before.get(k) != after.get(k)
    }


def record(
    request: HttpRequest | None,
    action: str,
    obj: models.Model | None = None,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> AuditEvent:
    user = getattr(request, "user", None) if request is not None else None
    actor = user if user is not None and user.is_authenticated else None
    changes: dict[str, Any] = diff(before, after) if (before or after) else {}
    if extra:
        changes["details"] = extra
    event = AuditEvent.objects.create(
        actor=actor,
        actor_name=actor.get_username() if actor else "system",
        action=action,
        object_type=obj._meta.model_name if obj is not None else "",
        object_id=str(getattr(obj, "uuid", None) or getattr(obj, "pk", "") or "") if obj is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "",
        changes=changes,
        ip=(request.META.get("REMOTE_ADDR") if request is not None else None) or None,
    )
    log.info("audit %s %s %s by %s", action, event.object_type, event.object_id, event.actor_name)
    return event
