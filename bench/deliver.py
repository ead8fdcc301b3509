"""Delivery throughput and latency with real workers, beside a naive loop and the simulator's own capacity.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/13 \
        .venv/bin/python bench/deliver.py [--records 10000] [--workers 2] [--threads 64] [--latency 0.05]

Works in its own database (``clazar_bench_deliver``, created and migrated on first use, flushed each run)
and the Redis database given (flushed). The Clazar simulator runs as its own process (with TCP_NODELAY,
see NODELAY), with ``--latency`` on every call and no rate limit. Five figures:

1. **naive**: a plain sequential ``requests`` loop POSTing the same records (a sample of ``--naive``
   records; its rate does not depend on the count).
2. **simulator capacity**: a load generator with no app: ``workers x threads`` client threads (and 4x as
   many) in one process, and both again spread over ``workers`` processes, POSTing as fast as the
   simulator answers; then ``workers x threads`` bare keep-alive connections on an event loop (uvloop's,
   as the engine's, and asyncio's own), in one process and over ``workers`` (the lightest client:
   ``requests`` in threads costs more CPU per request than the engine does); the best of the eight is
   the capacity. (A load generator with N clients can't pass
   N / latency per second, nor a single Python process about 1,000 requests/s here: the capacity is
   what the simulator answers when neither limits it.)
3. **engine**: a backlog of ``--records`` records, ``--workers`` Celery worker processes (solo pool,
   ``--threads`` sends in flight each) plus beat, from activation to the last delivery: records/s, and record-to-delivered
   latency (from the later of the record's arrival and the activation) p50/p95, which for a backlog is
   mostly time in the queue; each record created once; CPU seconds per process kind (PostgreSQL's
   include the backends that ended); and where a send's time went (``send_timing``).
4. **trickle**: ``--trickle`` records/s arriving for 20 s into an active destination (no backlog):
   record-to-delivered latency p50/p95, i.e. how soon a new record goes out.
5. **budget**: the simulator limiting at 600/min and the credential at 600/min for ``--budget-seconds``:
   the share of the budget used and the 429s received.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from import_csv import bench_url, ensure_database  # noqa: E402

DATABASE = "clazar_bench_deliver"
# The credential's rate limit where none is wanted: the most the form takes (requests per minute). The
# 100,000 used before (1,667/s) had become the engine's limit.
NO_LIMIT = 1_000_000
# The simulator with TCP_NODELAY on its sockets, as production servers (nginx, gunicorn) have. Without it,
# every keep-alive request waits ~40 ms: the server writes headers and body separately, and Nagle holds
# the body until the client's delayed ACK of the headers.
NODELAY = (
    "import sys, clazar_dest.simulators.clazar as sim; "
    "sim._Handler.disable_nagle_algorithm = True; sys.exit(sim.main(sys.argv[1:]))"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offers(n: int, start: int = 1) -> list[dict]:
    return [{"name": f"Offer {i}", "listing": "lst-1", "buyer": f"{i:012d}"} for i in range(start, start + n)]


class Sim:
    """The simulator as a separate process, driven through its control routes."""

    def __init__(self, rate_limit: int = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", NODELAY, "--port", str(self.port), "--rate-limit", str(rate_limit)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                if requests.get(f"{self.url}/__sim/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)

    def post(self, route: str, body: object) -> object:
        return requests.post(f"{self.url}/__sim/{route}", json=body, timeout=10).json()

    def reset(self, latency: float, **config: object) -> None:
        self.post("reset", {})
        self.post("config", config)
        self.post("faults", [{"kind": "latency", "seconds": latency}] if latency else [])

    def log(self) -> list[dict]:
        answer = requests.get(f"{self.url}/__sim/requests", params={"path": "/private_offers/"}, timeout=60)
        return answer.json()["requests"]

    def token(self) -> str:
        from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

        answer = requests.post(
            f"{self.url}/authenticate/",
            json={"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET},
            timeout=10,
        )
        return answer.json()["access_token"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def naive(sim: Sim, rows: list[dict]) -> float:
    """A plain sequential loop: one POST after the other. Returns records/s."""
    token = sim.token()
    started = time.perf_counter()
    for row in rows:
        answer = requests.post(
            f"{sim.url}/private_offers/", json=row, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        answer.raise_for_status()
    return len(rows) / (time.perf_counter() - started)


def capacity(
    sim: Sim, clients: int, seconds: float, processes: int = 1, bare: bool = False, loop: str = "uvloop"
) -> float:
    """Requests/s the simulator answers with ``clients`` clients sending back to back (no app), spread
    over ``processes`` load-generator processes (a single Python process can be the limit itself):
    ``requests`` in threads, or with ``bare`` keep-alive connections on one event loop per process
    (``_load_bare``: the lightest client, so the simulator is the limit)."""
    token = sim.token()
    stop = time.time() + seconds
    started = time.perf_counter()
    load = functools.partial(_load_bare, loop=loop) if bare else _load
    if processes == 1:
        ok = load(sim.url, token, clients, stop)
    else:
        context = multiprocessing.get_context("fork")
        with context.Pool(processes) as pool:
            share = [(sim.url, token, clients // processes, stop)] * processes
            ok = sum(pool.starmap(load, share))
    return ok / (time.perf_counter() - started)


# The event loops the bare load generator runs on: uvloop's (a deliver run's) and asyncio's own.
LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def _load_bare(url: str, token: str, clients: int, stop: float, loop: str = "uvloop") -> int:
    """``clients`` keep-alive connections on one event loop (``loop``, of LOOPS) POSTing until ``stop``;
    returns the 201s."""

    async def run() -> int:
        counts = await asyncio.gather(
            *(bare_client(url, token, stop, f"{os.getpid()}-{n}") for n in range(clients))
        )
        return sum(counts)

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(run())


async def bare_client(
    url: str, token: str, stop: float | None, name: str, count: list[int] | None = None
) -> int:
    """One keep-alive connection POSTing offers back to back until ``stop`` (epoch seconds) or, with
    ``count``, while ``count[0]`` (shared by the clients) is above zero: a bare HTTP/1.1 exchange over
    asyncio streams with none of the transport's checks. Returns the 201s."""
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    created = i = 0
    try:
        while (stop is None or time.time() < stop) and (count is None or count[0] > 0):
            if count is not None:
                count[0] -= 1
            i += 1
            body = json.dumps(
                {"name": f"cap {name}-{i}", "listing": "lst-1", "buyer": "123456789012"}
            ).encode()
            writer.write(
                f"POST /private_offers/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nAccept: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                field, _, value = line.partition(b":")
                if field.strip().lower() == b"content-length":
                    length = int(value)
            json.loads(await reader.readexactly(length))
            created += b" 201 " in status
    finally:
        writer.close()
    return created


def _load(url: str, token: str, clients: int, stop: float) -> int:
    """``clients`` threads POSTing until ``stop`` (epoch seconds); returns the 201s."""
    done: Counter = Counter()

    def client(n: int) -> None:
        session = requests.Session()
        i = 0
        while time.time() < stop:
            i += 1
            row = {"name": f"cap {os.getpid()}-{n}-{i}", "listing": "l", "buyer": "123456789012"}
            answer = session.post(
                f"{url}/private_offers/", json=row, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            done[answer.status_code] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[201]


class Engine:
    """Workers and beat as processes on the bench database and Redis."""

    def __init__(self, env: dict[str, str], workers: int, folder: Path) -> None:
        self.procs = []
        for i in range(workers):
            self.procs.append(
                self._start(env, folder / f"w{i}.log", "worker", "--pool", "solo", "-n", f"w{i}@%h")
            )
        self.procs.append(self._start(env, folder / "beat.log", "beat", "-s", str(folder / "beat-schedule")))
        self.folder = folder
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all("ready" in (folder / f"w{i}.log").read_text() for i in range(workers)):
                return
            time.sleep(0.2)
        sys.exit("the workers did not start; see " + str(folder))

    @staticmethod
    def _start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "clazar_dest", *args, "-l", "info"],
            cwd=ROOT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def setup_django(url: str, redis_url: str, data_dir: str) -> None:
    os.environ.update(
        DATABASE_URL=url,
        REDIS_URL=redis_url,
        CLAZAR_DATA_DIR=data_dir,
        DJANGO_SETTINGS_MODULE="clazar_dest.settings",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)


def destination(sim: Sim, rows: list[dict], rate_limit: int):
    from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
    from flows import records
    from flows.models import Credential, Destination, Nexset

    credential, _ = Credential.objects.update_or_create(
        name="bench",
        defaults={
            "api_base": sim.url,
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "rate_limit": rate_limit,
            "paused_until": None,
        },
    )
    nexset = Nexset.objects.create(name=f"bench {time.time()}", kind=Nexset.Kind.UPLOAD)
    for start in range(0, len(rows), 1000):
        records.append(nexset.pk, rows[start : start + 1000])
    return Destination.objects.create(
        name=f"bench {nexset.pk}",
        nexset=nexset,
        credential=credential,
        config={"mode": "template", "template": "create_private_offer"},
    )


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by the workers, the simulator, PostgreSQL and Redis."""
    tick = os.sysconf("SC_CLK_TCK")
    found = dict.fromkeys(("workers", "simulator", "postgres", "redis"), 0.0)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        if command.split(b"\0")[0].endswith(b"bin/postgres"):
            # The postmaster: with the CPU of the backends that ended (each deliver task's threads
            # connect and disconnect), which it reaped.
            used += (int(fields[13]) + int(fields[14])) / tick
        if b"celery" in command and b"worker" in command:
            found["workers"] += used
        elif b"simulators.clazar" in command:
            found["simulator"] += used
        elif command.startswith(b"postgres") or command.split(b"\0")[0].endswith(b"bin/postgres"):
            found["postgres"] += used
        elif command.startswith(b"redis-server"):
            found["redis"] += used
    return found


def engine_run(sim: Sim, n: int) -> dict[str, float]:
    from flows import activation
    from flows.models import Delivery, DeliveryItem

    dest = destination(sim, offers(n), rate_limit=NO_LIMIT)
    cpu_before = cpu_seconds()
    started = time.time()
    activation.activate(dest.pk, user=None)
    while Delivery.objects.filter(destination=dest, finished_at__isnull=False).count() < n:
        time.sleep(0.5)
        if time.time() - started > 900:
            sys.exit(f"not done after 15 min: {Counter(dest.deliveries.values_list('state', flat=True))}")
    cpu = {k: round(v - cpu_before[k], 1) for k, v in cpu_seconds().items()}
    dest.refresh_from_db()
    rows = DeliveryItem.objects.filter(destination=dest).values_list(
        "record__created_at", "delivery__finished_at", "delivery__state"
    )
    waits, states = [], Counter()
    for created, finished, state in rows:
        states[state] += 1
        waits.append((finished - max(created, dest.activated_at)).total_seconds())
    last = max(Delivery.objects.filter(destination=dest).values_list("finished_at", flat=True))
    elapsed = (last - dest.activated_at).total_seconds()
    objects = requests.get(
        f"{sim.url}/__sim/objects", params={"resource": "private_offers"}, timeout=60
    ).json()
    names = Counter(o["name"] for o in objects["private_offers"])
    quantiles = statistics.quantiles(waits, n=100)
    return {
        "records": n,
        "states": dict(states),
        "seconds": round(elapsed, 2),
        "per_second": round(n / elapsed, 1),
        "p50_s": round(quantiles[49], 2),
        "p95_s": round(quantiles[94], 2),
        "created_twice": sum(1 for c in names.values() if c > 1),
        "cpu_seconds": cpu,
        "send_ms": send_timing(sim, dest),
    }


def send_timing(sim: Sim, dest: object) -> dict[str, list[float]]:
    """Where a send's time went, in ms ([p50, p95] over the sends the simulator still has in its log):
    ``to_clazar`` from the attempt row's start (before its commit) to the simulator starting on the
    request; ``in_clazar`` the simulator's own time (its latency included); ``request`` the transport's
    own measure, from writing the request to the answer read (so ``request - in_clazar`` is the time on
    the wire and in the worker's event loop)."""
    from flows.models import Attempt

    entries = {}
    for entry in sim.log():
        key = next(
            (v for k, v in (entry.get("headers") or {}).items() if k.lower() == "idempotency-key"), None
        )
        if key and entry.get("duration") is not None:
            entries[key] = entry
    spans: dict[str, list[float]] = {"to_clazar": [], "in_clazar": [], "request": []}
    attempts = Attempt.objects.filter(delivery__destination=dest).values_list(
        "delivery__idempotency_key", "started_at", "duration_ms"
    )
    for key, started, duration_ms in attempts:
        entry = entries.get(str(key))
        if entry is None or duration_ms is None:
            continue
        spans["to_clazar"].append((entry["time"] - started.timestamp()) * 1000)
        spans["in_clazar"].append(entry["duration"] * 1000)
        spans["request"].append(duration_ms)
    return {
        name: [round(statistics.median(v), 1), round(statistics.quantiles(v, n=20)[18], 1)]
        for name, v in spans.items()
        if len(v) >= 20
    }


def trickle_run(sim: Sim, per_second: int, seconds: float) -> dict[str, float]:
    """Records arriving one batch every 0.1 s into an active destination: record-to-delivered latency."""
    from flows import activation, records
    from flows.models import DeliveryItem

    dest = destination(sim, [], rate_limit=NO_LIMIT)
    activation.activate(dest.pk, user=None)
    batch, sent = max(1, per_second // 10), 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        records.append(dest.nexset_id, offers(batch, start=500_000 + sent))
        sent += batch
        time.sleep(max(0.0, started + sent / per_second - time.monotonic()))
    while DeliveryItem.objects.filter(destination=dest, delivery__finished_at__isnull=False).count() < sent:
        time.sleep(0.2)
    waits = [
        (finished - created).total_seconds()
        for created, finished in DeliveryItem.objects.filter(destination=dest).values_list(
            "record__created_at", "delivery__finished_at"
        )
    ]
    quantiles = statistics.quantiles(waits, n=100)
    return {
        "records": sent,
        "per_second": per_second,
        "p50_s": round(quantiles[49], 3),
        "p95_s": round(quantiles[94], 3),
        "max_s": round(max(waits), 3),
    }


def budget_run(sim: Sim, seconds: float) -> dict[str, float]:
    from flows import activation
    from flows.models import Destination

    limit = 600
    sim.reset(0.05, rate_limit=limit, rate_window=60)
    dest = destination(sim, offers(int(limit * seconds / 60 * 1.5) + 50, start=100_000), rate_limit=limit)
    activation.activate(dest.pk, user=None)
    while not sim.log():
        time.sleep(0.05)
    first = sim.log()[0]["time"]
    time.sleep(max(0.0, first + seconds - time.time()))
    Destination.objects.filter(pk=dest.pk).update(status=Destination.Status.PAUSED)
    window = [e for e in sim.log() if e["time"] < first + seconds]
    ok = sum(1 for e in window if e["status"] == 201)
    allowed = limit * seconds / 60
    return {
        "seconds": seconds,
        "budget": allowed,
        "sent_ok": ok,
        "share": round(ok / allowed, 3),
        "429s": sum(1 for e in window if e["status"] == 429),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    # The most DELIVERY_THREADS allows, the engine's best here: sends in flight per deliver task, on its
    # event loop; the task holds a few database connections however many are in flight.
    parser.add_argument("--threads", type=int, default=64, help="DELIVERY_THREADS per worker")
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--naive", type=int, default=500, help="records for the naive loop")
    parser.add_argument("--trickle", type=int, default=50, help="records/s arriving for the latency figure")
    parser.add_argument("--budget-seconds", type=float, default=60)
    parser.add_argument("--skip-budget", action="store_true")
    args = parser.parse_args()
    server, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if not server or not server.startswith("postgres") or not redis_url:
        sys.exit("Set DATABASE_URL (a PostgreSQL server) and REDIS_URL.")
    ensure_database(server, DATABASE)
    url = bench_url(server, DATABASE)
    folder = Path(tempfile.mkdtemp(prefix="bench-deliver-"))
    setup_django(url, redis_url, str(folder))
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    sim = Sim(rate_limit=0)
    env = {
        **os.environ,
        "CLAZAR_SIMULATOR_URL": sim.url,
        "DELIVERY_THREADS": str(args.threads),
        "CELERY_SWEEP_SECONDS": "1",
        "LOG_LEVEL": "WARNING",
    }
    os.environ["CLAZAR_SIMULATOR_URL"] = sim.url
    from django.conf import settings

    settings.CLAZAR_API_BASES.append(sim.url)
    results: dict[str, object] = {}
    engine = None
    try:
        clients = args.workers * args.threads
        sim.reset(args.latency, rate_limit=0)
        results["naive_per_second"] = round(naive(sim, offers(args.naive, start=900_000)), 1)
        sim.reset(args.latency, rate_limit=0)
        results[f"sim_capacity_{clients}_clients"] = round(capacity(sim, clients, 10), 1)
        sim.reset(args.latency, rate_limit=0)
        results[f"sim_capacity_{clients * 4}_clients"] = round(capacity(sim, clients * 4, 10), 1)
        sim.reset(args.latency, rate_limit=0)
        results[f"sim_capacity_{clients}_clients_{args.workers}_processes"] = round(
            capacity(sim, clients, 10, processes=args.workers), 1
        )
        # With ``clients`` in flight and ``latency`` per call, at most clients / latency per second: more
        # clients over as many processes find what the simulator itself can answer.
        sim.reset(args.latency, rate_limit=0)
        results[f"sim_capacity_{clients * 4}_clients_{args.workers}_processes"] = round(
            capacity(sim, clients * 4, 10, processes=args.workers), 1
        )
        # The same with the lightest client there is: when ``requests`` in threads is the limit itself (its
        # CPU per request is more than the engine's), this finds the simulator's.
        for processes in (1, args.workers):
            for loop in LOOPS:
                sim.reset(args.latency, rate_limit=0)
                results[f"sim_capacity_{clients}_bare_clients_{loop}_{processes}_processes"] = round(
                    capacity(sim, clients, 10, processes=processes, bare=True, loop=loop), 1
                )
        sim.reset(args.latency, rate_limit=0)
        engine = Engine(env, args.workers, folder)
        results["engine"] = engine_run(sim, args.records)
        results["trickle"] = trickle_run(sim, args.trickle, 20)
        if not args.skip_budget:
            results["budget_600_per_min"] = budget_run(sim, args.budget_seconds)
    finally:
        if engine:
            engine.stop()
        sim.stop()
    per_second = results["engine"]["per_second"]  # type: ignore[index]
    best = max(v for k, v in results.items() if k.startswith("sim_capacity"))  # type: ignore[type-var]
    results["engine_vs_naive"] = round(per_second / results["naive_per_second"], 1)  # type: ignore[operator]
    results["engine_vs_sim_capacity"] = round(per_second / best, 2)  # type: ignore[operator]
    results["setup"] = {
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "threads": args.threads,
        "latency_s": args.latency,
        "logs": str(folder),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
