"""Nexset operations behind the buttons and the webhook URL: create a webhook source, rotate its secret,
receive signed records, delete a Nexset.

Secrets are generated here, stored encrypted, and handed back once to the caller that shows them; they
are never logged or audited.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from flows import tasks
from flows.ingest.schema import merge
from flows.ingest.signatures import new_secret
from flows.models import DeliveryItem, Destination, Nexset, Record

log = logging.getLogger(__name__)


class InUse(Exception):
    """The Nexset feeds destinations; their names are in ``names``."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        super().__init__(f"Used by {', '.join(names)}")


def create_webhook(name: str, user: Any) -> tuple[Nexset, str]:
    """A webhook Nexset and its secret (shown once)."""
    secret = new_secret()
    nexset = Nexset(name=name, kind=Nexset.Kind.WEBHOOK, created_by=user if user.is_authenticated else None)
    nexset.webhook_secret = secret
    nexset.save()
    log.info("webhook nexset %s created", nexset.uuid)
    return nexset, secret


def rotate_secret(nexset_id: int) -> tuple[str, Any]:
    """A new secret; the current one stays valid for WEBHOOK_SECRET_GRACE_SECONDS. Returns (secret, until)."""
    secret = new_secret()
    with transaction.atomic():
        nexset = Nexset.objects.select_for_update().get(pk=nexset_id, kind=Nexset.Kind.WEBHOOK)
        until = timezone.now() + timedelta(seconds=settings.WEBHOOK_SECRET_GRACE_SECONDS)
        nexset.webhook_old_secret = nexset.webhook_secret
        nexset.webhook_old_secret_until = until if nexset.webhook_secret else None
        nexset.webhook_secret = secret
        nexset.save(
            update_fields=["webhook_secret", "webhook_old_secret", "webhook_old_secret_until", "updated_at"]
        )
    log.info(
        "webhook nexset %s secret rotated; the old one is valid until %s", nexset.uuid, until.isoformat()
    )
    return secret, nexset.webhook_old_secret_until


