"""The response Nexset of a destination (DESIGN.md 6.11): each final response from Clazar becomes a record.

Written when a delivery of a destination with the response webhook on reaches a final state: succeeded,
failed or exhausted (an unknown settled by a lookup counts as succeeded). ``needs_attention`` is not final:
it waits for a person, and whoever settles it calls ``write`` again. Records that never became a request
(planned straight into ``failed``) have no response and write nothing.

One record per final outcome: ``source_ref`` is ``delivery:<id>`` (``delivery:<id>:<attempts>`` once a person
queued the delivery again), unique per Nexset, so a retried write (two workers, a crash between the
delivery's final write and this one) stores it once, and a delivery that succeeds after a retry or replay
still reaches the Nexset. Storing the response of a
succeeded create fed by a Salesforce Nexset with a write-back also queues that write-back
(flows/salesforce/writeback.py).

The record: ``id`` (the created object's id, at the top level so a follow-up destination can use ``{id}``),
``delivery`` (uuid), ``delivery_id``, ``destination``, ``state``, ``records`` ([{seq, source_ref}]),
``method``, ``url`` (sanitized), ``status``, ``body`` (parsed JSON, else text, else null),
``created_object_id``, ``attempts``, ``error``, ``created_at``, ``sent_at``, ``finished_at``. Never a
header, a token or a secret: keys that look secret inside Clazar's body are masked too.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from django.db import IntegrityError, transaction

from clazar_dest.clazar.transport import REDACTED, sanitize_url
from flows import records
from flows.config import DestinationConfig
from flows.models import Attempt, Delivery, Destination, Nexset, Record
from flows.salesforce import writeback

log = logging.getLogger(__name__)

FINAL = (Delivery.State.SUCCEEDED, Delivery.State.FAILED, Delivery.State.EXHAUSTED)
_SECRET_KEY = re.compile(r"(?i)(token|secret|passw|api[-_]?key|authorization|credential)")


def nexset_for(destination: Destination) -> Nexset:
    """The destination's response Nexset, created on first use ("<destination> responses")."""
    found = Nexset.objects.filter(feeding_destination=destination).first()
    if found is not None:
        return found
    try:
        with transaction.atomic():
            return Nexset.objects.create(
                name=f"{destination.name} responses"[:150],
                kind=Nexset.Kind.RESPONSE,
                feeding_destination=destination,
            )
    except IntegrityError:  # another worker created it first
        return Nexset.objects.get(feeding_destination=destination)


def write(delivery_id: int) -> Record | None:
    """Append the delivery's final response to its destination's response Nexset, once. Returns the
    record, or None when there is nothing to write (not final, a test, the webhook off)."""
    try:
        return write_many([delivery_id])[0]
    except IntegrityError:  # written by another worker meanwhile
        return _stored(delivery_id)


def store_many(delivery_ids: list[int]) -> list[None]:
    """``write_many`` for a deliver run's batches, which don't need the records back (one query less)."""
    write_many(delivery_ids, records_back=False)
    return [None] * len(delivery_ids)


