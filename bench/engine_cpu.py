"""What one delivery costs a worker process in CPU: the deliver loop run in this process, beside a naive
sequential ``requests`` loop over the same kind of request in the same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/13 \
        .venv/bin/python bench/engine_cpu.py [--records 5000] [--threads 64] [--latency 0.05]

bench/deliver.py measures the whole system (workers, PostgreSQL, the simulator and Celery on one machine);
when the simulator is the limit there, the engine's own cost does not show. Here ``engine.process_due``
(what a ``flows.deliver`` task runs: claims, attempts committed before sending, the transport, outcomes,
with up to ``--threads`` sends in flight on the run's event loop, and its writer threads) runs in this process over ``--records`` planned
Create Private Offer deliveries, with the Clazar simulator in a process of its own (``--latency`` on
every call, no rate limit) and PostgreSQL from DATABASE_URL (its own database, ``clazar_bench_deliver``,
as bench/deliver.py). Prints deliveries/s and this process's CPU microseconds per delivery (planning
excluded: measured and printed apart), and the naive loop's CPU per request: a worker can't cost less
than a bare client, and the gap is the engine's bookkeeping.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from deliver import DATABASE, NO_LIMIT, Sim, destination, offers, setup_django  # noqa: E402
from import_csv import bench_url, ensure_database  # noqa: E402


def naive_cpu(sim: Sim, count: int) -> float:
    """CPU microseconds per request of a sequential ``requests`` loop with one session (no latency)."""
    token = sim.token()
    session = requests.Session()
    rows = offers(count, start=900_000)
    started = time.process_time()
    for row in rows:
        answer = session.post(
            f"{sim.url}/private_offers/", json=row, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        answer.raise_for_status()
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", "")
    if not server.startswith("postgres"):
        sys.exit("set DATABASE_URL to a PostgreSQL server (the bench works in its own database there)")
    ensure_database(server, DATABASE)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
    setup_django(bench_url(server, DATABASE), redis_url, tempfile.mkdtemp(prefix="bench-engine-cpu-"))

    from django.conf import settings
    from django.utils import timezone

    from flows.delivery import engine, planner
    from flows.models import Delivery, Destination

    sim = Sim(rate_limit=0)
    try:
        sim.reset(0.0, rate_limit=0)
        naive = naive_cpu(sim, max(200, args.records // 10))
        sim.reset(args.latency, rate_limit=0)
        settings.CLAZAR_API_BASES.append(sim.url)
        settings.DELIVERY_THREADS = args.threads  # the kept-alive connections per credential, as in a worker
        dest = destination(sim, offers(args.records), rate_limit=NO_LIMIT)
        Destination.objects.filter(pk=dest.pk).update(status="active", activated_at=timezone.now())
        started = time.process_time()
        planner.plan(dest.pk)
        plan_us = (time.process_time() - started) / args.records * 1e6
        cpu, wall = time.process_time(), time.perf_counter()
        tally = engine.process_due(dest.pk, threads=args.threads, max_seconds=3600)
        used, elapsed = time.process_time() - cpu, time.perf_counter() - wall
        succeeded = Delivery.objects.filter(destination=dest, state=Delivery.State.SUCCEEDED).count()
    finally:
        sim.stop()
    if succeeded != args.records:
        sys.exit(f"only {succeeded} of {args.records} deliveries succeeded: {dict(tally)}")
    per_delivery = used / args.records * 1e6
    print(f"planning                                  {plan_us:8.0f} µs CPU per record")
    print(
        f"engine, {args.threads:3d} in flight, {args.latency * 1000:.0f} ms latency      "
        f"{per_delivery:8.0f} µs CPU per delivery   {args.records / elapsed:7.1f} deliveries/s"
    )
    print(f"naive sequential requests loop            {naive:8.0f} µs CPU per request")
    print(f"engine / naive CPU                        {per_delivery / naive:8.2f}x")


if __name__ == "__main__":
    main()
