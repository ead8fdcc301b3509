"""What one request to Clazar costs the sending process in CPU, at the engine's concurrency: the engine's
way (coroutines on one event loop, each calling ``transport.asend``) beside its earlier way (a pool of
threads, each calling ``transport.send``) and a bare HTTP/1.1 exchange over ``asyncio`` streams on as
many keep-alive connections (the floor any event-loop worker could approach, with none of the
transport's checks), each loop way on uvloop's loop (what a deliver run uses) and on asyncio's own. No
database: this isolates the client.

    .venv/bin/python bench/client_overhead.py [--concurrency 64] [--requests 4000] [--latency 0.05]

The Clazar simulator runs as its own process (with TCP_NODELAY, as in bench/deliver.py), ``--latency``
on every call and no rate limit. Prints requests/s and the client's CPU microseconds per request for
each, and the sequential ``transport.send`` as the naive baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from deliver import LOOPS, Sim, bare_client  # noqa: E402

from clazar_dest.clazar import transport  # noqa: E402
from clazar_dest.clazar.spec import RequestSpec  # noqa: E402

BODY = json.dumps({"name": "Offer", "listing": "lst-1", "buyer": "123456789012"}).encode()
# What both transports are called with: no idempotency key, generous timeouts.
OPTIONS = {"idempotency_key": None, "connect_timeout": 5, "read_timeout": 30, "deadline": 60}


def created(result: transport.AttemptResult) -> None:
    if result.status != 201:
        raise RuntimeError(f"unexpected answer: {result.status} {result.error}")


def measure(name: str, count: int, run: Callable[[], None]) -> dict[str, float]:
    started, cpu = time.perf_counter(), time.process_time()
    run()
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    figures = {"per_second": round(count / elapsed, 1), "cpu_us_per_request": round(used / count * 1e6)}
    print(f"{name:44s} {figures['per_second']:8.1f} req/s  {figures['cpu_us_per_request']:5d} µs CPU each")
    return figures


def threads(sim: Sim, token: str, concurrency: int, count: int) -> None:
    """The engine's way until it moved to an event loop: ``concurrency`` threads sharing one session, each
    sending until none are left."""
    session = transport.new_session(concurrency)
    spec = RequestSpec("POST", f"{sim.url}/private_offers/", BODY, (1,))
    left, lock = [count], threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            created(transport.send(spec, token, session=session, **OPTIONS))

    pool = [threading.Thread(target=work) for _ in range(concurrency)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def event_loop(sim: Sim, token: str, concurrency: int, count: int, loop: str) -> None:
    """The engine's way: ``concurrency`` coroutines on one event loop (``loop``, of LOOPS), each calling
    ``transport.asend`` on the loop's kept-alive connections until none are left."""
    spec = RequestSpec("POST", f"{sim.url}/private_offers/", BODY, (1,))
    left = [count]

    async def work(session: transport.AsyncSession) -> None:
        while left[0] > 0:
            left[0] -= 1
            created(await transport.asend(spec, token, session=session, **OPTIONS))

    async def run() -> None:
        session = transport.AsyncSession(concurrency)
        try:
            await asyncio.gather(*(work(session) for _ in range(concurrency)))
        finally:
            session.close()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(run())


def bare(sim: Sim, token: str, concurrency: int, count: int, loop: str) -> None:
    async def run() -> None:
        left = [count]
        await asyncio.gather(*(bare_client(sim.url, token, None, str(n), left) for n in range(concurrency)))

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    sim = Sim(rate_limit=0)
    try:
        sim.reset(0.0, rate_limit=0)
        token = sim.token()
        naive = max(200, args.requests // 10)
        measure("sequential transport.send (no latency)", naive, lambda: threads(sim, token, 1, naive))
        sim.reset(args.latency, rate_limit=0)
        token = sim.token()
        c, n = args.concurrency, args.requests
        measure(f"{c} threads, transport.send", n, lambda: threads(sim, token, c, n))
        for loop in LOOPS:
            measure(
                f"{loop}, {c} in flight, transport.asend",
                n,
                functools.partial(event_loop, sim, token, c, n, loop),
            )
            measure(
                f"{loop}, {c} connections, bare HTTP/1.1", n, functools.partial(bare, sim, token, c, n, loop)
            )
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
