"""Pulling a Salesforce object into its Nexset (DESIGN.md section 7).

Each pull is an Import. It asks for the records changed since the newest ``SystemModstamp`` already pulled
(``>=``, so a record sharing that instant is not missed; re-reading one is harmless), page by page through
``nextRecordsUrl``. Records are keyed by the Salesforce Id (``Record.source_ref``): a record seen again is
updated in place (same record number) when its data changed, so nothing is ever duplicated. With a field
mapping, each record is mapped to Clazar fields first; a record the mapping rejects is listed in the
import's errors and not stored (so it is never sent). Pages are committed as they arrive; the watermark
moves only when the whole pull finished, so a pull that fails half-way is simply read again next time.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection as db
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from clazar_dest.salesforce import soql
from clazar_dest.salesforce.client import SalesforceError, SalesforceUnavailable
from clazar_dest.salesforce.mapping import compile_mapping
from flows import records, tasks
from flows.imports import Tracker
from flows.ingest.errors import Problem
from flows.ingest.schema import merge
from flows.models import Import, Nexset, Record
from flows.salesforce import connection
from flows.salesforce.source import SalesforceSource

log = logging.getLogger(__name__)

MAX_PROBLEMS = 100
ACTIVE = (Import.Status.QUEUED, Import.Status.RUNNING)
STALE = timedelta(minutes=30)


class PullRefused(Exception):
    """Why a pull cannot start now (no settings, one already running); ``str()`` is for the page."""


def start(nexset: Nexset, *, user: Any = None, full: bool = False, scheduled: bool = False) -> Import:
    """Queue a pull of the Nexset (after commit). ``full`` reads every record again (after a mapping
    change); otherwise only what changed since the last pull."""
    with transaction.atomic():
        locked = Nexset.objects.select_for_update().get(pk=nexset.pk)
        source = SalesforceSource.from_json(locked.source)
        if source is None:
            raise PullRefused("This Nexset has no Salesforce settings yet: pick an object and fields first.")
        running = locked.imports.filter(status__in=ACTIVE).first()
        if running is not None and timezone.now() - running.updated_at < STALE:
            raise PullRefused("A pull of this Nexset is already queued or running.")
        if running is not None:
            Import.objects.filter(pk=running.pk).update(
                status=Import.Status.FAILED, message="Stopped reporting progress; a new pull replaced it."
            )
        imp = Import.objects.create(
            nexset=locked,
            source=Nexset.Kind.SALESFORCE,
            filename=f"Salesforce {source.object}" + (" (full)" if full else ""),
            options={"full": full, "scheduled": scheduled},
            partial_ok=True,
            created_by=user if getattr(user, "is_authenticated", False) else None,
        )
        transaction.on_commit(lambda: tasks.salesforce_pull.delay(imp.pk))
    log.info("salesforce pull %s queued for nexset %s (full=%s)", imp.uuid, nexset.uuid, full)
    return imp


def due(now: datetime | None = None) -> list[int]:
    """Queue the scheduled pulls that are due; returns the Import ids. A broken or missing connection
    pauses them (they stay due and start once reconnected)."""
    now = now or timezone.now()
    current = connection.current()
    if current is None or current.status != current.Status.OK:
        return []
    started = []
    for nexset in Nexset.objects.filter(kind=Nexset.Kind.SALESFORCE, next_pull_at__lte=now):
        source = SalesforceSource.from_json(nexset.source)
        if source is None or not source.every:
            Nexset.objects.filter(pk=nexset.pk).update(next_pull_at=None)
            continue
        Nexset.objects.filter(pk=nexset.pk).update(next_pull_at=now + timedelta(minutes=source.every))
        try:
            started.append(start(nexset, scheduled=True).pk)
        except PullRefused as exc:
            log.info("scheduled pull of nexset %s skipped: %s", nexset.uuid, exc)
    return started


def run(import_id: int) -> Import | None:
    """Claim a queued pull and run it to the end."""
    now = timezone.now()
    claimed = Import.objects.filter(pk=import_id, status=Import.Status.QUEUED).update(
        status=Import.Status.RUNNING, started_at=now, updated_at=now
    )
    if not claimed:
        return None
    imp = Import.objects.select_related("nexset").get(pk=import_id)
    tracker = Tracker(imp)
    try:
        _run(imp, tracker)
    except (SalesforceError, SalesforceUnavailable, connection.NotConnected) as exc:
        _fail(imp, f"Salesforce: {exc}")
    except Exception as exc:
        log.exception("salesforce pull %s failed unexpectedly", imp.uuid)
        _fail(imp, f"The pull stopped on an unexpected error ({type(exc).__name__}); it was logged.")
    finally:
        tracker.clear()
    return Import.objects.filter(pk=import_id).first()


def _run(imp: Import, tracker: Tracker) -> None:
    nexset = imp.nexset
    source = SalesforceSource.from_json(nexset.source)
    if source is None:
        raise connection.NotConnected("this Nexset's settings were cleared (another org was connected).")
    full = bool(imp.options.get("full"))
    since = None if full else nexset.pull_watermark
    mapper = compile_mapping(source.mapping) if source.mapping is not None else None
    today = timezone.localdate()
    client = connection.client()
    counts = {"read": 0, "new": 0, "updated": 0, "unchanged": 0, "rejected": 0, "withdrawn": 0, "held": 0}
    problems: list[Problem] = []
    newest: datetime | None = None
    tracker.state.update(phase="storing", phase_started=time.time())
    for page in client.query(source.query(since=since)):
        if counts["read"] == 0:
            tracker.state["total"] = page.total_size
        rows, refs, rejected = [], [], []
        for raw in page.records:
            counts["read"] += 1
            stamp = _stamp(raw.get("SystemModstamp"))
            if stamp is not None and (newest is None or stamp > newest):
                newest = stamp
            data, errors = _shape(raw, mapper, today)
            if errors:
                counts["rejected"] += 1
                if len(problems) < MAX_PROBLEMS:
                    problems.append(Problem(f"{raw.get('Id')}: {'; '.join(errors)}", row=counts["read"]))
                rejected.append(raw.get("Id"))
                continue
            rows.append(data)
            refs.append(raw.get("Id"))
        if counts["read"] > settings.SALESFORCE_PULL_MAX_RECORDS:
            raise SalesforceError(
                0,
                "TOO_MANY_RECORDS",
                f"the filter matches over {settings.SALESFORCE_PULL_MAX_RECORDS:,} records; narrow it",
            )
        new, updated, unchanged = upsert(nexset.pk, rows, refs)
        withdrawn, held = withdraw(nexset.pk, rejected)
        counts["withdrawn"] += withdrawn
        counts["held"] += held
        counts["new"] += new
        counts["updated"] += updated
        counts["unchanged"] += unchanged
        Import.objects.filter(pk=imp.pk).update(
            rows_read=counts["read"],
            rows_stored=counts["new"] + counts["updated"],
            rows_rejected=counts["rejected"],
            updated_at=timezone.now(),
        )
        tracker.state.update(rows_read=counts["read"], rows_stored=counts["new"] + counts["updated"])
        tracker._save(force=True)
    if newest is not None:
        Nexset.objects.filter(pk=nexset.pk).update(pull_watermark=newest)
    if full:
        rebuild_schema(nexset.pk)
    _finish(imp, counts, problems)


def _shape(raw: dict, mapper: Any, today: date) -> tuple[dict, list[str]]:
    if mapper is None:
        return raw, []
    result = mapper.apply(raw, today=today)
    return result.data, [f"{e.target}: {e.message}" for e in result.errors]


def _stamp(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return soql.parse_datetime(value)
    except ValueError:
        return None


def upsert(nexset_id: int, rows: list[dict], refs: list[str]) -> tuple[int, int, int]:
    """Store rows keyed by Salesforce Id: new Ids are appended, known ones updated when changed."""
    latest: dict[str, dict] = {}
    for ref, row in zip(refs, rows, strict=True):
        latest[ref] = row  # the same Id twice in one page: the later one wins
    with transaction.atomic():
        Nexset.objects.select_for_update().only("id").get(pk=nexset_id)
        existing = {
            ref: (pk, data)
            for ref, pk, data in Record.objects.filter(nexset_id=nexset_id, source_ref__in=list(latest))
            .values_list("source_ref", "id", "data")
            .iterator()
        }
        changed, unchanged = [], 0
        now = timezone.now()
        for ref, row in latest.items():
            if ref in existing:
                pk, old = existing[ref]
                if old == row:
                    unchanged += 1
                else:
                    changed.append(Record(id=pk, data=row, updated_at=now))
        if changed:
            _update_data(changed, now)
            nexset = Nexset.objects.get(pk=nexset_id)
            nexset.schema = merge(nexset.schema, [r.data for r in changed], seen=nexset.record_count)
            nexset.save(update_fields=["schema", "updated_at"])
        fresh = [(ref, row) for ref, row in latest.items() if ref not in existing]
        if fresh:
            records.append(nexset_id, [row for _, row in fresh], [ref for ref, _ in fresh])
    return len(fresh), len(changed), unchanged


def _update_data(changed: list[Record], now: datetime) -> None:
    """New data for known records. PostgreSQL: one UPDATE ... FROM unnest(...) per page (Django's bulk_update
    builds a CASE per row, about 1 ms a record); elsewhere bulk_update."""
    if db.vendor != "postgresql":
        Record.objects.bulk_update(changed, ["data", "updated_at"], batch_size=500)
        return
    table = Record._meta.db_table
    with db.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS r SET data = v.data, updated_at = %s "  # noqa: S608 - our table name
            "FROM unnest(%s::bigint[], %s::jsonb[]) AS v(id, data) WHERE r.id = v.id",
            [now, [r.pk for r in changed], [json.dumps(r.data) for r in changed]],
        )


def withdraw(nexset_id: int, refs: list[str]) -> tuple[int, int]:
    """Records the mapping now rejects must not be sent in an earlier shape: delete the stored ones no
    destination has planned yet. Returns (deleted, kept because a destination already planned them)."""
    if not refs:
        return 0, 0
    with transaction.atomic():
        Nexset.objects.select_for_update().only("id").get(pk=nexset_id)
        stored = Record.objects.filter(nexset_id=nexset_id, source_ref__in=refs)
        planned = stored.filter(delivery_items__isnull=False).values("id").distinct().count()
        deleted, _ = stored.filter(delivery_items__isnull=True).delete()
        if deleted:
            Nexset.objects.filter(pk=nexset_id).update(record_count=F("record_count") - deleted)
    return deleted, planned


def rebuild_schema(nexset_id: int) -> None:
    """After a full pull (a new mapping, say) the schema is inferred again from every stored record."""
    schema: dict[str, Any] = {}
    seen = 0
    batch: list[dict] = []
    for data in Record.objects.filter(nexset_id=nexset_id).values_list("data", flat=True).iterator(2000):
        batch.append(data)
        if len(batch) == 2000:
            schema, seen = merge(schema, batch, seen=seen), seen + len(batch)
            batch = []
    schema = merge(schema, batch, seen=seen) if batch else schema
    Nexset.objects.filter(pk=nexset_id).update(schema=schema)


def _finish(imp: Import, counts: dict[str, int], problems: list[Problem]) -> None:
    parts = [f"Read {counts['read']:,} records: {counts['new']:,} new, {counts['updated']:,} updated"]
    if counts["unchanged"]:
        parts.append(f"{counts['unchanged']:,} unchanged")
    message = ", ".join(parts) + "."
    status = Import.Status.SUCCEEDED
    if counts["rejected"]:
        status = Import.Status.PARTIAL
        message += (
            f" {counts['rejected']:,} records were rejected by the field mapping: they were not stored and "
            "will not be sent. Fix them in Salesforce (the next pull picks up the change) or change the "
            "mapping (then pull everything again)."
        )
        if counts["withdrawn"]:
            message += (
                f" {counts['withdrawn']:,} of them were stored before in another shape and were removed."
            )
        if counts["held"]:
            message += (
                f" {counts['held']:,} of them were already planned by a destination in their earlier shape: "
                "check its history."
            )
    imp.status = status
    imp.message = message
    imp.errors = [p.as_dict() for p in problems]
    imp.error_total = counts["rejected"]
    imp.rows_read = counts["read"]
    imp.rows_stored = counts["new"] + counts["updated"]
    imp.rows_rejected = counts["rejected"]
    imp.finished_at = timezone.now()
    imp.save()
    log.info("salesforce pull %s %s: %s", imp.uuid, status, message)


def _fail(imp: Import, reason: str) -> None:
    stored = Import.objects.filter(pk=imp.pk).values_list("rows_stored", flat=True).first() or 0
    kept = (
        f" {stored:,} records were stored before it stopped; the next pull reads them again (nothing is "
        "duplicated)."
        if stored
        else " Nothing was stored."
    )
    Import.objects.filter(pk=imp.pk).update(
        status=Import.Status.FAILED,
        message=reason + kept,
        finished_at=timezone.now(),
        updated_at=timezone.now(),
    )
    log.warning("salesforce pull %s failed: %s", imp.uuid, reason)
