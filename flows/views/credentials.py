"""Clazar credentials (Admin): add, edit, delete, and "Test credential"."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, ProtectedError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from flows import audit, services
from flows.forms import CredentialForm
from flows.models import Credential
from flows.roles import ADMIN, role_required


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
