"""Planning: records with ``seq > cursor`` become deliveries, a chunk per transaction (DESIGN.md 6.1).

Each chunk runs in one transaction that holds the destination's row lock (PostgreSQL; on SQLite the
database write lock), reads the next records, builds their requests with the same ``iter_requests`` the
Sample Payload panel uses, writes the Delivery and DeliveryItem rows and advances the cursor. Two planners
for one destination therefore take turns, and the DeliveryItem constraint (a record in at most one
non-test delivery per destination) would refuse a second plan of the same record even if they did not.

A record the builder refuses (a missing ``{id}``, a code template error) becomes a delivery in ``failed``
with the reason, so every record ends somewhere visible.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from clazar_dest.clazar.spec import RecordError
from flows.bulk import insert_rows
from flows.config import DestinationConfig
from flows.models import Credential, Delivery, DeliveryItem, Destination, Record
from flows.payloads import ConfigError, iter_requests

log = logging.getLogger(__name__)


def plan(destination_id: int, *, chunk: int | None = None, chunks: int | None = None) -> int:
    """Plan up to ``chunks`` chunks (all when None) of new records of an active destination; return how
    many records were planned."""
    size = chunk or settings.DELIVERY_PLAN_CHUNK
    total = done = 0
    while chunks is None or done < chunks:
        planned = plan_chunk(destination_id, size)
        total += planned
        done += 1
        if planned < size:
            break
    return total


def pending(destination_id: int) -> bool:
    """Whether the destination's Nexset has records past its cursor (one indexed read, no lock)."""
    return Destination.objects.filter(pk=destination_id, nexset__last_seq__gt=F("cursor")).exists()


def plan_chunk(destination_id: int, size: int) -> int:
    """Plan the next ``size`` records; 0 when there are none or the destination is not active."""
    with transaction.atomic():
        dest = Destination.objects.select_for_update().filter(pk=destination_id).first()
        if dest is None or dest.status != Destination.Status.ACTIVE:
            return 0
        rows = list(
            Record.objects.filter(nexset_id=dest.nexset_id, seq__gt=dest.cursor)
            .order_by("seq")
            .values_list("id", "seq", "data")[:size]
        )
        if not rows:
            return 0
        api_base = Credential.objects.values_list("api_base", flat=True).get(pk=dest.credential_id)
        config = DestinationConfig.from_json(dest.config)
        try:
            items = list(iter_requests(config, [(seq, data) for _, seq, data in rows], api_base))
        except ConfigError as exc:
            reason = "; ".join(m for messages in exc.errors.values() for m in messages)
            Destination.objects.filter(pk=dest.pk).update(
                status=Destination.Status.PAUSED,
                paused_reason=f"Paused: the settings can't be sent as they are ({reason}) Edit the "
                "destination, then activate it again.",
            )
            log.warning("destination %s paused by the planner: invalid config: %s", dest.uuid, reason)
            return 0
        _write(dest, config, items, {seq: pk for pk, seq, _ in rows})
        dest.cursor = rows[-1][1]
        dest.save(update_fields=["cursor", "updated_at"])
    log.info("destination %s: planned %s records up to seq %s", dest.uuid, len(rows), dest.cursor)
    return len(rows)


def _write(dest: Destination, config: DestinationConfig, items: list, record_ids: dict[int, int]) -> None:
    """Insert the chunk's deliveries and their items (rows, not model objects: planning a chunk of a
    thousand cost more in making objects than in writing them)."""
    now = timezone.now()
    deliveries, seqs = [], []
    for item in items:
        if isinstance(item, RecordError):
            deliveries.append(
                {
                    "destination_id": dest.pk,
                    "state": Delivery.State.FAILED,
                    "method": config.effective_method(),
                    "url": "",
                    "body": None,
                    "target_id": "",
                    "endpoint": config.template if config.mode == "template" else "",
                    "last_error": f"Record {item.seq} was not sent: {item.message}"[:5000],
                    "next_attempt_at": None,
                    "finished_at": now,
                }
            )
            seqs.append((item.seq,))
        else:
            deliveries.append(
                {
                    "destination_id": dest.pk,
                    "state": Delivery.State.QUEUED,
                    "method": item.method,
                    "url": item.url,
                    "body": item.body,
                    "target_id": item.target_id[:255],
                    "endpoint": item.endpoint,
                    "last_error": "",
                    "next_attempt_at": now,
                    "finished_at": None,
                }
            )
            seqs.append(item.seqs)
    ids = insert_rows(Delivery, deliveries)
    insert_rows(
        DeliveryItem,
        [
            {"delivery_id": delivery_id, "record_id": record_ids[seq], "destination_id": dest.pk}
            for delivery_id, covered in zip(ids, seqs, strict=True)
            for seq in covered
        ],
    )
