"""Dashboard and history page latency with 1M delivery rows on PostgreSQL, beside naive versions.

Run: ``DATABASE_URL=postgres://postgres@127.0.0.1:5432/uidb .venv/bin/python bench/pages.py [--fresh]``

It works in its own scratch database (``<name>_bench_pages`` beside the one in DATABASE_URL; never the
one named in the URL), migrates it and, unless it already holds the data, fills it in SQL: one destination
with N deliveries (default 1,000,000) plus four with 2,000 each, all with their records, delivery items
and one attempt each, spread over the last 6 days (about Clazar's 120 requests/minute). States: 97%
succeeded, 1.2% failed, 0.6% exhausted, 0.2% needs attention, 0.2% retry scheduled, the newest 1% queued.

Then it requests each page through Django's test client (routing, middleware, session, queries,
template) and prints p50/p95 in milliseconds: the dashboard (full page and the 3-second poll fragment),
the history (first page, a page deep in the past, filtered by state, by status, by a record field before
and after a worker built the Nexset's record search index (flows/search_index.py), and a small
destination's), an attempt inspector and a bulk-retry preview count. The naive baselines in the
same run: the dashboard as it was (one conditional COUNT per state over a join of destinations and
deliveries) and OFFSET pagination with a total count.

It runs twice: on the schema as the migrations leave it, then with the indexes this bench proposes
(created here, in the scratch database only), and prints the plans of the main queries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMALL = 2000
BUILD = "(a worker builds the Nexset's search index)"
DAYS = 6
PROPOSED = {
    "bench_delivery_history": "CREATE INDEX IF NOT EXISTS bench_delivery_history ON flows_delivery "
    "(destination_id, state, id) WHERE NOT is_test",
    "bench_delivery_finished": "CREATE INDEX IF NOT EXISTS bench_delivery_finished ON flows_delivery "
    "(destination_id, finished_at) INCLUDE (state) WHERE NOT is_test AND finished_at IS NOT NULL",
}

FILL = """
INSERT INTO flows_credential (created_at, updated_at, uuid, name, api_base, client_id, client_secret,
    access_token, status, last_error, rate_limit)
VALUES (now(), now(), gen_random_uuid(), 'Bench account', 'https://api.clazar.io', 'bench', '', '', 'ok', '', 120);

INSERT INTO flows_nexset (created_at, updated_at, uuid, name, kind, schema, record_count, last_seq, code,
    webhook_secret, webhook_old_secret, source)
SELECT now(), now(), gen_random_uuid(), 'Offers ' || g, 'upload',
    '{"id": {"type": "string"}, "name": {"type": "string"}, "price": {"type": "number"},
      "buyer": {"type": "string"}}',
    c, c, gen_random_uuid(), '', '', '{}'
FROM (SELECT g, CASE WHEN g = 1 THEN %(big)s ELSE %(small)s END AS c FROM generate_series(1, 5) g) s
ORDER BY g;

INSERT INTO flows_destination (created_at, updated_at, uuid, name, nexset_id, credential_id, config, status,
    paused_reason, cursor, failures)
SELECT now(), now(), gen_random_uuid(), 'Private offers ' || n.id, n.id, (SELECT min(id) FROM flows_credential),
    '{"mode": "template", "template": "create_private_offer"}', 'active', '', n.last_seq, 0
FROM flows_nexset n ORDER BY n.id;

INSERT INTO flows_record (nexset_id, seq, data, source_ref, created_at, updated_at)
SELECT n.id, s, jsonb_build_object('id', 'po-' || s, 'name', 'Offer ' || s, 'price', (s %% 997) + 0.5,
    'buyer', (100000000000 + s)::text), NULL, now(), now()
FROM flows_nexset n, generate_series(1, n.last_seq) s;

CREATE TEMP TABLE plan AS
SELECT r.id AS record_id, d.id AS destination_id, r.seq, n.last_seq AS total,
    now() - interval '%(days)s days' + (r.seq::float / n.last_seq) * interval '%(days)s days' AS ts
