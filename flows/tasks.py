"""Thin Celery tasks: ids in, services called. Messages are wake-ups; the database is the queue of record."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db.models import Count

from flows.models import Delivery

log = logging.getLogger(__name__)


@shared_task(name="flows.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    """Periodic sweep (beat). For now it reports open deliveries; the engine adds re-queueing and planning."""
    counts = dict(
        Delivery.objects.filter(state__in=Delivery.OPEN_STATES)
        .values_list("state")
        .annotate(n=Count("id"))
        .values_list("state", "n")
    )
    log.info("sweep: open deliveries %s", counts or "none")
    return counts
