"""Pull Opportunities from the Salesforce simulator into Salesforce Nexsets through the real service
(flows/salesforce/pull.py) and print records/s, wall time and the puller's peak RSS, beside a naive
baseline in the same run (the client's query_all, then one update_or_create per record with its seq taken
under a row lock, on a slice, scaled).

    [DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres] .venv/bin/python bench/sf_pull.py \
        [--records 50000] [--baseline-records 5000]

With DATABASE_URL the bench works in its own PostgreSQL database (``clazar_bench`` unless --database says
otherwise, created and migrated on first use like bench/import_csv.py, emptied before each run); without
it, on a SQLite file in a temporary folder. The simulator serves from this process on a free loopback port
and is connected as the org (a SalesforceApp and a SalesforceConnection made from ``sim.grant()``). Each
pull runs in a fresh subprocess (``pull.start`` then ``pull.run``, as the worker does), whose own peak RSS
is reported. Printed, in order:

1. a first full pull of N Opportunities with Name, Amount, CloseDate, StageName, Account.Name;
2. the same with the field mapping to co-sell opportunities that ``suggest`` drafts from Opportunity's
   describe data (the mapping page's first draft): records without an Account are rejected;
3. an incremental pull of the first Nexset after 1% of the records were edited in Salesforce;
4. a pull after every record was edited (the update-in-place path at scale, as after a mapping change);
5. the baseline on a slice, what N would take at its pace, and the speed-up.

Where the time goes is split into waiting on Salesforce (HTTP, the simulator's own work included),
decoding the JSON pages, storing (``pull.upsert``, with its query count) and the rest (mapping, progress).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from import_csv import ROOT, bench_url, child_env, ensure_database

FIELDS = ["Name", "Amount", "CloseDate", "StageName", "Account.Name"]


# -- the children: one pull, or the baseline, in a fresh process ------------------------------------------


def run_child(env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"child {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Clock:
    """Seconds spent inside wrapped functions, by name; a recursive call is not counted twice."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.inside: set[str] = set()

    def wrap(self, name: str, func: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if name in self.inside:
                return func(*args, **kwargs)
            self.inside.add(name)
            begin = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - begin
                self.inside.discard(name)

        return timed


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through
    fork and exec, and the parent here holds the simulator's records."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, nexset_id: int, limit: int) -> None:
    import django

    django.setup()
    from django.db import connection

    from clazar_dest.salesforce import client as sf_client
    from flows.models import Nexset, Record
    from flows.salesforce import pull

    clock = Clock()
    sf_client.fetch = clock.wrap("salesforce", sf_client.fetch)
    sf_client.Answer.json = clock.wrap("decode", sf_client.Answer.json)  # type: ignore[method-assign]
    sf_client.strip_attributes = clock.wrap("decode", sf_client.strip_attributes)
    queries = {"all": 0, "store": 0}
    in_store = [False]

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        queries["all"] += 1
        queries["store"] += in_store[0]
        return execute(sql, params, many, context)

    upsert = pull.upsert

    def counted_upsert(*args: Any, **kwargs: Any) -> Any:
        in_store[0] = True
        try:
            return upsert(*args, **kwargs)
        finally:
            in_store[0] = False

    pull.upsert = clock.wrap("store", counted_upsert)
    nexset = Nexset.objects.get(pk=nexset_id)
    result: dict[str, Any] = {"kind": kind}
    with connection.execute_wrapper(count):
        started = time.perf_counter()
        if kind == "baseline":
            result["read"] = baseline(nexset, limit)
        else:
            imp = pull.run(pull.start(nexset).pk)
            assert imp is not None
            result.update(
                status=imp.status,
                message=imp.message,
                read=imp.rows_read,
                stored=imp.rows_stored,
                rejected=imp.rows_rejected,
            )
        result["seconds"] = time.perf_counter() - started
    result["records"] = Record.objects.filter(nexset_id=nexset_id).count()
    result["spent"] = clock.spent
    result["queries"] = queries
    result["maxrss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def baseline(nexset: Any, limit: int) -> int:
    """The obvious way: every record in memory, then one upsert per record, its seq allocated under a lock
    on the Nexset row."""
    from django.db import transaction

    from flows.models import Nexset, Record
    from flows.salesforce import connection
    from flows.salesforce.source import SalesforceSource

    source = SalesforceSource.from_json(nexset.source)
    assert source is not None
    rows = connection.client().query_all(source.query(limit=limit))
    for row in rows:
        with transaction.atomic():
            locked = Nexset.objects.select_for_update().get(pk=nexset.pk)
            _, created = Record.objects.update_or_create(
                nexset=locked,
                source_ref=row["Id"],
                defaults={"data": row},
                create_defaults={"data": row, "seq": locked.last_seq + 1},
            )
            if created:
                locked.last_seq += 1
                locked.record_count += 1
                locked.save(update_fields=["last_seq", "record_count", "updated_at"])
    return len(rows)


# -- the parent: the simulator, the connected org and the Nexsets --------------------------------------------


def prepare(sim: Any) -> dict[str, Any]:
    """Empty the bench tables, connect the simulator's org, create the three Nexsets; return their ids and
    the names of the Clazar fields the mapping fills."""
    import django

    django.setup()
    from django.db import connection, connections

    from clazar_dest.salesforce.mapping import suggest
    from clazar_dest.simulators.salesforce import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET
    from flows.models import Import, Nexset, Record, SalesforceApp, SalesforceConnection, SalesforcePending
    from flows.salesforce import describe
    from flows.salesforce.source import SalesforceSource

    models = [Record, Import, Nexset, SalesforceConnection, SalesforcePending, SalesforceApp]
    if connection.vendor == "postgresql":  # our own database: start empty (keys change per run)
        tables = ", ".join(m._meta.db_table for m in models)
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    else:  # a new file each run; nothing to empty
        assert not Nexset.objects.exists()
    SalesforceApp.objects.create(consumer_key=DEFAULT_CONSUMER_KEY, consumer_secret=DEFAULT_CONSUMER_SECRET)
    tokens, org = sim.grant(), sim.config()
    SalesforceConnection.objects.create(
        environment=SalesforceApp.Environment.PRODUCTION,
        instance_url=sim.url,
        org_id=org["org_id"],
        org_name=org["org_name"],
        user_id=org["user_id"],
        username=org["username"],
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
    )
    mapping = suggest(describe.fields("Opportunity"))
    plain = SalesforceSource("Opportunity", tuple(FIELDS))
    mapped = SalesforceSource("Opportunity", tuple(FIELDS), mapping=mapping)

    def nexset(name: str, source: SalesforceSource) -> int:
        return Nexset.objects.create(name=name, kind=Nexset.Kind.SALESFORCE, source=source.to_json()).pk

    ids = {
        "plain": nexset("bench plain", plain),
        "mapped": nexset("bench mapped", mapped),
        "baseline": nexset("bench baseline", plain),
        "targets": list(mapping.fields),
    }
    connections.close_all()  # the children write; keep no connection (or SQLite lock) open meanwhile
    return ids


def breakdown(run: dict[str, Any]) -> str:
    spent = run["spent"]
    waiting, decoding, storing = (spent.get(k, 0.0) for k in ("salesforce", "decode", "store"))
    rest = run["seconds"] - waiting - decoding - storing
    return (
        f"waiting on Salesforce {waiting:.1f}s, decoding {decoding:.1f}s, storing {storing:.1f}s "
        f"({run['queries']['store']:,} queries), other {rest:.1f}s; {run['queries']['all']:,} queries in all"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=50_000, help="Opportunities in the org")
    parser.add_argument("--baseline-records", type=int, default=5_000)
    parser.add_argument("--database", default="clazar_bench", help="PostgreSQL only")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "NEXSET", "LIMIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, nexset_id, limit = args.child
        return child(kind, int(nexset_id), int(limit))
    if args.records < 1 or args.baseline_records < 1:
        sys.exit("--records and --baseline-records must be at least 1")
    server = os.environ.get("DATABASE_URL", "")
    if server and not server.startswith(("postgres://", "postgresql://")):
        sys.exit("DATABASE_URL must name a PostgreSQL server (or be unset for SQLite in a temporary folder)")
    from clazar_dest.simulators.salesforce import SalesforceSimulator

    with tempfile.TemporaryDirectory(prefix="clazar-bench-") as tmp, SalesforceSimulator() as sim:
        if server:
            ensure_database(server, args.database)
            env = child_env(bench_url(server, args.database), tmp)
            label = f"PostgreSQL ({args.database})"
        else:
            env = child_env("", tmp)
            del env["DATABASE_URL"]  # the embedded default: SQLite in the (temporary) data folder
            label = "SQLite (temporary file)"
        env.update(SALESFORCE_SIMULATOR_URL=sim.url, LOG_LEVEL="WARNING")
        started = time.perf_counter()
        seeded = sim.seed(accounts=max(20, args.records // 100), opportunities=args.records)
        print(
            f"seeded the simulator with {seeded['Opportunity']:,} Opportunities and {seeded['Account']:,} "
            f"Accounts in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, cwd=ROOT, check=True)
        os.environ.update(env)
        os.environ.pop("REDIS_URL", None)
        ids = prepare(sim)
        without_account = sum(1 for r in sim.records("Opportunity") if not r.get("AccountId"))
        full = run_child(env, "pull", str(ids["plain"]), "0")
        mapped = run_child(env, "pull", str(ids["mapped"]), "0")
        touched = len(sim.touch("Opportunity", count=max(1, args.records // 100)))
        incremental = run_child(env, "pull", str(ids["plain"]), "0")
        sim.touch("Opportunity", count=args.records)  # every record changed: the update path at scale
        repull = run_child(env, "pull", str(ids["plain"]), "0")
        slice_size = min(args.baseline_records, args.records)
        naive = run_child(env, "baseline", str(ids["baseline"]), str(slice_size))

    n = args.records
    print(f"\nSalesforce pull of {n:,} Opportunities from the simulator over loopback into {label}:")
    for title, run, expected in (
        (f"full pull ({', '.join(FIELDS)})", full, n),
        (
            f"mapped pull (suggest() over describe: {len(ids['targets'])} Clazar fields)",
            mapped,
            n - without_account,
        ),
    ):
        rate = run["read"] / run["seconds"]
        check = "all stored" if run["records"] == expected else f"MISMATCH: {run['records']:,} stored"
        rejected = f", {run['rejected']:,} rejected by the mapping" if run["rejected"] else ""
        if run["rejected"]:
            check += f" ({without_account:,} Opportunities have no Account)"
        print(f"  {title}")
        print(
            f"    {run['status']}: {run['read']:,} read, {run['stored']:,} stored{rejected} in "
            f"{run['seconds']:.1f}s = {rate:,.0f} records/s, peak RSS {run['maxrss_mb']:.0f} MB; {check}"
        )
        print(f"    {breakdown(run)}")
    print(f"  incremental pull after {touched:,} records ({touched / n:.0%}) were edited in Salesforce")
    print(
        f"    {incremental['status']}: {incremental['read']:,} read in {incremental['seconds']:.2f}s, "
        f"peak RSS {incremental['maxrss_mb']:.0f} MB; {incremental['message']}"
    )
    kept = incremental["records"]
    print(f"    {breakdown(incremental)}; {'no duplicates' if kept == n else f'MISMATCH: {kept:,} records'}")
    print(f"  pull after every record was edited in Salesforce (all {n:,} updated in place)")
    print(
        f"    {repull['status']}: {repull['read']:,} read in {repull['seconds']:.1f}s = "
        f"{repull['read'] / repull['seconds']:,.0f} records/s; {repull['message']}"
    )
    print(f"    {breakdown(repull)}")
    naive_rate = naive["read"] / naive["seconds"]
    ours_rate = full["read"] / full["seconds"]
    print("  baseline: query_all, then update_or_create per record with its seq under select_for_update")
    print(
        f"    {naive['read']:,} records in {naive['seconds']:.1f}s = {naive_rate:,.0f} records/s, peak RSS "
        f"{naive['maxrss_mb']:.0f} MB ({naive['queries']['all']:,} queries); {n:,} would take "
        f"~{n / naive_rate:,.0f}s"
    )
    print(f"  speed-up of the full pull over the baseline: x{ours_rate / naive_rate:,.1f}")


if __name__ == "__main__":
    main()