def write_many(delivery_ids: list[int], *, records_back: bool = True) -> list[Record | None]:
    """``write`` for several deliveries at once (the deliver threads' batches): a few queries and one
    append per response Nexset, whatever the number. Raises IntegrityError when another worker wrote one
    of them meanwhile (nothing of the batch is then stored; ``write`` each one alone)."""
    found = Delivery.objects.select_related("destination").defer("body").in_bulk(delivery_ids)
    due: list[tuple[Delivery, Nexset, str]] = []
    nexsets: dict[int, Nexset | None] = {}
    for delivery in (found.get(pk) for pk in delivery_ids):
        if delivery is None or delivery.is_test or delivery.state not in FINAL or not delivery.url:
            continue
        destination = delivery.destination
        if destination.pk not in nexsets:
            wanted = DestinationConfig.from_json(destination.config).response_webhook
            nexsets[destination.pk] = nexset_for(destination) if wanted else None
        nexset = nexsets[destination.pk]
        if nexset is not None:
            # A delivery a person queued again (retry, replay, send again) gets a new final outcome: a
            # new record.
            ref = f"delivery:{delivery.pk}" + (f":{delivery.attempts}" if delivery.attempts_base else "")
            due.append((delivery, nexset, ref))
    if not due:
        return [None] * len(delivery_ids)
    refs, nexset_ids = [ref for _, _, ref in due], {n.pk for _, n, _ in due}
    stored = set(
        Record.objects.filter(nexset_id__in=nexset_ids, source_ref__in=refs).values_list(
            "nexset_id", "source_ref"
        )
    )
    fresh = [(d, n, ref) for d, n, ref in due if (n.pk, ref) not in stored]
    if fresh:
        attempts, covered = _latest_attempts(fresh), _covered(fresh)
        by_nexset: dict[int, list[tuple[Delivery, str]]] = {}
        for delivery, nexset, ref in fresh:
            by_nexset.setdefault(nexset.pk, []).append((delivery, ref))
        with transaction.atomic():
            for nexset_id, rows in by_nexset.items():
                records.append(
                    nexset_id,
                    [build(d, attempts.get(d.pk), covered.get(d.pk, [])) for d, _ in rows],
                    [ref for _, ref in rows],
                )
            writeback.schedule_many(
                d for d, _, _ in fresh
            )  # Salesforce: the created ids back into the source
    if not records_back:
        return [None] * len(delivery_ids)
    written = {
        (r.nexset_id, r.source_ref): r
        for r in Record.objects.filter(nexset_id__in=nexset_ids, source_ref__in=refs)
    }
    by_delivery = {d.pk: written.get((n.pk, ref)) for d, n, ref in due}
    return [by_delivery.get(pk) for pk in delivery_ids]


def _stored(delivery_id: int) -> Record | None:
    delivery = Delivery.objects.select_related("destination").get(pk=delivery_id)
    nexset = Nexset.objects.filter(feeding_destination=delivery.destination).first()
    ref = f"delivery:{delivery.pk}" + (f":{delivery.attempts}" if delivery.attempts_base else "")
    return Record.objects.filter(nexset=nexset, source_ref=ref).first() if nexset else None


def _latest_attempts(rows: list[tuple[Delivery, Nexset, str]]) -> dict[int, Attempt]:
    latest: dict[int, Attempt] = {}
    attempts = Attempt.objects.filter(delivery_id__in=[d.pk for d, _, _ in rows]).only(
        "delivery_id", "number", "status_code", "response_body", "started_at"
    )
    for attempt in attempts.order_by("number"):
        latest[attempt.delivery_id] = attempt
    return latest


def _covered(rows: list[tuple[Delivery, Nexset, str]]) -> dict[int, list[dict[str, Any]]]:
    covered: dict[int, list[dict[str, Any]]] = {}
    items = (
        Record.objects.filter(delivery_items__delivery__in=[d.pk for d, _, _ in rows])
        .order_by("seq")
        .values_list("delivery_items__delivery_id", "seq", "source_ref")
    )
    for delivery_id, seq, source_ref in items:
        covered.setdefault(delivery_id, []).append({"seq": seq, "source_ref": source_ref})
    return covered


def build(
    delivery: Delivery, attempt: Attempt | None = None, covered: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The response record for a delivery (see the module docstring); ``attempt`` (its latest) and
    ``covered`` (its records' seq and source_ref) are read when not given."""
    if attempt is None:
        attempt = Attempt.objects.filter(delivery=delivery).order_by("-number").first()
    if covered is None:
        covered = list(
            Record.objects.filter(delivery_items__delivery=delivery)
            .order_by("seq")
            .values("seq", "source_ref")
        )
    return {
        "id": delivery.created_object_id or None,
        "delivery": str(delivery.uuid),
        "delivery_id": delivery.pk,
        "destination": delivery.destination.name,
        "state": delivery.state,
        "records": covered,
        "method": delivery.method,
        "url": sanitize_url(delivery.url),
        "status": attempt.status_code if attempt else delivery.last_status,
        "body": _body(attempt.response_body) if attempt else None,
        "created_object_id": delivery.created_object_id or None,
        "attempts": delivery.attempts,
        "error": delivery.last_error or None,
        "created_at": _iso(delivery.created_at),
        "sent_at": _iso(attempt.started_at) if attempt else None,
        "finished_at": _iso(delivery.finished_at),
    }


def _body(text: str) -> Any:
    if not text:
        return None
    try:
        return _masked(json.loads(text))
    except ValueError:
        return text


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and v else _masked(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
