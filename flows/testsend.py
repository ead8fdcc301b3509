"""Send Test Data: one edited sample sent for real through the same builder and transport as delivery,
recorded as a test delivery with its attempt (STYLE.md convention 2)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any

from django.db import transaction
from django.utils import timezone

from clazar_dest.clazar.endpoints import BY_KEY
from clazar_dest.clazar.spec import RequestSpec
from clazar_dest.clazar.transport import AttemptResult
from flows.attempts import close_attempt
from flows.delivery.send import exchange
from flows.models import Delivery, DeliveryItem, Destination, Record
from flows.outcomes import Outcome

log = logging.getLogger(__name__)

STATE_OF = {
    "done": Delivery.State.SUCCEEDED,
    "unknown": Delivery.State.UNKNOWN,
}


class TestSendError(ValueError):
    """The edited sample can't be sent; the message says why."""


@dataclass(frozen=True)
class TestSend:
    delivery: Delivery
    result: AttemptResult
    outcome: Outcome

    @property
    def pretty_body(self) -> str:
        if self.result.json is not None:
            return json.dumps(self.result.json, indent=2, ensure_ascii=False)
        return self.result.body


def edited(spec: RequestSpec, body_text: str | None) -> RequestSpec:
    """The spec with the body the user edited (validated as JSON). DELETE keeps no body."""
    if spec.body is None:
        return spec
    if body_text is None:
        return spec
    try:
        value: Any = json.loads(body_text)
    except json.JSONDecodeError as exc:
        raise TestSendError(
            f"The edited body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        ) from None
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return replace(spec, body=body)


def confirm_needed(spec: RequestSpec) -> bool:
    endpoint = BY_KEY.get(spec.endpoint)
    return bool(endpoint and endpoint.irreversible)


def send_test(destination: Destination, spec: RequestSpec, *, confirm: str = "") -> TestSend:
    """Send ``spec`` now as a test delivery of ``destination``. Irreversible endpoints need ``confirm`` to be
    the target object's id, typed by the user."""
    if confirm_needed(spec) and confirm.strip() != spec.target_id:
        raise TestSendError(
            f"This is irreversible: type the target ID {spec.target_id} to confirm before sending."
        )
    with transaction.atomic():
        delivery = Delivery.objects.create(
            destination=destination,
            is_test=True,
            state=Delivery.State.SENDING,
            attempts=1,
            method=spec.method,
            url=spec.url,
            body=spec.body,
            target_id=spec.target_id,
            endpoint=spec.endpoint,
        )
        records = Record.objects.filter(nexset_id=destination.nexset_id, seq__in=spec.seqs).only("id")
        DeliveryItem.objects.bulk_create(
            [
                DeliveryItem(delivery=delivery, record=r, destination=destination, is_test=True)
                for r in records
            ]
        )
    sent = exchange(delivery, spec, 1, destination.credential_id)
    attempt, result, outcome = sent.attempt, sent.result, sent.outcome
    close_attempt(attempt, result, outcome)
    delivery.state = STATE_OF.get(outcome.action, Delivery.State.FAILED)
    delivery.last_status = result.status
    delivery.last_error = "" if outcome.action == "done" else outcome.message
    delivery.created_object_id = outcome.created_id or ""
    delivery.finished_at = timezone.now()
    delivery.save(
        update_fields=["state", "last_status", "last_error", "created_object_id", "finished_at", "updated_at"]
    )
    log.info(
        "test send for destination %s: %s %s -> %s", destination.uuid, spec.method, result.url, result.status
    )
    return TestSend(delivery=delivery, result=result, outcome=outcome)
