"""The Salesforce page (Admin): connected-app settings, connect / reconnect / switch org / disconnect,
and the permission check. Salesforce Nexsets have their own views (flows/views/sfnexsets.py)."""

from __future__ import annotations

import logging

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clazar_dest.salesforce.client import SalesforceError, SalesforceUnavailable, object_access
from flows import audit
from flows.models import Import, Nexset
from flows.roles import ADMIN, VIEWER, has_role, role_required
from flows.salesforce import connection as sf
from flows.salesforce.forms import AppForm

log = logging.getLogger(__name__)

# What the integration needs per object: pulls read; write-back edits Opportunities.
NEEDS = {
    "Account": ("read",),
    "Contact": ("read",),
    "Opportunity": ("read", "edit"),
    "Lead": ("read",),
    "Quote": ("read",),
}


def _page(request: HttpRequest, form: AppForm | None = None, status: int = 200) -> HttpResponse:
    app = sf.app()
    nexsets = list(Nexset.objects.filter(kind=Nexset.Kind.SALESFORCE).order_by("name"))
    last = {
        imp.nexset_id: imp
        for imp in Import.objects.filter(nexset__in=nexsets).order_by("nexset_id", "created_at")
    }
    for nexset in nexsets:
        nexset.last_pull = last.get(nexset.pk)
    context = {
        "form": form or AppForm(instance=app),
        "app": app,
        "connection": sf.current(),
        "pending": sf.pending(),
        "affected": sf.affected(),
        "callback_url": sf.callback_url(request),
        "nexsets": nexsets,
    }
    return render(request, "salesforce/index.html", context, status=status)


@role_required(ADMIN)
@require_GET
def salesforce(request: HttpRequest) -> HttpResponse:
    return _page(request)


@role_required(ADMIN)
@require_POST
def salesforce_app(request: HttpRequest) -> HttpResponse:
    app = sf.app()
    before = audit.snapshot(app) if app else None
    form = AppForm(request.POST, instance=app)
    if not form.is_valid():
        return _page(request, form, status=400)
    row = form.save()
    after = audit.snapshot(row)
    if form.cleaned_data.get("consumer_secret"):
        after["consumer_secret"] = "******** (replaced)"
    audit.record(request, "salesforce.app", row, before=before, after=after)
    messages.success(request, "Saved the connected app settings.")
    return redirect("salesforce")


@role_required(ADMIN)
@require_POST
def salesforce_connect(request: HttpRequest) -> HttpResponse:
    try:
        url = sf.begin(request)
    except sf.NotConnected as exc:
        messages.error(request, str(exc))
        return redirect("salesforce")
    return redirect(url)


@require_GET
def salesforce_callback(request: HttpRequest) -> HttpResponse:
    """The one redirect URI registered in Salesforce, for the org connection (Admin) and for a person's
    own Salesforce link (any role, from the profile page); the flow in the session says which. Login is
    required by the middleware; the role is checked here, once the purpose is known."""
    flow = sf.take_flow(request)
    needed = VIEWER if flow.get("purpose") == "user" else ADMIN
    if not has_role(request.user, needed):
        return render(request, "403.html", {"needed_role": needed}, status=403)
    if needed == VIEWER:
        return userlink_callback(request, flow)
    try:
        done = sf.finish(request, flow)
    except sf.ConnectError as exc:
        log.warning("salesforce callback refused (%s): %s", exc.kind, exc.message)
        audit.record(request, "salesforce.connect_failed", extra={"reason": exc.kind, "message": exc.message})
        return render(request, "salesforce/failed.html", {"error": exc}, status=400)
    if done.kind == "pending_switch":
        messages.warning(request, f"You signed in to a different org ({done.org}): confirm the switch below.")
    else:
        messages.success(request, f"Connected to {done.org} as {done.username}.")
    return redirect("salesforce")


def userlink_callback(request: HttpRequest, flow: dict) -> HttpResponse:
    """A person's own Salesforce link (see flows/views/sfuser.py)."""
    from flows.views.sfuser import finish_link

    return finish_link(request, flow)


@role_required(ADMIN)
@require_POST
def salesforce_switch(request: HttpRequest) -> HttpResponse:
    if request.POST.get("action") == "confirm":
        counts = sf.confirm_switch(request)
        if counts is None:
            messages.error(request, "There is no org switch waiting (it expired after 15 minutes).")
        else:
            messages.success(
                request,
                f"Switched orgs. Cleared the settings of {counts['nexsets']} Salesforce Nexset(s) and "
                f"{counts['mappings']} field mapping(s); their records were kept.",
            )
    elif sf.cancel_switch(request):
        messages.info(request, "Kept the current org; the other org's sign-in was revoked.")
    return redirect("salesforce")


@role_required(ADMIN)
@require_http_methods(["GET", "POST"])
def salesforce_disconnect(request: HttpRequest) -> HttpResponse:
    row = sf.current()
    if row is None:
        messages.info(request, "Salesforce is not connected.")
        return redirect("salesforce")
    if request.method == "GET":
        return render(request, "salesforce/disconnect.html", {"connection": row})
    problem = sf.disconnect(request)
    if problem:
        messages.warning(
            request,
            f"Disconnected: the credentials were deleted here, but Salesforce did not confirm the revoke "
            f"({problem}). Revoke the app's access in Salesforce Setup > Connected Apps OAuth Usage.",
        )
    else:
        messages.success(request, "Disconnected: the token was revoked at Salesforce and deleted here.")
    return redirect("salesforce")


@role_required(ADMIN)
@require_GET
def salesforce_permissions(request: HttpRequest) -> HttpResponse:
    try:
        rows = object_access(sf.client(), tuple(NEEDS))
    except (sf.NotConnected, SalesforceError, SalesforceUnavailable) as exc:
        return render(request, "salesforce/index.html#permissions", {"perm_error": str(exc)})
    table = []
    for row in rows:
        needed = NEEDS.get(row.name, ())
        missing = [right for right in needed if not getattr(row, right)]
        table.append({"access": row, "needed": needed, "missing": missing})
    return render(request, "salesforce/index.html#permissions", {"permissions": table})
