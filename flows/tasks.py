"""Thin Celery tasks: ids in, services called. Messages are wake-ups; the database is the queue of record."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.core.cache import cache
from django.db import transaction

log = logging.getLogger(__name__)

# Wake-ups for one destination caused by new records are coalesced over this many seconds: a burst of
# webhook messages sends one wake-up. A deliver loop clears the mark before it stops (``rearm``) and looks
# once more, so a record arriving as it ends is not left for the sweeper.
WAKE_COALESCE_SECONDS = 2
# A run with more due work than it holds in flight wakes one more worker for its destination (``ask_help``);
# at most one such wake-up waits per destination, for at most this long.
HELP_SECONDS = 60


@shared_task(name="flows.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    """Periodic sweep (beat): expired leases, due retries, wake-ups (flows/delivery/sweeper.py)."""
    from flows import delivery

    return delivery.sweep()


@shared_task(name="flows.deliver", ignore_result=True)
def deliver(destination_id: int) -> dict[str, int]:
    """Wake-up for one destination: plan new records, then claim and send what is due. A duplicate
    message finds nothing to claim."""
    from flows import delivery

    _forget(_help_key(destination_id))  # a help wake-up waiting is this one, or no longer needed
    tally = delivery.run(destination_id)
    log.info("deliver %s: %s", destination_id, dict(tally) or "nothing due")
    return dict(tally)


def wake(destination_id: int) -> None:
    """Enqueue ``flows.deliver`` for the destination once the current transaction commits."""
    transaction.on_commit(lambda: _send(destination_id))


def wake_nexset(nexset_id: int) -> None:
    """After records were added to a Nexset: wake its active destinations (coalesced), after commit."""

    def send() -> None:
        from flows.models import Destination

        ids = Destination.objects.filter(nexset_id=nexset_id, status=Destination.Status.ACTIVE).values_list(
            "id", flat=True
        )
        for destination_id in ids:
            try:
                fresh = cache.add(_wake_key(destination_id), 1, timeout=WAKE_COALESCE_SECONDS)
            except Exception:  # a cache outage only costs a duplicate wake-up
                fresh = True
            if fresh:
                _send(destination_id)

    transaction.on_commit(send)


def rearm(destination_id: int) -> None:
    """A deliver loop about to stop: the next new record must wake the destination again, not be
    coalesced into the wake-up that is ending. The loop looks for work once more after this."""
    _forget(_wake_key(destination_id))


def ask_help(destination_id: int) -> None:
    """A deliver run found more due work than it holds in flight: wake one more worker for the destination,
    so a backlog gets every free worker at once rather than at the sweeper's next round. The run that
    wakes takes the mark off and may ask in turn, so free workers join one after another; workers all
    busy leave one wake-up waiting, which a finished run's worker takes."""
    try:
        fresh = cache.add(_help_key(destination_id), 1, timeout=HELP_SECONDS)
    except Exception:  # without the cache, the sweeper's wake-ups bring the other workers
        return
    if fresh:
        _send(destination_id)


def _forget(key: str) -> None:
    try:
        cache.delete(key)
    except Exception:
        log.warning("could not clear the cache key %s; it expires by itself (the sweeper covers it)", key)


def _wake_key(destination_id: int) -> str:
    return f"flows:wake:{destination_id}"


def _help_key(destination_id: int) -> str:
    return f"flows:help:{destination_id}"


def _send(destination_id: int) -> None:
    """Publish a wake-up; if the broker is down, the sweeper sends one later (nothing is lost)."""
    try:
        deliver.delay(destination_id)
    except Exception:
        log.warning("could not enqueue flows.deliver for destination %s; the sweeper will", destination_id)


def later(task: Any, *args: Any) -> None:
    """Enqueue ``task`` once the current transaction commits; a broker that is down is logged, not
    raised (the page that asked still answers)."""

    def send() -> None:
        try:
            task.delay(*args)
        except Exception:
            log.warning("could not enqueue %s %s", task.name, args)

    transaction.on_commit(send)


@shared_task(name="flows.build_search_index", ignore_result=True)
def build_search_index(nexset_id: int) -> bool:
    """Build a large Nexset's record search index (flows/search_index.py); a duplicate finds it built."""
    from flows import search_index

    return search_index.build(nexset_id)


@shared_task(name="flows.drop_search_index", ignore_result=True)
def drop_search_index(nexset_id: int) -> None:
    """Drop a deleted Nexset's record search index."""
    from flows import search_index

    search_index.drop(nexset_id)


@shared_task(name="flows.run_import", ignore_result=True)
def run_import(import_id: int) -> str:
    """Run a queued file import (flows/imports.py); a duplicate message finds nothing queued."""
    from flows import imports

    imp = imports.run(import_id)
    return imp.status if imp is not None else "skipped"


@shared_task(name="flows.salesforce_pull", ignore_result=True)
def salesforce_pull(import_id: int) -> str:
    """Run a queued Salesforce pull (flows/salesforce/pull.py); a duplicate message finds nothing queued."""
    from flows.salesforce import pull

    imp = pull.run(import_id)
    return imp.status if imp is not None else "skipped"


@shared_task(name="flows.salesforce_due", ignore_result=True)
def salesforce_due() -> int:
    """Beat: queue the scheduled Salesforce pulls that are due."""
    from flows.salesforce import pull

    return len(pull.due())


@shared_task(name="flows.salesforce_writeback", ignore_result=True, bind=True, max_retries=3)
def salesforce_writeback(self, delivery_id: int, only: list[str] | None = None) -> int:
    """Write a created Clazar id back into the source Salesforce records (flows/salesforce/writeback.py).
    Outcomes are audited there; only records Salesforce could not be reached for come back, at most
    writeback.ATTEMPTS - 1 = 3 times."""
    from flows.salesforce import writeback

    attempt = self.request.retries + 1
    result = writeback.run(delivery_id, only=only, attempt=attempt)
    if result.again:
        raise self.retry(args=(delivery_id, result.again), countdown=writeback.RETRY_SECONDS * attempt)
    return len(result.outcomes)
