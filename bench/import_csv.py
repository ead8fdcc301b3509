"""Import a generated 10-column CSV into PostgreSQL and print rows/s and the importer's peak RSS, beside a
naive baseline (csv.DictReader + one ORM create per row, on a slice, scaled).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/import_csv.py [--rows N]

DATABASE_URL names the server; the bench works in its own database (``clazar_bench`` unless --database
says otherwise), created and migrated on first use and emptied before each run. Every import runs in a
fresh subprocess (the real service, ``flows.imports.run``) whose own ru_maxrss is reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["id", "sku", "name", "price", "quantity", "active", "region", "created", "score", "note"]
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]


def generate(path: Path, rows: int) -> None:
    rnd = random.Random(42)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i in range(1, rows + 1):
            writer.writerow(
                [
                    i,
                    f"SKU-{rnd.randrange(10**6):06d}",
                    f"{rnd.choice(WORDS)} {rnd.choice(WORDS)}",
                    f"{rnd.randrange(100000) / 100:.2f}",
                    rnd.randrange(1000),
                    rnd.choice(["true", "false"]),
                    rnd.choice(["us-east", "eu-west", "ap-south"]),
                    f"2024-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}",
                    f"{rnd.random():.6f}",
                    rnd.choice(["", "first order", 'returning, "vip" customer', "note"]),
                ]
            )


def bench_url(server_url: str, database: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def ensure_database(server_url: str, database: str) -> None:
    import psycopg

    with psycopg.connect(server_url.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
            print(f"created database {database}")


def child_env(url: str, data_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
    env.update(DATABASE_URL=url, CLAZAR_DATA_DIR=data_dir, DJANGO_SETTINGS_MODULE="clazar_dest.settings")
    return env


def run_child(env: dict[str, str], *args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"child {args[0]} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(kind: str, csv_path: str, method: str, rows: int) -> None:
    import resource

    import django

    django.setup()
    from django.core.files import File
    from django.core.files.storage import default_storage
    from django.db import connection

    from flows import imports
    from flows.ingest import reader
    from flows.models import Import, Nexset, Record

    if kind != "baseline":  # our own database: start each run empty
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE flows_record, flows_import, flows_nexset RESTART IDENTITY CASCADE")
    nexset = Nexset.objects.create(name=f"bench {kind}", kind=Nexset.Kind.UPLOAD)
    result: dict[str, object] = {"kind": kind}
    if kind == "baseline":
        started = time.perf_counter()
        with open(csv_path, newline="") as handle:
            for seq, row in enumerate(csv.DictReader(handle), start=1):
                if seq > rows:
                    break
                Record.objects.create(nexset=nexset, seq=seq, data=row)
        result["seconds"] = time.perf_counter() - started
        result["rows"] = Record.objects.filter(nexset=nexset).count()
    else:
        with open(csv_path, "rb") as handle:
            name = default_storage.save("imports/bench.upload", File(handle))
        sniffed = reader.head(lambda: default_storage.open(name, "rb"), "bench.csv")
        imp = Import.objects.create(
            nexset=nexset,
            filename="bench.csv",
            stored_file=name,
            size_bytes=os.path.getsize(csv_path),
            options={"text": False, **sniffed.as_dict()},
        )
        phases: dict[str, float] = {}
        check, write = reader.check, imports.write

        def timed_check(*a, **k):
            begin = time.perf_counter()
            try:
                return check(*a, **k)
            finally:
                phases["check"] = time.perf_counter() - begin

        def timed_write(*a, **k):
            begin = time.perf_counter()
            try:
                return write(*a, **k, **({"method": method} if method != "auto" else {}))
            finally:
                phases["store"] = time.perf_counter() - begin

        reader.check, imports.write = timed_check, timed_write
        started = time.perf_counter()
        imp = imports.run(imp.pk)
        result["seconds"] = time.perf_counter() - started
        result["phases"] = phases
        assert imp is not None
        result["status"] = imp.status
        result["rows"] = Record.objects.filter(nexset=nexset).count()
        result["message"] = imp.message
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=20_000)
    parser.add_argument("--database", default="clazar_bench")
    parser.add_argument("--method", choices=["auto", "copy", "insert"], default="auto")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "CSV", "METHOD", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path, method, rows = args.child
        return child(kind, path, method, int(rows))
    server = os.environ.get("DATABASE_URL", "")
    if not server.startswith(("postgres://", "postgresql://")):
        sys.exit("Set DATABASE_URL to a PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432/postgres")
    ensure_database(server, args.database)
    url = bench_url(server, args.database)
    with tempfile.TemporaryDirectory(prefix="clazar-bench-") as tmp:
        env = child_env(url, tmp)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, cwd=ROOT, check=True)
        path = Path(tmp) / "bench.csv"
        started = time.perf_counter()
        generate(path, args.rows)
        size = path.stat().st_size
        print(
            f"generated {args.rows:,} rows x {len(COLUMNS)} columns ({size / 1e6:.1f} MB) in "
            f"{time.perf_counter() - started:.1f}s"
        )
        ours = run_child(env, "import", str(path), args.method, str(args.rows))
        baseline_rows = min(args.baseline_rows, args.rows)
        naive = run_child(env, "baseline", str(path), "auto", str(baseline_rows))
    ours_rate = ours["rows"] / ours["seconds"]  # type: ignore[operator]
    naive_rate = naive["rows"] / naive["seconds"]  # type: ignore[operator]
    print(f"\nPostgreSQL import of {args.rows:,} rows ({args.method}):")
    print(
        f"  ours     {ours['status']}: {ours['rows']:,} rows in {ours['seconds']:.1f}s = {ours_rate:,.0f} rows/s, "
        f"peak RSS {ours['maxrss_mb']:.0f} MB (checking pass {ours['phases']['check']:.1f}s, "  # type: ignore[index]
        f"storing pass {ours['phases']['store']:.1f}s)"  # type: ignore[index]
    )
    print(
        f"  baseline DictReader + Record.objects.create: {naive['rows']:,} rows in {naive['seconds']:.1f}s = "
        f"{naive_rate:,.0f} rows/s, peak RSS {naive['maxrss_mb']:.0f} MB; "
        f"{args.rows:,} rows would take ~{args.rows / naive_rate:,.0f}s"
    )
    print(
        f"  speed-up x{ours_rate / naive_rate:,.0f}; goal >= 50,000 rows/s and <= 250 MB: "
        f"{'met' if ours_rate >= 50_000 and ours['maxrss_mb'] <= 250 else 'NOT met'}"
    )  # type: ignore[operator]


if __name__ == "__main__":
    main()
