"""Users and roles (Admin), and each user's own profile (password, Salesforce link: flows/views/sfuser.py)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model, update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from flows import audit, roles
from flows.forms import UserCreateForm, UserEditForm
from flows.roles import ADMIN, role_required
from flows.salesforce import userlink

User = get_user_model()


def get_user(request: HttpRequest, user_id: int):
    return get_object_or_404(User, pk=user_id)


def _user_facts(user) -> dict[str, object]:
    return {
        "username": user.username,
        "email": user.email,
        "role": roles.role_of(user),
        "active": user.is_active,
    }


@role_required(ADMIN)
def user_list(request: HttpRequest) -> HttpResponse:
    users = User.objects.order_by("username").prefetch_related("groups")
    rows = [(u, roles.role_of(u)) for u in users]
    return render(request, "users/list.html", {"rows": rows})


@role_required(ADMIN)
@require_http_methods(["GET", "POST"])
def user_new(request: HttpRequest) -> HttpResponse:
    form = UserCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        audit.record(request, "user.create", user, after=_user_facts(user))
        messages.success(
            request,
            f"Created {user.username} as {form.cleaned_data['role']}. Give them the password you set.",
        )
        return redirect("user_list")
    return render(request, "users/form.html", {"form": form, "subject": None})


@role_required(ADMIN)
@require_http_methods(["GET", "POST"])
def user_edit(request: HttpRequest, user_id: int) -> HttpResponse:
    subject = get_user(request, user_id)
    before = _user_facts(subject)
    form = UserEditForm(request.POST or None, instance=subject, acting=request.user)
    if request.method == "POST" and form.is_valid():
        subject = form.save()
        audit.record(request, "user.update", subject, before=before, after=_user_facts(subject))
        messages.success(request, f"Saved {subject.username}.")
        return redirect("user_list")
    return render(request, "users/form.html", {"form": form, "subject": subject})


@login_required
@require_http_methods(["GET", "POST"])
def profile(request: HttpRequest) -> HttpResponse:
    form = PasswordChangeForm(request.user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        update_session_auth_hash(request, user)
        audit.record(request, "user.password", user)
        messages.success(request, "Your password was changed.")
        return redirect("profile")
    return render(request, "users/profile.html", {"form": form, **userlink.card(request.user)})
