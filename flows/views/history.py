"""A destination's delivery history (filters, keyset pages, CSV export, bulk retry/cancel with a preview
count first) and one delivery's page: its attempts as sent and answered (secrets masked), and the operator
actions. Viewers read and export; Operators act (``flows.actions``)."""

from __future__ import annotations

import json
import re
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clazar_dest.clazar.transport import REDACTED, redact_headers, sanitize_url
from flows import actions, audit, browse, history, search_index
from flows.models import Attempt, Delivery
from flows.roles import OPERATOR, VIEWER, role_required
from flows.views.destinations import get_destination

ATTEMPTS_SHOWN = 25
_SECRET_KEY = re.compile(r"(?i)(token|secret|passw|api[-_]?key|apikey|authorization|credential|cookie)")


# The history page -------------------------------------------------------------------------------------------


@role_required(VIEWER)
@require_GET
def destination_history(request: HttpRequest, uuid: Any) -> HttpResponse:
    destination = get_destination(request, uuid)
    context = _history_context(request, destination, request.GET)
    if request.htmx and request.htmx.target == "history":
        return render(request, "destinations/history.html#history", context)
    return render(request, "destinations/history.html", context)


def _history_context(request: HttpRequest, destination: Any, query: Any, **extra: Any) -> dict[str, Any]:
    filters = history.Filters.parse(query, destination)
    page = history.page(
        destination,
        filters,
        before=browse.number(query.get("before")),
        after=browse.number(query.get("after")),
    )
    searching = bool(filters.field_name) and not filters.problems
    return {
        "destination": destination,
        "filters": filters,
        "search_index": search_index.request(destination.nexset) if searching else "",
        "page": page,
        "rows": [(row, page.seqs.get(row.pk, [])) for row in page.rows],
        "states": [(s.value, s.label) for s in Delivery.State],
        "groups": history.GROUPS,
        "periods": history.PERIODS,
        "fields": list(destination.nexset.schema or {}),
        **extra,
    }


@role_required(VIEWER)
@require_GET
def destination_history_csv(request: HttpRequest, uuid: Any) -> StreamingHttpResponse:
    destination = get_destination(request, uuid)
    filters = history.Filters.parse(request.GET, destination)
    audit.record(request, "destination.export", destination, extra={"filter": filters.describe()})
    response = StreamingHttpResponse(
        history.csv_lines(destination, filters), content_type="text/csv; charset=utf-8"
    )
    name = f"{slugify(destination.name) or 'destination'}-history-{timezone.now():%Y%m%d-%H%M}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@role_required(OPERATOR)
@require_http_methods(["GET", "POST"])
def destination_bulk(request: HttpRequest, uuid: Any) -> HttpResponse:
    """GET: how many deliveries of the filtered history the action would change. POST: do it."""
    destination = get_destination(request, uuid)
    data = request.POST if request.method == "POST" else request.GET
    action = data.get("action", "retry")
    filters = history.Filters.parse(data, destination)
    if request.method == "GET":
        try:
            preview = actions.preview(destination, filters, action)
        except actions.ActionError as exc:
            messages.error(request, str(exc))
            preview = None
        extra = {"bulk": preview, "bulk_params": filters.params(absolute=True)}
        context = _history_context(request, destination, request.GET, **extra)
        if request.htmx:
            return render(request, "destinations/history.html#bulk-confirm", context)
        return render(request, "destinations/history.html", context)
    try:
        changed = actions.bulk(
            destination,
            filters,
            action,
            upto=browse.number(data.get("upto")),
            user=request.user,
            request=request,
        )
    except actions.ActionError as exc:
        messages.error(request, str(exc))
    else:
        shown = browse.number(data.get("count"))
        verb = actions.BULK[action][1]
        text = f"{verb.capitalize()} {changed:,} deliver{'y' if changed == 1 else 'ies'}."
        if shown is not None and changed < shown:
            text += f" {shown - changed:,} had changed since the preview and were left as they are."
        messages.success(request, text)
    if request.htmx:
        context = _history_context(request, destination, filters.params())
        return render(request, "destinations/history.html#history", context)
    url = reverse("destination_history", args=[destination.uuid])
    return redirect(f"{url}?{filters.query}" if filters.query else url)


# One delivery -------------------------------------------------------------------------------------------------


def get_delivery(request: HttpRequest, uuid: Any) -> Delivery:
    return get_object_or_404(
        Delivery.objects.select_related("destination__nexset", "destination__credential"), uuid=uuid
    )


@role_required(VIEWER)
@require_GET
def delivery_detail(request: HttpRequest, uuid: Any) -> HttpResponse:
    delivery = get_delivery(request, uuid)
    context = _delivery_context(delivery)
    if request.htmx and (request.htmx.target or "").startswith("row-"):
        return render(request, "deliveries/detail.html#inspect-row", context)
    if request.htmx:
        return render(request, "deliveries/detail.html#inspector", context)
    return render(request, "deliveries/detail.html", context)


