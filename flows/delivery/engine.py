"""The deliver loop of one destination (DESIGN.md section 6): what a ``flows.deliver`` wake-up runs.

``run`` plans new records, then ``process_due`` keeps up to DELIVERY_THREADS sends in flight: for every
free slot it takes budget from the credential's shared bucket, claims that many due deliveries and hands
them to the run's event loop (``EventLoop``, uvloop's where installed: each send is a coroutine,
``send.deliver_with``, on one thread; a request in flight costs no thread); it claims up to twice the slots, a batch at a time, so
claiming is amortised and no send waits for the next claim. A send holds its slot until its requests are
over, not while its outcome is written. The next chunk is planned ahead on a database thread
(``_PlanAhead``), and a run that claims a full batch wakes one more worker for the destination
(``flows.tasks.ask_help``). It stops when nothing is due (a delivery blocked behind an older update of
the same target becomes claimable when that one finishes, so the loop waits for in-flight sends before
deciding), when the destination is no longer active (deactivate stops new sends within half a second:
claimed deliveries not yet started are given back; in-flight requests finish and are recorded), when the credential is paused by a 429 for more than a few
seconds, or after DELIVERY_SLICE_SECONDS, when it wakes itself again so other destinations get a turn.

Threads: the loop's own, the writer threads that write the attempts, outcomes and response records in
batches (``batch.GroupCommit``), and ``EventLoop.DB_THREADS`` threads for a send's steps off the common
path (a 401, a lookup, the breaker, a 429 pause), whose connections close when the run ends; this loop's
thread claims and plans. ``threads=0`` runs everything in the calling thread with blocking sends (tests
inside a transaction use that): the same code (``flows.sending.Blocking``).

Circuit breaker probe: an auto-paused destination whose ``probe_at`` is due sends its oldest pending
delivery (one worker wins the conditional update of ``probe_at``); when that does not fail server-side,
the destination is active again and the loop carries on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connections
from django.utils import timezone

from flows import audit, ratelimit
from flows.delivery import claims, planner
from flows.delivery.send import Context, count, deliver_one, deliver_with
from flows.models import Credential, Delivery, Destination
from flows.sending import BLOCKING, SLOT, Blocking, OnLoop, Slot, drive

log = logging.getLogger(__name__)

GATE_SECONDS = 0.5  # how stale the destination/credential status may be inside the loop
SHORT_PAUSE = 5.0  # a 429 pause up to this long is waited out; longer ones end the run


class _Counts:
    """How many jobs are waiting or running (``busy``), how many of those only write what they got
    (``writing``: their requests are over) and how many finished, for the run's loop."""

    size: int

    def __init__(self) -> None:
        self.busy = 0
        self.writing = 0
        self.finished = 0
        self._cond = threading.Condition()
        self._watching = 0  # threads in wait_progress

    def _sending(self) -> int:
        """Jobs waiting to send or sending; up to ``size`` writing ones don't count (their writes are
        batched and short, and the next requests should not wait for them)."""
        return self.busy - min(self.writing, self.size)

    def _low(self) -> int:
        """Claim again once no more than this many jobs wait or send: while half a pool's worth still
        waits, so the slots don't run dry while the next claim is made."""
        return 2 * self.size - max(self.size // 2, 1)

    def free(self) -> int:
        """Room for more jobs: up to twice the pool's size may be claimed, so a claim is a batch and the
        pool never waits for the next one. Zero until at least half the size's worth of room is free."""
        with self._cond:
            sending = self._sending()
            return 2 * self.size - sending if sending <= self._low() else 0

    def wait_free(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._sending() <= self._low(), timeout)

    def wait_progress(self, seen: int, timeout: float) -> None:
        """Until a job finishes after ``seen`` had (or the pool is idle)."""
        with self._cond:
            self._watching += 1
            try:
                self._cond.wait_for(lambda: self.finished != seen or self.busy == 0, timeout)
            finally:
                self._watching -= 1

    def _started(self) -> None:
        with self._cond:
            self.busy += 1

    def _sent(self) -> None:
        with self._cond:
            self.writing += 1
            self._room()

    def _ended(self, sent: bool = False) -> None:
        with self._cond:
            self.busy -= 1
            self.writing -= sent
            self.finished += 1
            self._room()

    def _room(self) -> None:
        # Wake the run's loop only when it has something to do: room for a claim (or all done), or it
        # waits for any progress. Not at every send while a full claim's worth is queued.
        if self._sending() <= self._low() or self._watching:
            self._cond.notify_all()


class Pool(_Counts):
    """A fixed set of threads running jobs from a queue (the database work of an ``EventLoop``)."""

    def __init__(self, size: int, name: str = "deliver") -> None:
        super().__init__()
        self.size = size
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._started()
        self._jobs.put((fn, args))

    def call(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn`` on a thread of the pool; its result (or exception) comes back in the future."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

        self.submit(job)
        return future

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                fn, args = job
                try:
                    fn(*args)
                except Exception:  # the lease expires and the sweeper resolves the delivery
                    log.exception("deliver thread: %s failed", getattr(fn, "__name__", fn))
                finally:
                    self._ended()
        finally:
            connections.close_all()


class EventLoop(_Counts):
    """The sends of a deliver run as coroutines on one event loop, in a thread of its own: up to ``size``
    requests in flight (each on a kept-alive connection of the run) without a thread per request, and up
    to ``ahead`` more sends opening their attempts meanwhile, so a request goes out as soon as another
    ends instead of after its attempt's commit (a killed worker leaves at most that many attempts opened
    but never sent, which the sweeper settles as any other unknown outcome). The
    database steps of a send (its writes go through the run's group commits; the rare ones, such as a 429
    pause or a lookup, run on ``DB_THREADS`` threads) never block the loop. A job is a coroutine function
    taking the run's ``flows.sending.OnLoop`` first, or a plain function (run on those threads)."""

    DB_THREADS = 4

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.db = Pool(self.DB_THREADS, name="deliver-db")
        self.way = OnLoop(self.db.call, size)
        self._loop = new_loop()
        self.ahead = max(size // 4, 1)
        self._slots: asyncio.Semaphore | None = None  # the sends under way (``Slot``)
        self._requests: asyncio.Semaphore | None = None  # the requests in flight
        self._incoming: list[tuple[Callable[..., Any], tuple]] = []
        self._tasks: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="deliver-loop", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._cond:
            self.busy += 1
            self._incoming.append((fn, args))
            first = len(self._incoming) == 1
        if first:  # one wake-up of the loop for a claim's worth of jobs
            self._loop.call_soon_threadsafe(self._start)

    def background(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run a database step of the run's loop itself (planning ahead) on a database thread."""
        return self.db.call(fn, *args)

    def close(self) -> None:
        """Once every job submitted has finished: close the run's connections and stop the loop."""
        with self._cond:
            self._cond.wait_for(lambda: self.busy == 0)
        asyncio.run_coroutine_threadsafe(self._shut(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self.db.close()

    async def _shut(self) -> None:
        self.way.session.close()
        await self._loop.shutdown_default_executor()  # its name lookups (getaddrinfo) for new connections

    def _start(self) -> None:
        with self._cond:
            jobs, self._incoming = self._incoming, []
        for fn, args in jobs:
            task = self._loop.create_task(self._job(fn, args))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _job(self, fn: Callable[..., Any], args: tuple) -> None:
        if self._slots is None or self._requests is None:  # made on the loop, for the loop
            self._slots = asyncio.Semaphore(self.size + self.ahead)
            self._requests = asyncio.Semaphore(self.size)
        slot = None
        try:
            await self._slots.acquire()
            slot = Slot(self._slots, self._requests, self._sent)
            SLOT.set(slot)  # this task's own context: done_sending gives it back before the writes
            if inspect.iscoroutinefunction(fn):
                await fn(self.way, *args)
            else:
                await self.way.call(fn, *args)
        except Exception:  # the lease expires and the sweeper resolves the delivery
            log.exception("deliver loop: %s failed", getattr(fn, "__name__", fn))
        finally:
            sent = slot is not None and slot.semaphore is None
            if slot is not None:
                slot.release()
            self._ended(sent)


def new_loop() -> asyncio.AbstractEventLoop:
    """A deliver run's event loop: uvloop's (libuv, written in C) where it is installed, as it is on every
    platform but Windows. At a thousand requests a second a run's loop is its busiest thread, and uvloop's
    costs it about a tenth less CPU per delivery than asyncio's own (bench/engine_cpu.py)."""
    try:
        import uvloop
    except ImportError:  # Windows: asyncio's own loop does the same, a little slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Inline:
    """The pool's interface, running each job at once in the calling thread."""

    size = busy = finished = 0

    def free(self) -> int:
        return 1

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            if inspect.iscoroutinefunction(fn):
                drive(fn(BLOCKING, *args))
            else:
                fn(*args)
        finally:
            self.finished += 1

    def background(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future

    def wait_free(self, timeout: float) -> None:
        return None

    def wait_progress(self, seen: int, timeout: float) -> None:
        return None

    def close(self) -> None:
        return None


class _Gate:
    """The destination's status and the credential's pause, re-read at most every GATE_SECONDS."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.read_at = 0.0
        self.status = ""
        self.paused_until = None
        self.token_checked = False

    def check(self, force: bool = False) -> tuple[bool, float]:
        """(may send, seconds to wait first)."""
        if self.ctx.changed.is_set():
            self.ctx.changed.clear()
            force = True
        if force or time.monotonic() - self.read_at > GATE_SECONDS:
            row = (
                Destination.objects.filter(pk=self.ctx.destination.pk)
                .values_list("status", "credential__paused_until", "credential__rate_limit", "failures")
                .first()
            )
            if row is None:
                return False, 0.0
            self.status, self.paused_until, self.ctx.credential.rate_limit, failures = row
            self.ctx.failing = self.ctx.failing or failures > 0
            self.ctx.view.refresh()  # an edited credential (API base, token) reaches the sends too
            self.read_at = time.monotonic()
            self.token_checked = False
        if self.status != Destination.Status.ACTIVE:
            return False, 0.0
        if self.paused_until is not None:
            left = (self.paused_until - timezone.now()).total_seconds()
            if left > 0:
                return left <= SHORT_PAUSE, left
        if not self.token_checked:  # only for a run that sends: a paused one asks Clazar for nothing
            self.ctx.view.ready()
            self.token_checked = True
        return True, 0.0


def run(destination_id: int) -> Counter:
    """What ``flows.deliver`` does: probe if due, plan, send what is due; wake again when time ran out."""
    tally = process_due(destination_id)
    if tally.get("handed_over"):
        from flows.tasks import deliver

        deliver.delay(destination_id)
    return tally


def process_due(
    destination_id: int,
    *,
    limit: int | None = None,
    lease_seconds: float | None = None,
    threads: int | None = None,
    max_seconds: float | None = None,
) -> Counter:
    """Plan, then claim and send due deliveries of one destination until none is due (or ``limit`` were
    claimed, or ``max_seconds`` passed). Returns counts of the states the sends ended in, plus
    ``claimed``, ``settled`` and ``handed_over`` (1 when time ran out with work left)."""
    tally: Counter = Counter()
    size = settings.DELIVERY_THREADS if threads is None else threads
    ctx = Context.load(destination_id, writers=size > 0)
    if ctx is None:
        return tally
    try:
        _run_loop(ctx, tally, size, limit, lease_seconds, max_seconds)
    finally:
        ctx.close()
    return tally


def _run_loop(
    ctx: Context,
    tally: Counter,
    size: int,
    limit: int | None,
    lease_seconds: float | None,
    max_seconds: float | None,
) -> None:
    destination_id = ctx.destination.pk
    lease = lease_seconds or settings.DELIVERY_LEASE_SECONDS
    stop_at = time.monotonic() + (max_seconds or settings.DELIVERY_SLICE_SECONDS)
    if ctx.destination.status == Destination.Status.AUTO_PAUSED and not probe(ctx, lease, tally):
        return
    # A first claim's worth at once (sends start without waiting for a whole chunk), the rest of the
    # chunk planned ahead while they go out.
    _plan(destination_id, max(2 * size, 1))
    pool: EventLoop | _Inline = EventLoop(size) if size > 0 else _Inline()
    ahead = _PlanAhead(destination_id, pool)
    gate = _Gate(ctx)
    rearmed = False
    helped = size == 0  # a run in the calling thread (tests, threads=0) asks no other worker
    try:
        ahead.check()
        _settle_unknown(ctx, pool, lease, tally)
        while True:
            if time.monotonic() >= stop_at:
                tally["handed_over"] = 1
                break
            go, wait = gate.check()
            if not go:
                ctx.halt.set()  # claimed deliveries not yet started are given back
                if wait:
                    tally["credential_paused"] = 1
                break
            if wait:  # a short 429 pause: wait it out, giving back what was claimed
                ctx.halt.set()
                time.sleep(min(wait, 1.0))
                continue
            ctx.halt.clear()
            free = pool.free()
            if free <= 0:
                pool.wait_free(GATE_SECONDS)
                continue
            want = free if limit is None else min(free, limit - tally["claimed"])
            if want <= 0:
                break
            grant = ratelimit.take(ctx.credential, want)
            if not grant.count:
                time.sleep(min(max(grant.wait, 0.001), GATE_SECONDS))
                continue
            seen = pool.finished
            rows = claims.claim(destination_id, grant.count, lease)
            ratelimit.refund(ctx.credential, grant.count - len(rows))
            if not rows:
                if ahead.now():
                    continue
                if pool.busy:  # a send in flight may unblock the next update of its target
                    pool.wait_progress(seen, GATE_SECONDS)
                    continue
                if not rearmed:  # let the next new record wake us, then look once more
                    from flows.tasks import rearm

                    rearm(destination_id)
                    rearmed = True
                    continue
                break
            rearmed = False
            if len(rows) == want and not helped:  # more may be due than this run holds in flight
                from flows.tasks import ask_help

                ask_help(destination_id)
                helped = True
            tally["claimed"] += len(rows)
            for row in rows:
                pool.submit(_send, row, ctx, tally)
            ahead.claimed(len(rows))
    finally:
        ahead.close()
        pool.close()


def _plan(destination_id: int, most: int | None = None) -> int:
    """Plan the next chunk (or ``most`` records, if fewer) when records wait past the cursor (checked
    first without any lock)."""
    if not planner.pending(destination_id):
        return 0
    return planner.plan_chunk(
        destination_id, min(most or settings.DELIVERY_PLAN_CHUNK, settings.DELIVERY_PLAN_CHUNK)
    )


class _PlanAhead:
    """Keeps about a chunk of deliveries planned ahead of the claims while records wait past the cursor.

    Planning only when a claim finds nothing left the sends idle while the next chunk was planned (and,
    with two workers, every worker waited for it). So each time the run has claimed half a chunk, a
    database thread of the run checks how many deliveries are still queued and plans the next chunk when
    fewer than a chunk are: claims and sends go on meanwhile. One such check at a time; its error is
    raised in the run's loop, as a plan there would be."""

    def __init__(self, destination_id: int, pool: EventLoop | _Inline) -> None:
        self.destination_id = destination_id
        self.pool = pool
        self.since = 0
        self.running: concurrent.futures.Future | None = None

    def claimed(self, count: int) -> None:
        self.since += count
        if self.since * 2 >= settings.DELIVERY_PLAN_CHUNK:
            self.check()

    def check(self) -> None:
        """Plan the next chunk on a database thread if fewer than a chunk are queued (unless a check is
        still running)."""
        if self.running is not None:
            if not self.running.done():
                return
            self.running.result()
        self.since = 0
        self.running = self.pool.background(_plan_if_low, self.destination_id)

    def now(self) -> int:
        """Nothing was claimable: plan now (after the check in flight, if any). Returns how many were planned."""
        planned = self.wait()
        return planned or _plan(self.destination_id)

    def wait(self) -> int:
        running, self.running = self.running, None
        return running.result() if running is not None else 0

    def close(self) -> None:
        """The run ends: let a plan in flight finish (the next run plans again if it failed)."""
        try:
            self.wait()
        except Exception:
            log.exception("destination %s: planning ahead failed", self.destination_id)


def _plan_if_low(destination_id: int) -> int:
    low = settings.DELIVERY_PLAN_CHUNK
    queued = Delivery.objects.filter(
        destination_id=destination_id, is_test=False, state=Delivery.State.QUEUED
    ).values_list("id", flat=True)[low - 1 : low]
    if list(queued):
        return 0
    return _plan(destination_id)


async def _send(way: Blocking, row: Delivery, ctx: Context, tally: Counter) -> None:
    if ctx.halt.is_set():  # deactivated, auto-paused or rate limited since the claim: nothing sent
        await way.call(_give_back, row, ctx, tally)
        return
    await deliver_with(way, row, ctx, tally)


def _give_back(row: Delivery, ctx: Context, tally: Counter) -> None:
    if claims.release(row):
        ratelimit.refund(ctx.credential, 1)
        count(tally, "released")


def _settle_unknown(ctx: Context, pool: EventLoop | _Inline, lease: float, tally: Counter) -> None:
    """Look up unknown outcomes that are due (after a crash, or a lookup that failed before)."""
    from flows.delivery.reconcile import settle

    rows = claims.claim_unsettled(ctx.destination.pk, max(pool.size, 1) * 4, lease)
    for row in rows:
        tally["settled"] += 1
        pool.submit(settle, row, ctx)


def probe(ctx: Context, lease: float, tally: Counter) -> bool:
    """Send one pending delivery of an auto-paused destination whose probe is due. Returns whether the
    destination is active again."""
    now = timezone.now()
    dest_id = ctx.destination.pk
    paused_until = Credential.objects.values_list("paused_until", flat=True).get(pk=ctx.credential.pk)
    if paused_until is not None and paused_until > now:
        # Clazar asked this credential to wait (429): the probe waits too, or its 429 would "resume" us.
        Destination.objects.filter(pk=dest_id, status=Destination.Status.AUTO_PAUSED).update(
            probe_at=paused_until
        )
        return False
    won = Destination.objects.filter(
        pk=dest_id, status=Destination.Status.AUTO_PAUSED, probe_at__lte=now
    ).update(probe_at=now + timedelta(seconds=settings.DELIVERY_PROBE_SECONDS))
    if not won:
        return False
    rows = claims.claim(dest_id, 1, lease, any_time=True)
    if not rows:
        return _resume(dest_id, "nothing was pending to test with")
    tally["probed"] = 1
    state = deliver_one(rows[0], ctx, tally)
    failures = Destination.objects.values_list("failures", flat=True).get(pk=dest_id)
    if failures:
        log.info("destination %s: probe failed (%s); still auto-paused", ctx.destination.uuid, state)
        return False
    return _resume(dest_id, f"a test delivery ended {state}")


def _resume(destination_id: int, why: str) -> bool:
    resumed = Destination.objects.filter(pk=destination_id, status=Destination.Status.AUTO_PAUSED).update(
        status=Destination.Status.ACTIVE,
        paused_reason="",
        probe_at=None,
        failures=0,
        updated_at=timezone.now(),
    )
    if resumed:
        dest = Destination.objects.get(pk=destination_id)
        audit.record(None, "destination.auto_resume", dest, extra={"why": why})
        log.info("destination %s resumed by the circuit breaker probe: %s", dest.uuid, why)
    return bool(resumed)


def due_work(destination_id: int, now: Any = None) -> bool:
    """Whether the destination has deliveries to send or outcomes to settle now."""
    now = now or timezone.now()
    return (
        claims.sendable(destination_id, now=now).exists()
        or claims.unsettled(destination_id, now=now).exists()
    )