FROM flows_record r JOIN flows_nexset n ON n.id = r.nexset_id JOIN flows_destination d ON d.nexset_id = n.id;

INSERT INTO flows_delivery (created_at, updated_at, uuid, state, is_test, attempts, attempts_base,
    next_attempt_at, lease_until, idempotency_key, method, url, body, target_id, endpoint, created_object_id, checks, last_status,
    last_error, finished_at, destination_id)
SELECT ts, ts, gen_random_uuid(), st, false, CASE WHEN st = 'queued' THEN 0 ELSE 1 END, 0,
    CASE WHEN st IN ('queued', 'retry_scheduled') THEN ts + interval '1 minute' END, NULL,
    gen_random_uuid()::text, 'POST', 'https://api.clazar.io/private_offers/',
    convert_to('{"id":"po-' || seq || '","name":"Offer ' || seq || '"}', 'UTF8'), '', 'create_private_offer',
    CASE WHEN st = 'succeeded' THEN gen_random_uuid()::text ELSE '' END, 0,
    CASE st WHEN 'succeeded' THEN 201 WHEN 'failed' THEN 400 WHEN 'exhausted' THEN 503
        WHEN 'retry_scheduled' THEN 429 END,
    CASE st WHEN 'failed' THEN 'buyer: This field is required.' WHEN 'exhausted' THEN 'HTTP 503 from Clazar'
        WHEN 'needs_attention' THEN 'No answer after the request was sent.'
        WHEN 'retry_scheduled' THEN 'Clazar asked to slow down (HTTP 429).' ELSE '' END,
    CASE WHEN st IN ('succeeded', 'failed', 'exhausted') THEN ts + interval '1 second' END,
    destination_id
FROM (
    SELECT *, CASE
        WHEN seq > total * 0.99 THEN 'queued'
        WHEN seq %% 1000 < 970 THEN 'succeeded'
        WHEN seq %% 1000 < 982 THEN 'failed'
        WHEN seq %% 1000 < 988 THEN 'exhausted'
        WHEN seq %% 1000 < 990 THEN 'needs_attention'
        ELSE 'retry_scheduled' END AS st
    FROM plan) p
ORDER BY ts;

INSERT INTO flows_deliveryitem (delivery_id, record_id, destination_id, is_test)
SELECT d.id, p.record_id, p.destination_id, false
FROM plan p JOIN flows_delivery d ON d.destination_id = p.destination_id AND d.created_at = p.ts;

INSERT INTO flows_attempt (delivery_id, number, started_at, finished_at, method, url, request_headers,
    request_body, status_code, response_headers, response_body, duration_ms, outcome, error)
SELECT id, 1, created_at, created_at + interval '300 milliseconds', method, url,
    '{"Authorization": "Bearer ****", "Content-Type": "application/json"}', convert_from(body, 'UTF8'),
    last_status, '{"Content-Type": "application/json"}',
    CASE WHEN state = 'succeeded' THEN '{"id":"' || created_object_id || '","status":"draft"}'
        WHEN state = 'failed' THEN '{"buyer":["This field is required."]}' ELSE '' END,
    300,
    CASE state WHEN 'succeeded' THEN 'succeeded' WHEN 'failed' THEN 'failed' WHEN 'exhausted' THEN 'failed'
        WHEN 'needs_attention' THEN 'unknown' ELSE 'retry' END,
    last_error
FROM flows_delivery WHERE attempts > 0;

