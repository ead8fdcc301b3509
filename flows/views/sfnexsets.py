"""Salesforce Nexsets: settings (object, fields, filter, schedule), pulls, and the field mapping to Clazar
co-sell opportunities with a live preview. Settings and mappings are Admin work (they shape what reaches
Clazar); pulling now is an Operator action."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clazar_dest.salesforce.client import SalesforceError, SalesforceUnavailable
from clazar_dest.salesforce.mapping import Mapping, MappingInvalid, compile_mapping, suggest
from flows import audit
from flows.models import Nexset
from flows.roles import ADMIN, OPERATOR, role_required
from flows.salesforce import connection as sf
from flows.salesforce import describe, mapform, pull
from flows.salesforce.source import SCHEDULES, SalesforceSource, SourceInvalid, Writeback, build

log = logging.getLogger(__name__)
SAMPLE_SIZE = 5
SAMPLE_TTL = 60
REMOTE_ERRORS = (sf.NotConnected, SalesforceError, SalesforceUnavailable)


def get_sf_nexset(request: HttpRequest, uuid: Any) -> Nexset:
    return get_object_or_404(Nexset, uuid=uuid, kind=Nexset.Kind.SALESFORCE)


def _settings_context(source: SalesforceSource | None, object_name: str, errors: dict | None = None) -> dict:
    context: dict[str, Any] = {"schedules": SCHEDULES, "errors": errors or {}, "object_name": object_name}
    context["source"] = source
    try:
        context["objects"] = describe.objects()
        context["choices"] = describe.field_choices(object_name) if object_name else []
    except REMOTE_ERRORS as exc:
        context["remote_error"] = str(exc)
        context.setdefault("objects", [])
        context.setdefault("choices", [])
    return context


def _from_post(
    request: HttpRequest, mapping: Mapping | None, writeback: Writeback | None = None
) -> SalesforceSource:
    object_name = request.POST.get("object", "").strip()
    try:
        known = describe.fields(object_name) if object_name else []
    except REMOTE_ERRORS:
        known = []
    return build(
        object_name,
        request.POST.getlist("fields"),
        request.POST.get("filter", ""),
        request.POST.get("every"),
        known,
        mapping,
        writeback,
    )


@role_required(ADMIN)
@require_http_methods(["GET", "POST"])
def salesforce_nexset_new(request: HttpRequest) -> HttpResponse:
    if sf.current() is None:
        messages.info(request, "Connect a Salesforce org first; then pick the object and fields to pull.")
        return redirect("salesforce")
    object_name = request.POST.get("object") or request.GET.get("object") or "Opportunity"
    name = request.POST.get("name", "").strip()
    if request.method == "POST":
        errors: dict[str, list[str]] = {} if name else {"name": ["Give the Nexset a name."]}
        try:
            source = _from_post(request, None)
        except SourceInvalid as exc:
            errors.update(exc.errors)
        if not errors:
            with transaction.atomic():
                nexset = Nexset.objects.create(
                    name=name[:150],
                    kind=Nexset.Kind.SALESFORCE,
                    source=source.to_json(),
                    created_by=request.user,
                )
                if source.every:
                    nexset.next_pull_at = timezone.now() + timedelta(minutes=source.every)
                    nexset.save(update_fields=["next_pull_at"])
                audit.record(request, "nexset.create", nexset, after=audit.snapshot(nexset))
                imp = pull.start(nexset, user=request.user) if "pull" in request.POST else None
            messages.success(
                request, f"Created “{nexset.name}”." + (" The first pull is running." if imp else "")
            )
            return redirect("nexset_detail", uuid=nexset.uuid)
        context = _settings_context(None, object_name, errors)
        context.update(
            name=name,
            chosen=request.POST.getlist("fields"),
            filter=request.POST.get("filter", ""),
            every=request.POST.get("every", ""),
        )
        return render(request, "salesforce/nexset_form.html", context, status=400)
    context = _settings_context(None, object_name)
    context.update(name="", chosen=_default_fields(context["choices"]), filter="", every="")
    return render(request, "salesforce/nexset_form.html", context)


def _default_fields(choices: list[dict]) -> list[str]:
    wanted = (
        "Name",
        "Amount",
        "CloseDate",
        "StageName",
        "Cloud_Provider__c",
        "Description",
        "Account.Name",
        "Account.Website",
        "Account.BillingCountry",
    )
    paths = {c["path"] for c in choices}
    return [p for p in wanted if p in paths]


@role_required(ADMIN)
@require_http_methods(["GET", "POST"])
def salesforce_nexset_edit(request: HttpRequest, uuid: Any) -> HttpResponse:
    nexset = get_sf_nexset(request, uuid)
    current = SalesforceSource.from_json(nexset.source)
    object_name = (
        request.POST.get("object")
        or request.GET.get("object")
        or (current.object if current else "Opportunity")
    )
    if request.method == "POST":
        try:
            posted = _from_post(request, None, current.writeback if current else None)
        except SourceInvalid as exc:
            context = _settings_context(current, object_name, exc.errors)
            context.update(
                nexset=nexset,
                chosen=request.POST.getlist("fields"),
                filter=request.POST.get("filter", ""),
                every=request.POST.get("every", ""),
            )
            return render(request, "salesforce/nexset_form.html", context, status=400)
        # Keep what this form does not edit (the mapping, write-back).
        source = (
            replace(
                current, object=posted.object, fields=posted.fields, filter=posted.filter, every=posted.every
            )
            if current is not None
            else posted
        )
        before = audit.snapshot(nexset, ["source"])
        changed_query = current is None or (source.object, source.fields, source.filter) != (
            current.object,
            current.fields,
            current.filter,
        )
        nexset.source = source.to_json()
        nexset.next_pull_at = timezone.now() + timedelta(minutes=source.every) if source.every else None
        if changed_query or (current and current.object != source.object):
            nexset.pull_watermark = None  # other fields or rows: the next pull reads everything again
        nexset.save(update_fields=["source", "next_pull_at", "pull_watermark", "updated_at"])
        audit.record(
            request,
            "nexset.salesforce_settings",
            nexset,
            before=before,
            after=audit.snapshot(nexset, ["source"]),
        )
        messages.success(
            request,
            "Saved."
            + (
                " The next pull reads every matching record again (changed object, fields or filter)."
                if changed_query
                else ""
            ),
        )
        return redirect("nexset_detail", uuid=nexset.uuid)
    context = _settings_context(current, object_name)
    context.update(
        nexset=nexset,
        chosen=list(current.fields) if current else [],
        filter=current.filter if current else "",
        every=str(current.every or "") if current else "",
    )
    return render(request, "salesforce/nexset_form.html", context)


@role_required(ADMIN)
@require_GET
def salesforce_fields(request: HttpRequest) -> HttpResponse:
    """The field picker for the chosen object (htmx, on object change)."""
    object_name = request.GET.get("object", "")
    context = _settings_context(None, object_name)
    context["chosen"] = _default_fields(context["choices"])
    return render(request, "salesforce/nexset_form.html#fields", context)


@role_required(ADMIN)
@require_POST
def salesforce_filter_test(request: HttpRequest) -> HttpResponse:
    """Run the filter and say how many records match (with three Ids), or Salesforce's error (htmx)."""
    try:
        source = _from_post(request, None)
        # No LIMIT: totalSize then counts every match; the smallest batch keeps the answer small.
        page = next(sf.client().query(source.query(), batch_size=200), None)
        result = {
            "count": page.total_size if page else 0,
            "ids": [r.get("Id") for r in (page.records[:3] if page else [])],
        }
    except SourceInvalid as exc:
        result = {"error": " ".join(m for msgs in exc.errors.values() for m in msgs)}
    except REMOTE_ERRORS as exc:
        result = {"error": str(exc)}
    return render(request, "salesforce/nexset_form.html#filter_result", {"result": result})


