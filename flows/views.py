"""Function views: short, with a role on every one (STYLE.md convention 6)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.models import Count, ProtectedError, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from flows import audit, services
from flows.forms import CredentialForm
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


# Credentials (Admin) -------------------------------------------------------------------------------------


def get_credential(request: HttpRequest, uuid: str) -> Credential:
    return get_object_or_404(Credential, uuid=uuid)


@role_required(ADMIN)
def credential_list(request: HttpRequest) -> HttpResponse:
    credentials = Credential.objects.annotate(destination_count=Count("destinations"))
    return render(request, "credentials/list.html", {"credentials": credentials})


@role_required(ADMIN)
@require_http_methods(["GET", "POST"])
def credential_new(request: HttpRequest) -> HttpResponse:
    form = CredentialForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        credential = form.save(commit=False)
        credential.created_by = request.user
        credential.save()
        audit.record(request, "credential.create", credential, after=audit.snapshot(credential))
        if "test" in request.POST:
            return _after_test(request, credential)
        messages.success(
            request, f"Saved “{credential.name}”. Use Test credential to check it against Clazar."
        )
        return redirect("credential_edit", uuid=credential.uuid)
    return render(request, "credentials/form.html", {"form": form, "credential": None})


@role_required(ADMIN)
@require_http_methods(["GET", "POST"])
def credential_edit(request: HttpRequest, uuid: str) -> HttpResponse:
    credential = get_credential(request, uuid)
    before = audit.snapshot(credential)
    form = CredentialForm(request.POST or None, instance=credential)
    if request.method == "POST" and form.is_valid():
        credential = form.save()
        after = audit.snapshot(credential)
        if form.cleaned_data.get("client_secret"):
            after["client_secret"] = "******** (replaced)"
        audit.record(request, "credential.update", credential, before=before, after=after)
        if "test" in request.POST:
            return _after_test(request, credential)
        messages.success(request, f"Saved “{credential.name}”.")
        return redirect("credential_edit", uuid=credential.uuid)
    return render(request, "credentials/form.html", {"form": form, "credential": credential})


@role_required(ADMIN)
@require_POST
def credential_test(request: HttpRequest, uuid: str) -> HttpResponse:
    credential = get_credential(request, uuid)
    return _after_test(request, credential)


def _after_test(request: HttpRequest, credential: Credential) -> HttpResponse:
    result = services.check_credential(credential.pk)
    credential.refresh_from_db()
    audit.record(request, "credential.test", credential, extra={"ok": result.ok, "message": result.message})
    if request.htmx:
        return render(request, "credentials/form.html#status", {"credential": credential, "result": result})
    if result.ok:
        messages.success(request, f"“{credential.name}” works: {result.message}")
    else:
        messages.error(request, f"“{credential.name}” failed: {result.message}")
    return redirect("credential_edit", uuid=credential.uuid)


@role_required(ADMIN)
@require_http_methods(["GET", "POST"])
def credential_delete(request: HttpRequest, uuid: str) -> HttpResponse:
    credential = get_credential(request, uuid)
    users = list(credential.destinations.values_list("name", flat=True))
    if request.method == "POST" and not users:
        before = audit.snapshot(credential)
        try:
            credential.delete()
        except ProtectedError:
            messages.error(request, "A destination started using this credential; it was not deleted.")
            return redirect("credential_delete", uuid=uuid)
        audit.record(request, "credential.delete", credential, before=before)
        messages.success(request, f"Deleted “{credential.name}”.")
        return redirect("credential_list")
    return render(request, "credentials/delete.html", {"credential": credential, "users": users})
