"""Signed single-record webhook requests per second over loopback against gunicorn, on PostgreSQL,
checking that every 2xx answer was stored; beside a naive baseline (the same requests one at a time).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/webhook_ingest.py \
        [--seconds 10] [--clients 16] [--workers 4]

The bench uses its own database (``clazar_bench``, created and migrated on first use, like
bench/import_csv.py), starts gunicorn on a free port, creates a webhook Nexset, and sends requests signed
with the standardwebhooks library from client threads, each over its own connection.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from import_csv import ROOT, bench_url, child_env, ensure_database


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"gunicorn exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    sys.exit("gunicorn did not answer /healthz")


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by gunicorn, PostgreSQL and this process, and by the machine in total."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {"gunicorn": 0.0, "postgres": 0.0}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        if b"gunicorn" in command:
            found["gunicorn"] += used
        elif command.startswith(b"postgres"):
            found["postgres"] += used
    usage = os.times()
    found["client"] = usage.user + usage.system
    with open("/proc/stat") as handle:
        total = [int(v) for v in handle.readline().split()[1:]]
    found["machine"] = (sum(total) - total[3] - total[4]) / tick
    return found


def run_clients(port: int, path: str, secret: str, clients: int, seconds: float) -> dict[str, int]:
    from standardwebhooks import Webhook

    signer = Webhook(secret)
    counts = {"sent": 0, "ok": 0, "other": 0, "errors": 0}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        mine = {"sent": 0, "ok": 0, "other": 0, "errors": 0}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while time.monotonic() < stop:
            n += 1
            msg_id = f"bench-{index}-{n}-{uuid.uuid4().hex[:8]}"
            body = json.dumps({"client": index, "n": n, "amount": n * 1.5, "name": f"order {n}"})
            now = datetime.now(UTC)
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signer.sign(msg_id, now, body),
            }
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                mine["sent"] += 1
                mine["ok" if 200 <= response.status < 300 else "other"] += 1
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException):
                mine["errors"] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        with lock:
            for key, value in mine.items():
                counts[key] += value

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker (gthread if > 1)")
    parser.add_argument("--database", default="clazar_bench")
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", "")
    if not server.startswith(("postgres://", "postgresql://")):
        sys.exit("Set DATABASE_URL to a PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432/postgres")
    ensure_database(server, args.database)
    url = bench_url(server, args.database)
    with tempfile.TemporaryDirectory(prefix="clazar-bench-") as tmp:
        env = child_env(url, tmp)
        env.update(HTTPS_ONLY="0", DEBUG="0", LOG_LEVEL="WARNING", ALLOWED_HOSTS="127.0.0.1")
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, cwd=ROOT, check=True)
        os.environ.update(env)
        import django

        django.setup()
        from django.contrib.auth.models import AnonymousUser
        from django.db import connection

        from flows import nexsets
        from flows.models import Record

        with connection.cursor() as cursor:  # our own database: start empty (keys change per run)
            cursor.execute("TRUNCATE flows_record, flows_import, flows_nexset RESTART IDENTITY CASCADE")
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "clazar_dest.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(args.workers),
            "--log-level",
            "warning",
        ]
        if args.threads > 1:
            command += ["--worker-class", "gthread", "--threads", str(args.threads)]
        gunicorn = subprocess.Popen(command, env=env, cwd=ROOT)
        try:
            wait_until_up(port, gunicorn)
            results = {}
            for label, clients, seconds in (
                ("baseline", 1, max(3.0, args.seconds / 3)),
                ("concurrent", args.clients, args.seconds),
            ):
                nexset, secret = nexsets.create_webhook(f"bench {label}", AnonymousUser())
                before, started = cpu_seconds(), time.monotonic()
                counts = run_clients(port, f"/hooks/{nexset.code}/", secret, clients, seconds)
                elapsed = time.monotonic() - started
                after = cpu_seconds()
                stored = Record.objects.filter(nexset=nexset).count()
                cpu = {k: (after[k] - before[k]) * 1000 / max(counts["ok"], 1) for k in after}
                results[label] = (counts, elapsed, stored, cpu)
        finally:
            gunicorn.terminate()
            gunicorn.wait(15)
    print(
        f"\nSigned single-record webhook requests, gunicorn {args.workers} worker(s)"
        f"{f' x {args.threads} threads' if args.threads > 1 else ''}, PostgreSQL, loopback:"
    )
    for label, (counts, elapsed, stored, cpu) in results.items():
        rate = counts["ok"] / elapsed
        check = "every 2xx stored" if stored == counts["ok"] else f"MISMATCH: {stored} stored"
        clients = 1 if label == "baseline" else args.clients
        print(
            f"  {label:<10} {clients:>2} client(s): {counts['ok']:,} x 2xx in {elapsed:.1f}s = {rate:,.0f}/s; "
            f"{counts['other']} other answers, {counts['errors']} connection errors; {check}"
        )
        print(
            f"             CPU per request: gunicorn {cpu['gunicorn']:.2f} ms, PostgreSQL {cpu['postgres']:.2f} ms, "
            f"client {cpu['client']:.2f} ms; machine {cpu['machine']:.2f} ms "
            f"({cpu['machine'] * counts['ok'] / 1000 / elapsed:.2f} of {os.cpu_count()} CPUs busy)"
        )
    best = results["concurrent"][0]["ok"] / results["concurrent"][1]
    print(
        f"  goal >= 500/s with every 2xx stored: {'met' if best >= 500 and results['concurrent'][2] == results['concurrent'][0]['ok'] else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
