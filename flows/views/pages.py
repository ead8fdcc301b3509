"""Pages for everyone with a role: dashboard, lists, audit; and the health check."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from flows.models import AuditEvent, Credential, Delivery, Destination, Nexset, SalesforceConnection
from flows.roles import ADMIN, VIEWER, role_required


@login_not_required
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok", content_type="text/plain")


@role_required(VIEWER)
def dashboard(request: HttpRequest) -> HttpResponse:
    destinations = Destination.objects.select_related("nexset", "credential").annotate(
        queued=Count(
            "deliveries", filter=Q(deliveries__state__in=Delivery.OPEN_STATES, deliveries__is_test=False)
        ),
        succeeded=Count("deliveries", filter=Q(deliveries__state="succeeded", deliveries__is_test=False)),
        problems=Count(
            "deliveries",
            filter=Q(
                deliveries__state__in=["failed", "exhausted", "needs_attention"], deliveries__is_test=False
            ),
        ),
    )
    context = {
        "destinations": destinations,
        "rejected_credentials": Credential.objects.filter(status=Credential.Status.REJECTED),
        "auto_paused": [d for d in destinations if d.status == Destination.Status.AUTO_PAUSED],
        "needs_attention": Delivery.objects.filter(state=Delivery.State.NEEDS_ATTENTION).count(),
        "salesforce": SalesforceConnection.objects.first(),
        "nexset_count": Nexset.objects.count(),
        "credential_count": Credential.objects.count(),
    }
    return render(request, "dashboard.html", context)


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


@role_required(ADMIN)
def salesforce(request: HttpRequest) -> HttpResponse:
    return render(request, "salesforce/index.html", {"connection": SalesforceConnection.objects.first()})
