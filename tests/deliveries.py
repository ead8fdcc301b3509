"""Delivery rows made directly, the way the engine leaves them, for the dashboard, history and action tests."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import factory
from django.utils import timezone

from flows import records
from flows.models import Attempt, Delivery, DeliveryItem, Destination, Record
from tests.factories import DestinationFactory

FINAL = ("succeeded", "failed", "exhausted", "cancelled")
STATUS_OF = {"succeeded": 201, "failed": 400, "exhausted": 503, "retry_scheduled": 429}


class DeliveryFactory(factory.django.DjangoModelFactory):
    """A delivery of one new record of its destination's Nexset, with one attempt when it was sent."""

    class Meta:
        model = Delivery
        skip_postgeneration_save = True

    destination = factory.SubFactory(DestinationFactory)
    state = Delivery.State.QUEUED
    method = "POST"
    url = "https://api.clazar.io/private_offers/"
    endpoint = "create_private_offer"
    body = factory.LazyAttribute(lambda o: json.dumps(o.data).encode())

    class Params:
        data = factory.LazyFunction(lambda: {"name": "Acme annual", "buyer": "123456789012"})

    @classmethod
    def _create(cls, model_class: type[Delivery], *args: Any, **kwargs: Any) -> Delivery:
        state = kwargs.get("state", Delivery.State.QUEUED)
        kwargs.setdefault("last_status", STATUS_OF.get(state))
        if state in FINAL:
            kwargs.setdefault("finished_at", timezone.now())
        if state == "failed":
            kwargs.setdefault("last_error", "buyer: This field is required.")
        if state != "queued":
            kwargs.setdefault("attempts", 1)
        return super()._create(model_class, *args, **kwargs)

    @factory.post_generation
    def record(self, create: bool, extracted: Any, **kwargs: Any) -> None:
        """Link a record: ``record=<Record>``, or a new one of the Nexset holding ``data``."""
        if not create:
            return
        record = extracted
        if record is None:
            data = json.loads(bytes(self.body)) if self.body else {"name": "x"}
            nexset_id = self.destination.nexset_id
            records.append(nexset_id, [data])
            record = Record.objects.filter(nexset_id=nexset_id).order_by("-seq").first()
        DeliveryItem.objects.create(
            delivery=self, record=record, destination=self.destination, is_test=self.is_test
        )
        if self.attempts:
            sent = (self.finished_at or timezone.now()) - timedelta(milliseconds=300)
            Attempt.objects.create(
                delivery=self,
                number=self.attempts,
                started_at=sent,
                finished_at=sent + timedelta(milliseconds=300),
                method=self.method,
                url=self.url,
                request_headers={"Authorization": "Bearer ****", "Content-Type": "application/json"},
                request_body=bytes(self.body).decode() if self.body else "",
                status_code=self.last_status,
                response_headers={"Content-Type": "application/json"},
                response_body=json.dumps({"buyer": ["This field is required."]})
                if self.state == "failed"
                else "",
                duration_ms=300,
                outcome={"succeeded": "succeeded", "failed": "failed", "exhausted": "failed"}.get(
                    self.state, "retry"
                ),
                error=self.last_error,
            )


def deliveries(destination: Destination, states: dict[str, int], **kwargs: Any) -> list[Delivery]:
    """``states``: how many deliveries of each state, oldest first in the order given."""
    made = []
    for state, n in states.items():
        made += [DeliveryFactory(destination=destination, state=state, **kwargs) for _ in range(n)]
    return made
