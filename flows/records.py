"""Appending records to a Nexset: seqs are allocated under a row lock and the schema follows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.utils import timezone

from flows.bulk import insert_many
from flows.ingest.schema import merge
from flows.models import Nexset, Record

BATCH = 1000


def append(nexset_id: int, rows: Sequence[dict[str, Any]], refs: Sequence[str | None] | None = None) -> int:
    """Store ``rows`` at the end of the Nexset in one transaction; return how many were stored."""
    if refs is not None and len(refs) != len(rows):
        raise ValueError("refs and rows differ in length")
    with transaction.atomic():
        nexset = Nexset.objects.select_for_update().get(pk=nexset_id)
        start = nexset.last_seq
        objects = [
            Record(nexset_id=nexset_id, seq=start + i, data=row, source_ref=refs[i - 1] if refs else None)
            for i, row in enumerate(rows, start=1)
        ]
        for start_at in range(0, len(objects), BATCH):
            insert_many(Record, objects[start_at : start_at + BATCH])
        nexset.schema = merge(nexset.schema, rows, seen=nexset.record_count)
        nexset.last_seq = start + len(rows)
        nexset.record_count += len(rows)
        nexset.last_record_at = timezone.now()
        nexset.save(update_fields=["schema", "last_seq", "record_count", "last_record_at", "updated_at"])
        if rows:
            from flows.tasks import wake_nexset

            wake_nexset(nexset_id)  # after commit: active destinations deliver the new records
    return len(rows)
