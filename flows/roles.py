"""Roles: Viewer (read), Operator (activate, pause, retry, test sends), Admin (credentials, Salesforce, users).

Each role includes the ones below it. Superusers are Admins. Every view states the role it needs with
``@role_required``; ``tests/test_roles.py`` walks every URL for every role.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.models import AnonymousUser, Group
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

VIEWER = "Viewer"
OPERATOR = "Operator"
ADMIN = "Admin"
ROLES = (VIEWER, OPERATOR, ADMIN)
_RANK = {name: rank for rank, name in enumerate(ROLES, start=1)}


def role_of(user: Any) -> str | None:
    if user is None or isinstance(user, AnonymousUser) or not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return ADMIN
    cached = getattr(user, "_clazar_role", False)
    if cached is not False:
        return cached
    names = set(user.groups.values_list("name", flat=True))
    held = [name for name in ROLES if name in names]
    role = max(held, key=_RANK.__getitem__) if held else None
    user._clazar_role = role
    return role


def has_role(user: Any, role: str) -> bool:
    held = role_of(user)
    return held is not None and _RANK[held] >= _RANK[role]


def set_role(user: Any, role: str | None) -> None:
    """Give ``user`` exactly one of the roles (or none)."""
    groups = {name: Group.objects.get_or_create(name=name)[0] for name in ROLES}
    user.groups.remove(*groups.values())
    if role:
        user.groups.add(groups[role])
    if hasattr(user, "_clazar_role"):
        del user._clazar_role


def role_required(role: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Allow the view to users holding ``role`` or higher; others get a 403 page that says which role."""
    if role not in _RANK:
        raise ValueError(f"Unknown role {role!r}")

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not has_role(request.user, role):
                return render(request, "403.html", {"needed_role": role}, status=403)
            return view(request, *args, **kwargs)

        wrapped.required_role = role  # type: ignore[attr-defined]
        return wrapped

    return decorator
