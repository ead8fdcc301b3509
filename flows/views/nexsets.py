"""Nexset pages: detail with records (keyset pages, search, JSON view), upload, webhook source and secret
rotation, imports with live progress, delete. Viewers read; Operators change."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.files.uploadhandler import SkipFile, TemporaryFileUploadHandler
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, HttpResponseClientRefresh

from flows import audit, browse, imports, nexsets
from flows.models import Import, Nexset, Record
from flows.nexset_forms import DeleteForm, UploadForm, WebhookForm
from flows.roles import OPERATOR, VIEWER, role_required
from flows.salesforce import connection as sf
from flows.salesforce.source import SalesforceSource

COLUMNS_SHOWN = 8


def get_nexset(request: HttpRequest, uuid: Any) -> Nexset:
    return get_object_or_404(Nexset, uuid=uuid)


def hook_url(request: HttpRequest, nexset: Nexset) -> str:
    return request.build_absolute_uri(reverse("hook", args=[nexset.code]))


@role_required(VIEWER)
@require_GET
def nexset_detail(request: HttpRequest, uuid: Any) -> HttpResponse:
    nexset = get_nexset(request, uuid)
    context = {"nexset": nexset, "page": _page(request, nexset)}
    if request.htmx and request.htmx.target == "records":
        return render(request, "nexsets/detail.html#records", context)
    recent = list(nexset.imports.select_related("created_by")[:5])
    for imp in recent:
        if imp.status in (Import.Status.QUEUED, Import.Status.RUNNING):
            imp.live = imports.progress(imp)  # type: ignore[attr-defined]
    context.update(
        imports=recent,
        destinations=list(nexset.destinations.all()),
        hook_url=hook_url(request, nexset) if nexset.kind == Nexset.Kind.WEBHOOK else "",
        now=timezone.now(),
    )
    if nexset.kind == Nexset.Kind.SALESFORCE:
        context.update(sf_source=SalesforceSource.from_json(nexset.source), sf_connection=sf.current())
    return render(request, "nexsets/detail.html", context)


def _page(request: HttpRequest, nexset: Nexset) -> browse.Page:
    query = request.GET
    page = browse.page(
        nexset,
        after=browse.number(query.get("after")),
        before=browse.number(query.get("before")),
        last="last" in query,
        name=query.get("field", ""),
        text=query.get("value", ""),
    )
    latest = nexset.imports.filter(options__has_key="columns").only("options").first()
    known = [name for name in (latest.options["columns"] if latest else []) if name in nexset.schema]
    page.columns = (known + [name for name in nexset.schema if name not in known])[:COLUMNS_SHOWN]
    return page


@role_required(VIEWER)
@require_GET
def nexset_record(request: HttpRequest, uuid: Any, seq: int) -> HttpResponse:
    nexset = get_nexset(request, uuid)
    record = get_object_or_404(Record, nexset=nexset, seq=seq)
    context = {"nexset": nexset, "record": record, "width": COLUMNS_SHOWN + 2}
    if request.htmx:
        return render(request, "nexsets/record.html#json_row", context)
    return render(request, "nexsets/record.html", context)


class LimitedUpload(TemporaryFileUploadHandler):
    """Streams the upload to a temporary file and drops it past UPLOAD_MAX_BYTES (the form says so)."""

    def __init__(self, request: HttpRequest) -> None:
        super().__init__(request)
        self.limit = settings.UPLOAD_MAX_BYTES
        request.upload_too_large = False  # type: ignore[attr-defined]

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        if start + len(raw_data) > self.limit:
            self.request.upload_too_large = True  # type: ignore[union-attr]
            raise SkipFile
        return super().receive_data_chunk(raw_data, start)


@csrf_exempt  # the upload handler must be set before the body is read; _upload checks CSRF itself
@role_required(OPERATOR)
@require_http_methods(["GET", "POST"])
def nexset_upload(request: HttpRequest) -> HttpResponse:
    request.upload_handlers = [LimitedUpload(request)]
    return _upload(request)


@csrf_protect
def _upload(request: HttpRequest) -> HttpResponse:
    initial = {"nexset": request.GET.get("nexset")} if request.GET.get("nexset") else {}
    posted = request.method == "POST"
    form = UploadForm(
        request.POST if posted else None,
        request.FILES if posted else None,
        initial=initial,
        too_large=getattr(request, "upload_too_large", False),
    )
    if posted and form.is_valid():
        data = form.cleaned_data
        imp = imports.create(
            user=request.user,
            upload=data["file"],
            sniffed=form.sniffed,  # type: ignore[arg-type]
            nexset=data["nexset"],
            name=data["name"],
            text=data["text"],
            partial_ok=data["partial_ok"],
        )
        if data["nexset"] is None:
            audit.record(request, "nexset.create", imp.nexset, after=audit.snapshot(imp.nexset))
        audit.record(
            request,
            "nexset.upload",
            imp.nexset,
            extra={
                "file": imp.filename,
                "bytes": imp.size_bytes,
                "import": str(imp.uuid),
                "format": form.sniffed.label if form.sniffed else "",
            },
        )
        url = reverse("nexset_import", args=[imp.uuid])
        return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    template = "nexsets/upload.html#form" if request.htmx else "nexsets/upload.html"
    return render(request, template, {"form": form})


@role_required(VIEWER)
@require_GET
def nexset_import(request: HttpRequest, uuid: Any) -> HttpResponse:
    imp = get_object_or_404(Import.objects.select_related("nexset", "created_by"), uuid=uuid)
    context = {"imp": imp, "progress": imports.progress(imp), "read_as": imports.read_as(imp)}
    if request.htmx:
        if context["progress"]["done"] and request.GET.get("on") == "nexset":
            return HttpResponseClientRefresh()  # the Nexset page shows new counts, schema and records
        return render(request, "nexsets/import.html#progress", context)
    return render(request, "nexsets/import.html", context)


@role_required(OPERATOR)
@require_http_methods(["GET", "POST"])
def nexset_webhook_new(request: HttpRequest) -> HttpResponse:
    form = WebhookForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        nexset, secret = nexsets.create_webhook(form.cleaned_data["name"], request.user)
        audit.record(request, "nexset.create", nexset, after=audit.snapshot(nexset))
        context = {"nexset": nexset, "secret": secret, "hook_url": hook_url(request, nexset), "created": True}
        return render(request, "nexsets/webhook_created.html", context)
    return render(request, "nexsets/webhook_new.html", {"form": form})


@role_required(OPERATOR)
@require_POST
def nexset_webhook_rotate(request: HttpRequest, uuid: Any) -> HttpResponse:
    nexset = get_object_or_404(Nexset, uuid=uuid, kind=Nexset.Kind.WEBHOOK)
    secret, until = nexsets.rotate_secret(nexset.pk)
    nexset.refresh_from_db()
    audit.record(request, "nexset.webhook_rotate", nexset, extra={"old_secret_valid_until": str(until or "")})
    context = {
        "nexset": nexset,
        "secret": secret,
        "hook_url": hook_url(request, nexset),
        "now": timezone.now(),
    }
    if request.htmx:
        return render(request, "nexsets/detail.html#webhook", context)
    return render(request, "nexsets/webhook_created.html", context)


@role_required(OPERATOR)
@require_http_methods(["GET", "POST"])
def nexset_delete(request: HttpRequest, uuid: Any) -> HttpResponse:
    nexset = get_nexset(request, uuid)
    users = list(nexset.destinations.values_list("name", flat=True))
    form = DeleteForm(request.POST or None, nexset=nexset)
    if request.method == "POST" and not users and form.is_valid():
        before = audit.snapshot(nexset, ["name", "kind", "record_count"])
        try:
            count = nexsets.delete(nexset)
        except nexsets.InUse as exc:
            users = exc.names
        else:
            audit.record(request, "nexset.delete", nexset, before=before, extra={"records": count})
            messages.success(request, f"Deleted “{nexset.name}” and its {count:,} records.")
            return redirect("nexset_list")
    return render(request, "nexsets/delete.html", {"nexset": nexset, "users": users, "form": form})