DROP TABLE plan
"""


def scratch_database(url: str, fresh: bool) -> str:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.strip("/") + "_bench_pages"
    if name in ("test", "postgres", "template0", "template1"):
        sys.exit(f"refusing to use {name!r} as a scratch database")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and fresh:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        if not exists or fresh:
            conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def timed(fn: Callable[[], object], n: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--fresh", action="store_true", help="drop and refill the scratch database")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL server (the bench makes its own scratch database there).")
    os.environ["DATABASE_URL"] = scratch_database(url, args.fresh)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clazar_dest.settings")
    os.environ.setdefault("CLAZAR_DATA_DIR", str(ROOT / ".data" / "bench-pages"))
    os.environ["HTTPS_ONLY"] = "0"
    os.environ["LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.test import Client
    from django.test.utils import setup_test_environment

    from flows import roles, search_index
    from flows.models import Delivery, Destination

    setup_test_environment()
    settings.STORAGES = {  # serve the source static names, as the tests do (no collectstatic manifest)
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    call_command("migrate", verbosity=0)
    big_count = args.deliveries + 4 * SMALL
    if Delivery.objects.count() != big_count:
        if Delivery.objects.exists():
            sys.exit("The scratch database holds other data: run with --fresh.")
        started = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cursor:  # all or nothing: a failed fill leaves none
            for statement in (FILL % {"big": args.deliveries, "small": SMALL, "days": DAYS}).split(";\n\n"):
                cursor.execute(statement)
        print(
            f"filled {big_count:,} deliveries (with records, items, attempts) in {time.perf_counter() - started:.0f} s"
        )
    user = get_user_model().objects.filter(username="bench").first()
    if user is None:
        user = get_user_model().objects.create_user("bench", password="bench-password-123")
        roles.set_role(user, roles.OPERATOR)
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")

    big = Destination.objects.order_by("pk").first()
    small = Destination.objects.order_by("-pk").first()
    middle = (
        Delivery.objects.filter(destination=big)
        .order_by("pk")
        .values_list("pk", flat=True)[args.deliveries // 2]
    )
    failed = Delivery.objects.filter(destination=big, state="failed").order_by("-pk").first()
    history = f"/destinations/{big.uuid}/history/"
    htmx = {"HX-Request": "true"}

    def get(path: str, expect: bytes = b"", **headers: str) -> Callable[[], None]:
        def fetch() -> None:
            response = client.get(path, headers=headers)
            assert response.status_code == 200, (path, response.status_code)
            assert expect in response.content, (path, expect)

        return fetch

    def cold(fetch: Callable[[], None]) -> Callable[[], None]:
        """The first view after the cache was emptied (a restart, an eviction)."""

        def run() -> None:
            cache.delete_many(
                [
                    f"board:{kind}:{d.uuid}"
                    for d in Destination.objects.all()
                    for kind in ("succeeded", "chart")
                ]
            )
            fetch()

        return run

    cases = [
        ("dashboard: full page, cold cache", cold(get("/", b"Private offers"))),
        ("dashboard: full page", get("/", b"Private offers")),
        ("dashboard: 3 s poll fragment", get("/", b'id="board"', **htmx, **{"HX-Target": "board"})),
        ("history: first page", get(history, b"Inspect")),
        ("history: a page half way back", get(f"{history}?before={middle}", b"Inspect")),
        ("history: state=failed", get(f"{history}?state=failed", b"Inspect")),
        ("history: state=problems, page 2", get(f"{history}?state=problems&before={middle}", b"Inspect")),
        ("history: status=503", get(f"{history}?status=503", b"Inspect")),
        ("history: record buyer=…, no index yet", get(f"{history}?record=buyer%3D100000500123", b"Inspect")),
        (BUILD, None),
        (
            "history: record buyer=…, the Nexset's index",
            get(f"{history}?record=buyer%3D100000500123", b"Inspect"),
        ),
        ("history: small destination", get(f"/destinations/{small.uuid}/history/", b"Inspect")),
        ("attempt inspector (htmx)", get(f"/deliveries/{failed.uuid}/", b"HTTP 400", **htmx)),
        ("bulk retry preview (count)", get(f"{history}bulk/?action=retry&state=problems", b"Retry")),
    ]

    def naive_dashboard() -> None:
        from django.db.models import Count, Q

        rows = Destination.objects.annotate(
            queued=Count(
                "deliveries", filter=Q(deliveries__state__in=Delivery.OPEN_STATES, deliveries__is_test=False)
            ),
            succeeded=Count("deliveries", filter=Q(deliveries__state="succeeded", deliveries__is_test=False)),
            problems=Count(
                "deliveries",
                filter=Q(
                    deliveries__state__in=["failed", "exhausted", "needs_attention"],
                    deliveries__is_test=False,
                ),
            ),
        )
        list(rows)

    def naive_history() -> None:
        from django.core.paginator import Paginator

        pages = Paginator(Delivery.objects.filter(destination=big, is_test=False).order_by("-pk"), 50)
        page = pages.page(pages.num_pages // 2)
        list(page.object_list)

    baselines = [
        ("naive dashboard: COUNT(filter) per state", naive_dashboard),
        ("naive history: OFFSET page half way + count", naive_history),
    ]

    def run(label: str, indexed: bool) -> None:
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        print(
            f"\n{label}: {big_count:,} delivery rows, {args.requests} requests each (server side, test client)"
        )
        print(f"{'case':44} {'p50 ms':>9} {'p95 ms':>9}")
        search_index.drop(big.nexset_id)  # the first record searches read the records
        for name, fn in cases:
            if fn is None:  # what the worker does after the first record search of a large Nexset
                started = time.perf_counter()
                search_index.build(big.nexset_id)
                print(f"{name:44} {time.perf_counter() - started:>8.1f}s")
                continue
            values = timed(fn, args.requests if indexed else max(5, args.requests // 8))
            print(f"{name:44} {p(values, 50):>9.1f} {p(values, 95):>9.1f}")
        for name, fn in baselines:
            values = timed(fn, max(3, args.requests // 8))
            print(f"{name:44} {p(values, 50):>9.1f} {p(values, 95):>9.1f}")

    with connection.cursor() as cursor:
        for name in PROPOSED:
            cursor.execute(f"DROP INDEX IF EXISTS {name}")
    run("Schema as migrated", indexed=False)
    with connection.cursor() as cursor:
        for sql in PROPOSED.values():
            cursor.execute(sql)
    run("With the proposed indexes", indexed=True)
    explain(connection, big, middle)
    print("\ngoal: p95 <= 150 ms for the dashboard and the history page")


def explain(connection: object, big: object, middle: int) -> None:
    """The plan nodes of the main queries, to show which index each one uses."""
    pk = big.pk  # type: ignore[attr-defined]
    queries = {
        "capped count (queued)": "SELECT count(*) FROM (SELECT 1 FROM flows_delivery WHERE destination_id = "
        f"{pk} AND state = 'queued' AND NOT is_test LIMIT 100001) c",
        "history page (no filter)": f"SELECT id FROM flows_delivery WHERE destination_id = {pk} AND NOT "
        f"is_test AND id < {middle} ORDER BY id DESC LIMIT 51",
        "history page (state=failed)": f"SELECT id FROM flows_delivery WHERE destination_id = {pk} AND "
        "NOT is_test AND state = 'failed' ORDER BY id DESC LIMIT 51",
        "rate (last minute)": f"SELECT count(*) FROM flows_delivery WHERE destination_id = {pk} AND NOT "
        "is_test AND finished_at >= now() - interval '1 minute'",
        "succeeded since the cached base": f"SELECT count(*) FROM flows_delivery WHERE destination_id = {pk} "
        "AND NOT is_test AND state = 'succeeded' AND finished_at >= now() - interval '20 minutes'",
    }
    print("\nPlans (with the proposed indexes):")
    with connection.cursor() as cursor:  # type: ignore[attr-defined]
        for name, sql in queries.items():
            cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}")
            lines = [row[0].strip() for row in cursor.fetchall()]
            scans = [line for line in lines if "Scan" in line or "Execution Time" in line]
            print(f"  {name}: " + " | ".join(scans))


if __name__ == "__main__":
    main()
