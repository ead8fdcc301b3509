"""A person's own Salesforce link (the Salesforce card of the profile page), and the write-back settings of
a Salesforce Nexset (Admin). The logic is in flows/salesforce/userlink.py and writeback.py."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from flows import audit
from flows.models import Nexset
from flows.roles import ADMIN, VIEWER, role_required
from flows.salesforce import connection as sf
from flows.salesforce import userlink, writeback
from flows.salesforce.source import SalesforceSource, Writeback
from flows.views.sfnexsets import get_sf_nexset

log = logging.getLogger(__name__)


@role_required(VIEWER)
@require_POST
def profile_salesforce_connect(request: HttpRequest) -> HttpResponse:
    try:
        url = userlink.begin(request)
    except userlink.NotLinked as exc:
        messages.error(request, str(exc))
        return redirect("profile")
    return redirect(url)


def finish_link(request: HttpRequest, flow: dict) -> HttpResponse:
    """The callback of a link (dispatched by flows/views/salesforce.py, which checked the role)."""
    try:
        link = userlink.finish(request, flow)
    except sf.ConnectError as exc:
        log.warning("salesforce user link refused (%s): %s", exc.kind, exc.message)
        audit.record(
            request, "salesforce.user_link_failed", extra={"reason": exc.kind, "message": exc.message}
        )
        context = {"form": PasswordChangeForm(request.user), "sf_error": exc, **userlink.card(request.user)}
        return render(request, "users/profile.html", context, status=400)
    messages.success(request, f"Linked your Salesforce user {link.username}.")
    return redirect("profile")


@login_required
@require_POST
def profile_salesforce_disconnect(request: HttpRequest) -> HttpResponse:
    done = userlink.disconnect(request)
    if done is None:
        messages.info(request, "Your Salesforce user was not linked.")
    elif done.revoke_error:
        messages.warning(
            request,
            f"Disconnected {done.username}: the link was deleted here, but Salesforce did not confirm the "
            f"revoke ({done.revoke_error}). Revoke the app's access in Salesforce (your personal settings > "
            "Connected Apps).",
        )
    else:
        messages.success(request, f"Disconnected {done.username}: the token was revoked at Salesforce.")
    return redirect("profile")


# -- write-back settings ----------------------------------------------------------------------------------


@role_required(ADMIN)
@require_http_methods(["GET", "POST"])
def salesforce_writeback(request: HttpRequest, uuid: Any) -> HttpResponse:
    nexset = get_sf_nexset(request, uuid)
    source = SalesforceSource.from_json(nexset.source)
    if source is None:
        messages.error(request, "Pick the object and fields first.")
        return redirect("salesforce_nexset_edit", uuid=nexset.uuid)
    page = writeback.settings_page(nexset, source, request.user)
    if request.method == "GET":
        return render(request, "salesforce/writeback.html", page)
    if request.POST.get("action") == "off":
        setting = None
    else:
        try:
            setting = writeback.choose(page, request.POST.get("field", ""), request.POST.get("user", ""))
        except writeback.ChoiceInvalid as exc:
            page.update(errors=exc.errors, field=request.POST.get("field", ""), user=request.POST.get("user"))
            return render(request, "salesforce/writeback.html", page, status=400)
    if not _save(request, nexset, setting):
        messages.error(
            request, "This Nexset's Salesforce settings were cleared meanwhile: nothing was saved."
        )
    elif setting is None:
        messages.success(request, "Turned the write-back off.")
    else:
        messages.success(
            request,
            f"Saved: created Clazar ids are written into {setting.field} as {page['names'][setting.user_id]}.",
        )
    return redirect("salesforce_writeback", uuid=nexset.uuid)


def _save(request: HttpRequest, nexset: Nexset, setting: Writeback | None) -> bool:
    with transaction.atomic():
        locked = Nexset.objects.select_for_update().get(pk=nexset.pk)
        current = SalesforceSource.from_json(locked.source)
        if current is None:
            return False
        before = audit.snapshot(locked, ["source"])
        locked.source = replace(current, writeback=setting).to_json()
        locked.save(update_fields=["source", "updated_at"])
        audit.record(
            request,
            "nexset.salesforce_writeback",
            locked,
            before=before,
            after=audit.snapshot(locked, ["source"]),
        )
    return True
