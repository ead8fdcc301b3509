"""Record search indexes: a GIN index (``jsonb_path_ops``) per large Nexset, built on demand (PostgreSQL).

The history's record filter (``buyer=123456789012``) is JSON containment on the Nexset's records
(``data @> '{"buyer": ...}'``). Without an index it reads every record of the Nexset: about 200 ms for a
million (bench/pages.py). One GIN index over all records would answer it in a millisecond, but every
record stored afterwards (imports, webhooks, responses) would pay for it in every Nexset, searched or not:
bench/import_csv.py's storing pass went from 23 s to 46 s for a million rows. So the index is per Nexset
and only where it is wanted: activating a destination of a Nexset holding at least
``RECORD_SEARCH_INDEX_MIN`` records (its history is what gets searched), or the first record search in
one, asks a worker to build a partial index for it (``WHERE nexset_id =
N``), ``CONCURRENTLY`` so records keep arriving meanwhile; later searches use it. Deleting the Nexset drops
its index. On SQLite nothing changes (the search reads the records).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache
from django.db import connection

from flows.models import Nexset, Record

log = logging.getLogger(__name__)

READY, BUILDING, NOT_NEEDED = "ready", "building", "not needed"
_LOCK_CLASS = 0x5EA2C4  # the advisory lock class of index builds (the Nexset id is the second key)


def name(nexset_id: int) -> str:
    return f"record_search_{int(nexset_id)}"


def state(nexset_id: int) -> str | None:
    """``READY`` when the Nexset's index exists and is valid, ``BUILDING`` while it is being built (or a
    build was cut short), None without one."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = %s",
            [name(nexset_id)],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return READY if row[0] else BUILDING


def request(nexset: Nexset) -> str:
    """Called by a record search and by activation: whether the Nexset's index can answer it (``READY``), is on its way
    (``BUILDING``: a build is queued at most every ten minutes per Nexset) or is not worth having."""
    if connection.vendor != "postgresql" or nexset.record_count < settings.RECORD_SEARCH_INDEX_MIN:
        return NOT_NEEDED
    if state(nexset.pk) == READY:
        return READY
    if cache.add(f"record-search-index-{nexset.pk}", 1, timeout=600):
        from flows.tasks import build_search_index, later

        later(build_search_index, nexset.pk)
    return BUILDING


def build(nexset_id: int) -> bool:
    """Build the Nexset's index (a worker; outside any transaction). Returns whether it is ready. One
    build per Nexset at a time (an advisory lock); an index left invalid by a build that was cut short is
    dropped and built again."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_LOCK_CLASS, int(nexset_id)])
        if not cursor.fetchone()[0]:
            return False  # another worker is building it
        try:
            if state(nexset_id) == READY:
                return True
            if not Nexset.objects.filter(pk=nexset_id).exists():
                return False
            index, table = (
                connection.ops.quote_name(name(nexset_id)),
                connection.ops.quote_name(Record._meta.db_table),
            )
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")  # an invalid leftover, if any
            cursor.execute(
                f"CREATE INDEX CONCURRENTLY {index} ON {table} USING gin (data jsonb_path_ops) "
                f"WHERE nexset_id = {int(nexset_id)}"
            )
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_LOCK_CLASS, int(nexset_id)])
    log.info("nexset %s: record search index built", nexset_id)
    return True


def drop(nexset_id: int) -> None:
    """Drop the index of a deleted Nexset (a worker; outside any transaction)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {connection.ops.quote_name(name(nexset_id))}")