def _delivery_context(delivery: Delivery, **extra: Any) -> dict[str, Any]:
    attempts = list(delivery.attempt_rows.order_by("-number")[: ATTEMPTS_SHOWN + 1])
    seqs = history.seqs_of([delivery.pk]).get(delivery.pk, [])
    state = delivery.state
    # The body to edit is what will be sent: shown as planned (it holds no secrets: DESIGN.md 4), never
    # masked, or replaying it would send the mask.
    raw = bytes(delivery.body).decode("utf-8", "replace") if delivery.body is not None else None
    body = _pretty(raw, mask=False) if raw is not None else None
    return {
        "delivery": delivery,
        "destination": delivery.destination,
        "attempts": [_shown(a) for a in attempts[:ATTEMPTS_SHOWN]],
        "more_attempts": max(delivery.attempts - ATTEMPTS_SHOWN, 0) if len(attempts) > ATTEMPTS_SHOWN else 0,
        "seqs": seqs,
        "seq_label": history.seq_label(seqs),
        "body": body,
        "edited_body": extra.pop("edited_body", body),
        "can_retry": not delivery.is_test and state in actions.RETRYABLE,
        "can_replay": not delivery.is_test and state in actions.REPLAYABLE and body is not None,
        "can_cancel": not delivery.is_test and state in actions.CANCELLABLE,
        "can_decide": not delivery.is_test and state == Delivery.State.NEEDS_ATTENTION,
        **extra,
    }


def _pretty(text: str, *, mask: bool = True) -> str:
    """Indented JSON (secret-looking keys masked unless ``mask`` is off), or the text as it is."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text
    return json.dumps(_masked(value) if mask else value, indent=2, ensure_ascii=False)


def _masked(value: Any) -> Any:
    """JSON with the values of secret-looking keys replaced (defence in depth: bodies should hold none)."""
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) and v else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _shown(attempt: Attempt) -> dict[str, Any]:
    """An attempt as the inspector shows it: URL sanitized, header secrets and secret JSON keys masked."""
    return {
        "attempt": attempt,
        "url": sanitize_url(attempt.url),
        "request_headers": sorted(redact_headers(attempt.request_headers or {}).items()),
        "request_body": _pretty(attempt.request_body) if attempt.request_body else "",
        "response_headers": sorted(redact_headers(attempt.response_headers or {}).items()),
        "response_body": _pretty(attempt.response_body) if attempt.response_body else "",
    }


def _act(request: HttpRequest, uuid: Any, run: Any, done: str) -> HttpResponse:
    """Run an action on a delivery, then show the result: the inspector again (htmx, with the history row
    updated out of band) or a redirect to where the button was."""
    delivery = get_delivery(request, uuid)
    try:
        run(delivery)
    except actions.ActionError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, done.format(id=str(delivery.uuid)[:8]))
    delivery = get_delivery(request, uuid)
    if request.htmx:
        return _inspector(request, delivery)
    return redirect(_back(request, delivery))


def _inspector(request: HttpRequest, delivery: Delivery, **extra: Any) -> HttpResponse:
    in_row = bool(request.POST.get("row"))
    context = _delivery_context(delivery, in_row=in_row, **extra)
    context["row"] = (delivery, context["seqs"])
    response = render(request, "deliveries/detail.html#inspector", context)
    if in_row:
        response.write(render(request, "destinations/history.html#row-oob", context).content)
    return response


def _back(request: HttpRequest, delivery: Delivery) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return reverse("delivery_detail", args=[delivery.uuid])


@role_required(OPERATOR)
@require_POST
def delivery_retry(request: HttpRequest, uuid: Any) -> HttpResponse:
    return _act(
        request,
        uuid,
        lambda d: actions.retry(d.pk, user=request.user, request=request),
        "Delivery {id} is queued again and will be sent as planned.",
    )


@role_required(OPERATOR)
@require_POST
def delivery_cancel(request: HttpRequest, uuid: Any) -> HttpResponse:
    return _act(
        request,
        uuid,
        lambda d: actions.cancel(d.pk, user=request.user, request=request),
        "Delivery {id} is cancelled: it will not be sent.",
    )


@role_required(OPERATOR)
@require_POST
def delivery_mark_created(request: HttpRequest, uuid: Any) -> HttpResponse:
    object_id = request.POST.get("object_id", "")
    return _act(
        request,
        uuid,
        lambda d: actions.mark_created(d.pk, object_id, user=request.user, request=request),
        "Delivery {id} is marked as succeeded with the id you entered.",
    )


@role_required(OPERATOR)
@require_POST
def delivery_send_again(request: HttpRequest, uuid: Any) -> HttpResponse:
    return _act(
        request,
        uuid,
        lambda d: actions.send_again(d.pk, user=request.user, request=request),
        "Delivery {id} is queued to be sent again, as you decided.",
    )


@role_required(OPERATOR)
@require_POST
def delivery_replay(request: HttpRequest, uuid: Any) -> HttpResponse:
    """Edit-and-replay. A body that is not valid JSON comes back with the text kept and the reason."""
    if "body" not in request.POST:
        messages.error(request, "Nothing to replay: edit the body first.")
        return redirect(_back(request, get_delivery(request, uuid)))
    delivery = get_delivery(request, uuid)
    text = request.POST["body"]
    try:
        actions.replay(delivery.pk, text, user=request.user, request=request)
    except actions.ActionError as exc:
        delivery = get_delivery(request, uuid)
        if request.htmx:
            return _inspector(request, delivery, edited_body=text, replay_problem=str(exc))
        context = _delivery_context(delivery, edited_body=text, replay_problem=str(exc))
        return render(request, "deliveries/detail.html", context, status=422)
    messages.success(request, f"Delivery {str(delivery.uuid)[:8]} is queued with the edited body.")
    delivery = get_delivery(request, uuid)
    if request.htmx:
        return _inspector(request, delivery)
    return redirect(_back(request, delivery))
