"""The dashboard (every destination with its counts, progress, rate, outcome chart and last error, polling
while anything moves) and activation: a preview first, then Activate; Deactivate in one click.

Activation itself (what it checks, how it plans, what it audits) is the engine's ``flows.activation``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, HttpResponseClientRefresh

from flows import board as data
from flows import charts
from flows.config import DestinationConfig
from flows.models import Credential, Delivery, Destination, Nexset, SalesforceConnection
from flows.roles import ADMIN, OPERATOR, VIEWER, role_required
from flows.views.destinations import get_destination

S = Delivery.State
PENDING = (S.QUEUED, S.SENDING, S.RETRY_SCHEDULED, S.UNKNOWN)
ERROR_STATES = (S.FAILED, S.EXHAUSTED, S.NEEDS_ATTENTION, S.RETRY_SCHEDULED, S.UNKNOWN)
# Shown on each card, in this order, when not zero.
COUNT_ORDER = (
    S.QUEUED,
    S.SENDING,
    S.RETRY_SCHEDULED,
    S.UNKNOWN,
    S.SUCCEEDED,
    S.NEEDS_ATTENTION,
    S.FAILED,
    S.EXHAUSTED,
    S.CANCELLED,
)
FAST_POLL, SLOW_POLL = "every 3s", "every 30s"


@role_required(VIEWER)
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    context = board_context(timezone.now())
    if request.htmx and request.htmx.target == "board":
        return render(request, "dashboard.html#board", context)
    return render(request, "dashboard.html", context)


def board_context(now: Any) -> dict[str, Any]:
    """Everything the dashboard's live part shows, in a fixed number of queries (not one per destination)."""
    destinations = list(Destination.objects.select_related("nexset", "credential"))
    live = data.read(destinations, now)
    counts = live.counts
    errors = data.last_errors(destinations, ERROR_STATES)
    delivered = data.delivered_records(
        d for d in destinations if DestinationConfig.from_json(d.config).batching.enabled
    )
    busy = watching = False
    for d in destinations:
        mine = counts.get(d.pk, {})
        d.counts = [
            (state, S(state).label, mine[state], state != S.SUCCEEDED and mine[state] > data.CAP)
            for state in COUNT_ORDER
            if mine.get(state)
        ]
        d.pending = sum(mine.get(state, 0) for state in PENDING)
        d.planned = sum(mine.values())
        d.unplanned = max(d.nexset.last_seq - d.cursor, 0)
        d.total_records = d.nexset.record_count
        d.delivered = delivered.get(d.pk, mine.get(S.SUCCEEDED, 0))
        d.percent = min(100, int(d.delivered * 100 / d.total_records)) if d.total_records else 0
        d.rate = live.rates.get(d.pk, 0)
        d.last_error = errors[d.pk].last_error if d.pk in errors else ""
        d.last_error_at = errors[d.pk].updated_at if d.pk in errors else None
        d.chart = charts.stacked(live.outcomes.get(d.pk, {}), now)
        d.is_active = d.status == Destination.Status.ACTIVE
        d.moving = (d.is_active and (d.pending or d.unplanned)) or bool(mine.get(S.SENDING))
        busy = busy or d.moving
        watching = watching or d.is_active
    return {
        "destinations": destinations,
        "rejected_credentials": Credential.objects.filter(status=Credential.Status.REJECTED),
        "auto_paused": [d for d in destinations if d.status == Destination.Status.AUTO_PAUSED],
        "needs_attention": sum(c.get(S.NEEDS_ATTENTION, 0) for c in counts.values()),
        "needs_attention_in": [d for d in destinations if counts.get(d.pk, {}).get(S.NEEDS_ATTENTION)],
        "salesforce": SalesforceConnection.objects.first(),
        "poll": FAST_POLL if busy else SLOW_POLL if watching else "",
        "nexset_count": Nexset.objects.count() if not destinations else None,
        "credential_count": Credential.objects.count() if not destinations else None,
        "cap": data.CAP,
        "now": now,
    }


# Activation ---------------------------------------------------------------------------------------------


def _next(request: HttpRequest, destination: Destination) -> str:
    """Where to go afterwards: the page the button was on (a local URL), else the destination page."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return reverse("destination_detail", args=[destination.uuid])


@role_required(OPERATOR)
@require_http_methods(["GET", "POST"])
def destination_activate(request: HttpRequest, uuid: Any) -> HttpResponse:
    from flows import activation

    destination = get_destination(request, uuid)
    problem = ""
    if request.method == "POST":
        confirm = request.POST.get("confirm", "")
        try:
            activation.activate(destination.pk, user=request.user, confirm=confirm, request=request)
        except activation.ActivationError as exc:
            problem = str(exc)
        else:
            destination.refresh_from_db()
            messages.success(request, f"Activated “{destination.name}”: its records are being sent.")
            target = _next(request, destination)
            return HttpResponseClientRedirect(target) if request.htmx else redirect(target)
    context = {
        "destination": destination,
        "preview": activation.preview(destination),
        "problem": problem,
        "next": _next(request, destination),
    }
    if request.htmx:
        return render(request, "destinations/activate.html#panel", context)
    return render(request, "destinations/activate.html", context, status=422 if problem else 200)


@role_required(OPERATOR)
@require_POST
def destination_deactivate(request: HttpRequest, uuid: Any) -> HttpResponse:
    from flows import activation

    destination = get_destination(request, uuid)
    try:
        activation.deactivate(destination.pk, user=request.user, request=request)
    except activation.ActivationError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            f"Deactivated “{destination.name}”: nothing new is sent. Requests already on their way finish "
            "and are recorded.",
        )
    if request.htmx and request.htmx.target == "board":
        return render(request, "dashboard.html#board", board_context(timezone.now()))
    if request.htmx:
        return HttpResponseClientRefresh()
    return redirect(_next(request, destination))


@role_required(ADMIN)
@require_http_methods(["GET", "POST"])
def deliveries_pause_all(request: HttpRequest) -> HttpResponse:
    """Stop every delivery at once (Admin), after a confirmation that lists what will pause."""
    from flows import activation

    running = Destination.objects.filter(
        status__in=(Destination.Status.ACTIVE, Destination.Status.AUTO_PAUSED)
    ).order_by("name")
    if request.method == "GET":
        return render(request, "deliveries/pause_all.html", {"running": running})
    names = activation.pause_all(user=request.user, request=request)
    if names:
        messages.success(
            request,
            f"Paused {len(names)} destination{'s' if len(names) != 1 else ''}: {', '.join(names)}. "
            "Requests already on their way finish and are recorded; activate each again when ready.",
        )
    else:
        messages.info(request, "No destination was delivering.")
    return redirect("dashboard")