def webhook_by_code(code: str) -> Nexset | None:
    """The webhook Nexset a /hooks/<code>/ URL names, with only what verifying needs. This is the webhook's
    hot path: one plain query costs the request less than half of what the ORM's does."""
    try:
        value = UUID(code)
    except ValueError:
        return None
    table = connection.ops.quote_name(Nexset._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, webhook_secret, webhook_old_secret, webhook_old_secret_until FROM {table} "  # noqa: S608
            "WHERE code = %s AND kind = %s",
            [value if connection.vendor == "postgresql" else value.hex, Nexset.Kind.WEBHOOK],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    pk, secret, old, until = row
    if isinstance(until, str):  # SQLite keeps datetimes as text, in UTC
        until = parse_datetime(until)
    if until is not None and timezone.is_naive(until):
        until = timezone.make_aware(until, UTC)
    field = Nexset._meta.get_field("webhook_secret")
    return Nexset(
        pk=pk,
        code=value,
        webhook_secret=field.from_db_value(secret, None, connection),  # type: ignore[attr-defined]
        webhook_old_secret=field.from_db_value(old, None, connection),  # type: ignore[attr-defined]
        webhook_old_secret_until=until,
    )


def valid_secrets(nexset: Nexset, now: Any = None) -> list[str]:
    """The secrets a request may be signed with right now: the current one, and the old one in its grace."""
    now = now or timezone.now()
    found = [nexset.webhook_secret.reveal()] if nexset.webhook_secret else []
    until = nexset.webhook_old_secret_until
    if nexset.webhook_old_secret and until and until > now:
        found.append(nexset.webhook_old_secret.reveal())
    return found


def receive(nexset_id: int, msg_id: str, rows: Sequence[dict[str, Any]]) -> int:
    """Store one webhook message's records, all or none; a message id stored before stores nothing.

    Records get ``source_ref`` "<webhook-id>:<index>", unique per Nexset. This is the hot path of the
    webhook (hundreds of requests a second into one Nexset), so it is raw SQL, two statements on
    PostgreSQL (three on SQLite) inside the transaction that holds the Nexset's row lock: take the seqs
    (the UPDATE locks the row until commit, so seqs commit in order), then insert the records, skipping
    ones already stored, and write the merged schema. A message whose records are already there rolls
    back and reports 0.
    """
    refs = [f"{msg_id}:{i}" for i in range(len(rows))]
    quote = connection.ops.quote_name
    nexset_table, record_table = quote(Nexset._meta.db_table), quote(Record._meta.db_table)
    destination_table = quote(Destination._meta.db_table)
    data_field, schema_field = Record._meta.get_field("data"), Nexset._meta.get_field("schema")
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {nexset_table} SET last_seq = last_seq + %s, record_count = record_count + %s, "  # noqa: S608
            "last_record_at = %s, updated_at = %s WHERE id = %s RETURNING last_seq, record_count, schema, "
            f"EXISTS (SELECT 1 FROM {destination_table} WHERE nexset_id = %s AND status = %s)",
            [len(rows), len(rows), now, now, nexset_id, nexset_id, Destination.Status.ACTIVE],
        )
        last_seq, count, schema, delivering = cursor.fetchone()
        first = last_seq - len(rows) + 1
        values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rows))
        params: list[Any] = []
        for seq, (row, ref) in enumerate(zip(rows, refs, strict=True), start=first):
            params += [nexset_id, seq, data_field.get_db_prep_save(row, connection), ref, now, now]
        if isinstance(schema, str):  # SQLite hands JSON back as text
            schema = json.loads(schema)
        merged = schema_field.get_db_prep_save(merge(schema or {}, rows, seen=count - len(rows)), connection)
        insert = (
            f"INSERT INTO {record_table} (nexset_id, seq, data, source_ref, created_at, updated_at) "  # noqa: S608
            f"VALUES {values} ON CONFLICT DO NOTHING"
        )
        if connection.vendor == "postgresql":
            # One round trip: the schema is written only when every record went in.
            cursor.execute(
                f"WITH new AS ({insert} RETURNING 1), n AS (SELECT count(*) AS n FROM new) "  # noqa: S608
                f"UPDATE {nexset_table} SET schema = %s FROM n WHERE id = %s AND n.n = %s RETURNING n.n",
                [*params, merged, nexset_id, len(rows)],
            )
            stored = cursor.rowcount
        else:
            cursor.execute(insert, params)
            stored = cursor.rowcount == len(rows)
            if stored:
                cursor.execute(f"UPDATE {nexset_table} SET schema = %s WHERE id = %s", [merged, nexset_id])  # noqa: S608
        if not stored:
            transaction.set_rollback(True)  # the message was stored before
            return 0
        if delivering:
            tasks.wake_nexset(nexset_id)  # after commit: active destinations deliver the new records
    return len(rows)


def delete(nexset: Nexset) -> int:
    """Delete a Nexset, its records and imports; refuse while destinations use it. Returns the record count.

    Records go with one DELETE statement (not Django's collector, which would load millions of rows to
    follow their cascades).
    """
    with transaction.atomic():
        locked = Nexset.objects.select_for_update().get(pk=nexset.pk)
        names = list(locked.destinations.values_list("name", flat=True))
        if names:
            raise InUse(names)
        files = [f for f in locked.imports.exclude(stored_file="").values_list("stored_file", flat=True)]
        DeliveryItem.objects.filter(record__nexset=locked).delete()
        with connection.cursor() as cursor:
            table = connection.ops.quote_name(Record._meta.db_table)
            cursor.execute(f"DELETE FROM {table} WHERE nexset_id = %s", [locked.pk])  # noqa: S608 (model name)
            count = cursor.rowcount
        locked.delete()
        if connection.vendor == "postgresql":
            from flows.tasks import drop_search_index, later

            later(drop_search_index, nexset.pk)
    for name in files:
        default_storage.delete(name)
    log.info("nexset %s deleted with %s records", nexset.uuid, count)
    return count