@role_required(OPERATOR)
@require_POST
def salesforce_nexset_pull(request: HttpRequest, uuid: Any) -> HttpResponse:
    nexset = get_sf_nexset(request, uuid)
    full = request.POST.get("full") == "1"
    try:
        sf.client()  # fail fast with the reason when not connected
        imp = pull.start(nexset, user=request.user, full=full)
    except (pull.PullRefused, sf.NotConnected) as exc:
        messages.error(request, str(exc))
        return redirect("nexset_detail", uuid=nexset.uuid)
    audit.record(request, "nexset.salesforce_pull", nexset, extra={"import": str(imp.uuid), "full": full})
    messages.success(request, "Pull queued: the progress shows below.")
    return redirect("nexset_detail", uuid=nexset.uuid)


# -- field mapping -------------------------------------------------------------------------------------


def _field_paths(source: SalesforceSource) -> list[dict]:
    try:
        return describe.field_choices(source.object)
    except REMOTE_ERRORS:
        return [{"path": p, "label": p, "type": ""} for p in source.fields]


@role_required(ADMIN)
@require_http_methods(["GET", "POST"])
def salesforce_mapping(request: HttpRequest, uuid: Any) -> HttpResponse:
    nexset = get_sf_nexset(request, uuid)
    source = SalesforceSource.from_json(nexset.source)
    if source is None:
        messages.error(request, "Pick the object and fields first.")
        return redirect("salesforce_nexset_edit", uuid=nexset.uuid)
    context: dict[str, Any] = {"nexset": nexset, "source": source, "paths": _field_paths(source)}
    if request.method == "POST":
        if request.POST.get("action") == "remove":
            return _remove_mapping(request, nexset, source)
        data = mapform.from_post(request.POST)
        try:
            mapping = Mapping.from_json(data)
        except MappingInvalid as exc:
            context.update(mapform.rows(data, exc.errors))
            return render(request, "salesforce/mapping.html", context, status=400)
        before = audit.snapshot(nexset, ["source"])
        updated = replace(source, mapping=mapping)
        with transaction.atomic():
            nexset.source = updated.to_json()
            nexset.save(update_fields=["source", "updated_at"])  # the full pull below re-infers the schema
            audit.record(
                request,
                "nexset.salesforce_mapping",
                nexset,
                before=before,
                after=audit.snapshot(nexset, ["source"]),
            )
            try:
                pull.start(nexset, user=request.user, full=True)
                note = " A full pull is re-reading every record with the new mapping."
            except pull.PullRefused as exc:
                note = f" Pull everything again once the running pull ends ({exc})"
        messages.success(request, "Saved the field mapping." + note)
        return redirect("nexset_detail", uuid=nexset.uuid)
    if source.mapping is not None:
        shown = source.mapping.to_json()
    else:
        try:
            shown = suggest(describe.fields(source.object)).to_json()
        except REMOTE_ERRORS:
            shown = {}
        context["suggested"] = True
    context.update(mapform.rows(shown))
    return render(request, "salesforce/mapping.html", context)


