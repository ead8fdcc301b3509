"""Destinations: the wizard (start, configure with a live Sample Payload, Send Test Data, Done), the
destination page, and clone. Nothing is sent to Clazar from here except an explicit test send."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from clazar_dest.clazar.endpoints import ENDPOINTS
from flows import audit
from flows.config import DestinationConfig
from flows.forms import CredentialForm
from flows.models import Credential, Destination, Nexset, Record
from flows.payloads import ConfigError, pretty, preview
from flows.roles import ADMIN, OPERATOR, VIEWER, role_required
from flows.testsend import TestSendError, confirm_needed, edited, send_test
from flows.wizard import WizardForm

SAMPLES = 3
EDITABLE = (Destination.Status.DRAFT, Destination.Status.PAUSED, Destination.Status.AUTO_PAUSED)


def get_destination(request: HttpRequest, uuid: str) -> Destination:
    return get_object_or_404(Destination.objects.select_related("nexset", "credential"), uuid=uuid)


def schema_fields(nexset: Nexset) -> list[str]:
    return list(nexset.schema or {})


class StartForm(forms.Form):
    nexset = forms.ModelChoiceField(
        queryset=Nexset.objects.all(), to_field_name="uuid", label="Nexset", empty_label="Choose a Nexset…"
    )
    credential = forms.ModelChoiceField(
        queryset=Credential.objects.all(),
        to_field_name="uuid",
        label="Clazar credential",
        empty_label="Choose a credential…",
    )


@role_required(OPERATOR)
@require_http_methods(["GET", "POST"])
def destination_new(request: HttpRequest) -> HttpResponse:
    initial = {
        "nexset": request.GET.get("nexset"),
        "credential": Credential.objects.values_list("uuid", flat=True).first(),
    }
    form = StartForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        nexset, credential = form.cleaned_data["nexset"], form.cleaned_data["credential"]
        destination = Destination.objects.create(
            name=f"{nexset.name} to Clazar", nexset=nexset, credential=credential, created_by=request.user
        )
        audit.record(request, "destination.create", destination, after=audit.snapshot(destination))
        return redirect("destination_edit", uuid=destination.uuid)
    return render(
        request, "destinations/start.html", {"form": form, "cred_form": CredentialForm(prefix="cred")}
    )


@role_required(ADMIN)
@require_POST
def destination_new_credential(request: HttpRequest) -> HttpResponse:
    """Add a Clazar credential from the wizard's first step without leaving it (htmx fragment)."""
    form = CredentialForm(request.POST, prefix="cred")
    start = StartForm(initial={"nexset": request.POST.get("nexset")})
    if form.is_valid():
        credential = form.save(commit=False)
        credential.created_by = request.user
        credential.save()
        audit.record(request, "credential.create", credential, after=audit.snapshot(credential))
        start = StartForm(initial={"nexset": request.POST.get("nexset"), "credential": credential.uuid})
        messages.success(
            request, f"Added “{credential.name}”. Test it on the Credentials page before activating."
        )
        form = CredentialForm(prefix="cred")
    return render(request, "destinations/start.html#credential", {"form": start, "cred_form": form})


@role_required(OPERATOR)
@require_http_methods(["GET", "POST"])
def destination_edit(request: HttpRequest, uuid: str) -> HttpResponse:
    destination = get_destination(request, uuid)
    fields = schema_fields(destination.nexset)
    if destination.status not in EDITABLE:
        messages.error(request, "Deactivate this destination before changing it; records not yet sent wait.")
        return redirect("destination_detail", uuid=destination.uuid)
    config = DestinationConfig.from_json(destination.config)
    initial = WizardForm.initial_from(config, destination.name, fields)
    form = WizardForm(
        request.POST if request.method == "POST" else None, initial=initial, schema_fields=fields
    )
    if request.method == "POST":
        checked = form.check(destination.credential.api_base)
        if checked is not None and not form.cleaned_data.get("name"):
            form.add_error("name", "Give the destination a name.")
            checked = None
        if checked is not None:
            before = audit.snapshot(destination, ["name", "config"])
            destination.name = form.cleaned_data["name"]
            destination.config = checked.to_json()
            destination.save(update_fields=["name", "config", "updated_at"])
            audit.record(
                request,
                "destination.update",
                destination,
                before=before,
                after=audit.snapshot(destination, ["name", "config"]),
            )
            messages.success(
                request,
                f"Saved “{destination.name}” as {destination.get_status_display().lower()}. Nothing is sent until it is activated.",
            )
            return redirect("destination_detail", uuid=destination.uuid)
    panel = _panel(destination, form if request.method == "POST" else None, config)
    context = {**_wizard_context(destination, fields, form), "panel": panel}
    return render(request, "destinations/wizard.html", context, status=422 if form.errors else 200)


def _wizard_context(destination: Destination, fields: list[str], form: WizardForm) -> dict:
    form.wire(reverse("destination_preview", args=[destination.uuid]))
    return {"destination": destination, "endpoints": ENDPOINTS, "schema_fields": fields, "form": form}


