"""Latency of the wizard's Sample Payload fragment on a 1M-record Nexset, beside a naive preview.

Run: ``DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/preview.py [--records N]``

It creates its own scratch database (``<name>_bench_preview`` beside the one in DATABASE_URL), migrates
it, fills one Nexset with N records (default 1,000,000) using PostgreSQL COPY, then posts the wizard form
to the preview view 200 times through Django's test client (server side: routing, form, config check,
query, build, template) and prints p50/p95. The naive baseline builds the samples the obvious way, by
loading every record of the Nexset and building all requests before taking three; it runs 3 times.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def scratch_database(url: str) -> str:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.strip("/") + "_bench_preview"
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL server (the bench makes its own scratch database there).")
    os.environ["DATABASE_URL"] = scratch_database(url)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clazar_dest.settings")
    os.environ.setdefault("CLAZAR_DATA_DIR", str(ROOT / ".data" / "bench-preview"))
    os.environ["HTTPS_ONLY"] = "0"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from flows import roles
    from flows.config import DestinationConfig
    from flows.models import Credential, Destination, Nexset, Record
    from flows.payloads import build_requests, pretty

    setup_test_environment()
    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model

    nexset = Nexset.objects.create(name="Bench offers", kind="upload")
    started = time.perf_counter()
    buffer = io.StringIO()
    for seq in range(1, args.records + 1):
        data = {
            "id": f"po-{seq}",
            "name": f"Offer {seq}",
            "listing": "lst-1",
            "buyer": f"{100000000000 + seq}",
            "price": f"{seq % 997}.50",
        }
        buffer.write(f"{nexset.pk}\t{seq}\t{json.dumps(data)}\t\\N\t2026-01-01\t2026-01-01\n")
    with (
        connection.cursor() as cursor,
        cursor.copy(
            "COPY flows_record (nexset_id, seq, data, source_ref, created_at, updated_at) FROM STDIN"
        ) as copy,
    ):
        copy.write(buffer.getvalue())
    Nexset.objects.filter(pk=nexset.pk).update(
        record_count=args.records,
        last_seq=args.records,
        schema={"id": {}, "name": {}, "listing": {}, "buyer": {}, "price": {}},
    )
    print(f"loaded {args.records:,} records in {time.perf_counter() - started:.1f} s")

    credential = Credential(name="Bench", api_base="https://api.clazar.io", client_id="x")
    credential.client_secret = "x"
    credential.save()
    destination = Destination.objects.create(name="Bench", nexset=nexset, credential=credential, config={})
    user = get_user_model().objects.create_user("bench", password="bench-password-123")
    roles.set_role(user, roles.OPERATOR)
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    form = {
        "name": "Bench",
        "mode": "template",
        "template": "update_private_offer",
        "id_value": "{id}",
        "method": "POST",
        "content_format": "json",
        "batch_size": "100",
        "batch_algorithm": "property",
        "property_name": "records",
    }
    url = f"/destinations/{destination.uuid}/preview/"

    def timed(fn, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1000)
        return out

    def ours() -> None:
        response = client.post(url, form, headers={"HX-Request": "true"})
        assert response.status_code == 200 and b"/private_offers/po-1/" in response.content

    def naive() -> None:
        config = DestinationConfig.from_json(
            {"mode": "template", "template": "update_private_offer", "id_value": "{id}"}
        )
        rows = [(r.seq, r.data) for r in Record.objects.filter(nexset=nexset).order_by("seq")]
        [pretty(item) for item in build_requests(config, rows, credential.api_base)[:3]]

    ours()  # warm-up
    fast = timed(ours, args.requests)
    batched_form = {**form, "template": "create_private_offer", "batch_enabled": "on"}
    batched = timed(
        lambda: client.post(url, batched_form, headers={"HX-Request": "true"}), args.requests // 2
    )
    slow = timed(naive, 3)

    def p(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]

    print(f"\nSample Payload fragment on a {args.records:,}-record Nexset (server side, test client)")
    print(f"{'case':44} {'n':>5} {'p50 ms':>9} {'p95 ms':>9}")
    print(
        f"{'ours: Update Private Offer, 3 samples':44} {len(fast):>5} {p(fast, 50):>9.1f} {p(fast, 95):>9.1f}"
    )
    print(
        f"{'ours: batched, 3 batches of 100':44} {len(batched):>5} {p(batched, 50):>9.1f} {p(batched, 95):>9.1f}"
    )
    print(
        f"{'naive: load all records, build all, take 3':44} {len(slow):>5} {statistics.median(slow):>9.1f} {max(slow):>9.1f}"
    )
    print("goal: p95 <= 50 ms")


if __name__ == "__main__":
    main()