def _remove_mapping(request: HttpRequest, nexset: Nexset, source: SalesforceSource) -> HttpResponse:
    before = audit.snapshot(nexset, ["source"])
    nexset.source = replace(source, mapping=None).to_json()
    nexset.save(update_fields=["source", "updated_at"])
    audit.record(
        request, "nexset.salesforce_mapping", nexset, before=before, after=audit.snapshot(nexset, ["source"])
    )
    with contextlib.suppress(pull.PullRefused):
        pull.start(nexset, user=request.user, full=True)
    messages.success(
        request, "Removed the mapping: records hold Salesforce's fields again after the full pull."
    )
    return redirect("nexset_detail", uuid=nexset.uuid)


@role_required(ADMIN)
@require_POST
def salesforce_mapping_preview(request: HttpRequest, uuid: Any) -> HttpResponse:
    """Live preview: the first records from Salesforce through the mapping being edited (always 200)."""
    nexset = get_sf_nexset(request, uuid)
    source = SalesforceSource.from_json(nexset.source)
    context: dict[str, Any] = {}
    try:
        mapping = Mapping.from_json(mapform.from_post(request.POST))
    except MappingInvalid as exc:
        context["invalid"] = exc.errors
        return render(request, "salesforce/mapping.html#preview", context)
    if source is None:
        context["remote_error"] = "This Nexset has no Salesforce settings."
        return render(request, "salesforce/mapping.html#preview", context)
    probe = replace(source, every=None, mapping=mapping)
    try:
        sample = _sample(probe.query(limit=SAMPLE_SIZE))
    except REMOTE_ERRORS as exc:
        context["remote_error"] = str(exc)
        return render(request, "salesforce/mapping.html#preview", context)
    compiled = compile_mapping(mapping)
    today = timezone.localdate()
    context["results"] = [(row.get("Id"), compiled.apply(row, today=today)) for row in sample]
    return render(request, "salesforce/mapping.html#preview", context)


def _sample(query: str) -> list[dict]:
    key = "sf:sample:" + hashlib.sha256(query.encode()).hexdigest()
    rows = cache.get(key)
    if rows is None:
        page = next(sf.client().query(query), None)
        rows = page.records if page else []
        cache.set(key, rows, SAMPLE_TTL)
    return rows