def _panel(
    destination: Destination, form: WizardForm | None, config: DestinationConfig | None = None
) -> dict:
    """What the Sample Payload panel shows: samples, or the errors that stand in their way."""
    if form is not None:
        config = form.check(destination.credential.api_base)
        if config is None:
            labels = {name: field.label for name, field in form.fields.items()}
            errors = [(labels.get(name) or "Settings", msgs) for name, msgs in form.errors.items()]
            return {"errors": errors}
    assert config is not None
    if config.validate(destination.credential.api_base):
        return {
            "errors": [
                ("Settings", ["Choose an endpoint (Template) or fill in the Advanced tab to see samples."])
            ]
        }
    size = config.batching.size if config.batching.enabled else 1
    records = (
        Record.objects.filter(nexset_id=destination.nexset_id).order_by("seq").values_list("seq", "data")
    )
    try:
        items = preview(config, records[: SAMPLES * size], destination.credential.api_base, limit=SAMPLES)
    except ConfigError as exc:
        return {"errors": [("Settings", list(exc.args))]}
    samples = []
    for index, item in enumerate(items):
        shown = pretty(item)
        shown["index"] = index
        shown["confirm"] = not shown.get("error") and confirm_needed(item)  # type: ignore[arg-type]
        samples.append(shown)
    endpoint = config.endpoint()
    same_target = bool(endpoint and endpoint.id_param and config.id_value and not config.attributes())
    return {
        "samples": samples,
        "config": config,
        "same_target": same_target and destination.nexset.record_count > 1,
        "empty": not samples,
    }


@role_required(OPERATOR)
@require_POST
def destination_preview(request: HttpRequest, uuid: str) -> HttpResponse:
    destination = get_destination(request, uuid)
    fields = schema_fields(destination.nexset)
    form = WizardForm(request.POST, schema_fields=fields)
    context = {**_wizard_context(destination, fields, form), "panel": _panel(destination, form)}
    response = render(request, "destinations/wizard.html#samples", context)
    if getattr(request, "htmx", None) and request.htmx.trigger_name == "template":
        response.write(render(request, "destinations/wizard.html#template-fields-oob", context).content)
    return response


@role_required(OPERATOR)
@require_POST
def destination_test_send(request: HttpRequest, uuid: str) -> HttpResponse:
    destination = get_destination(request, uuid)
    form = WizardForm(request.POST, schema_fields=schema_fields(destination.nexset))
    panel = _panel(destination, form)
    context: dict = {"destination": destination}
    try:
        index = int(request.POST.get("index", "-1"))
        if "samples" not in panel or not 0 <= index < len(panel["samples"]):
            raise TestSendError("The samples changed: look at them again, then send.")
        config = panel["config"]
        size = config.batching.size if config.batching.enabled else 1
        records = (
            Record.objects.filter(nexset_id=destination.nexset_id).order_by("seq").values_list("seq", "data")
        )
        item = preview(config, records[: SAMPLES * size], destination.credential.api_base, limit=SAMPLES)[
            index
        ]
        if not hasattr(item, "method"):
            raise TestSendError(f"Sample {index + 1} is not a request: {item.message}")  # type: ignore[union-attr]
        spec = edited(item, request.POST.get("body"))  # type: ignore[arg-type]
        sent = send_test(destination, spec, confirm=request.POST.get("confirm", ""))
    except TestSendError as exc:
        context["problem"] = str(exc)
    else:
        context["sent"] = sent
        audit.record(
            request,
            "destination.test_send",
            destination,
            extra={
                "method": spec.method,
                "url": sent.result.url,
                "status": sent.result.status,
                "delivery": str(sent.delivery.uuid),
            },
        )
    return render(request, "destinations/wizard.html#test-result", context)


@role_required(VIEWER)
def destination_detail(request: HttpRequest, uuid: str) -> HttpResponse:
    destination = get_destination(request, uuid)
    config = DestinationConfig.from_json(destination.config)
    tests = destination.deliveries.filter(is_test=True).order_by("-id")[:10]
    context = {
        "destination": destination,
        "config": config,
        "tests": tests,
        "editable": destination.status in EDITABLE,
    }
    return render(request, "destinations/detail.html", context)


@role_required(OPERATOR)
@require_POST
def destination_clone(request: HttpRequest, uuid: str) -> HttpResponse:
    source = get_destination(request, uuid)
    taken = set(Destination.objects.filter(Q(name__startswith=source.name)).values_list("name", flat=True))
    name, n = f"{source.name} (copy)", 2
    while name in taken:
        name, n = f"{source.name} (copy {n})", n + 1
    clone = Destination.objects.create(
        name=name,
        nexset=source.nexset,
        credential=source.credential,
        config=source.config,
        created_by=request.user,
    )
    audit.record(request, "destination.clone", clone, extra={"from": str(source.uuid)})
    messages.success(request, f"Cloned as draft “{clone.name}”.")
    return redirect("destination_edit", uuid=clone.uuid)
