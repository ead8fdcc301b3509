"""Pages for everyone with a role: lists and audit; and the health check. The dashboard is in
``flows.views.dashboard``."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from flows.models import AuditEvent, Destination, Nexset
from flows.roles import VIEWER, role_required


@login_not_required
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok", content_type="text/plain")


@role_required(VIEWER)
def nexset_list(request: HttpRequest) -> HttpResponse:
    nexsets = Nexset.objects.annotate(destination_count=Count("destinations"))
    return render(request, "nexsets/list.html", {"nexsets": nexsets})


@role_required(VIEWER)
def destination_list(request: HttpRequest) -> HttpResponse:
    destinations = Destination.objects.select_related("nexset", "credential")
    return render(request, "destinations/list.html", {"destinations": destinations})


@role_required(VIEWER)
def audit_list(request: HttpRequest) -> HttpResponse:
    events = AuditEvent.objects.select_related("actor")
    action = request.GET.get("action", "").strip()
    if action:
        events = events.filter(action__startswith=action)
    return render(request, "audit/list.html", {"events": events[:200], "action": action})
