"""Send one claimed delivery, record what happened and decide what comes next (DESIGN.md 6.4 to 6.7, 6.10).

The order matters: the Attempt row is committed as ``sending`` before the socket opens; the answer is
classified by ``flows.outcomes.classify``; then the attempt and the delivery are written in one
transaction, fenced on (state, attempts) so a worker that lost its lease can't overwrite what the sweeper
decided, except to settle an ``unknown`` the sweeper set while the answer was still on its way.
Both writes are group commits across the deliver run's sends (``flows.delivery.batch``): a send waits
until the batch holding its write is committed, so the order above holds for every send. A send is written
once (``deliver_with``) and runs blocking (``deliver_one``) or on the run's event loop. The
credential's API base and token come from a view of its row shared by the run and refreshed by its loop
(``tokens.CredentialView``).

Side effects after the write: a 429 pauses the whole credential until Retry-After; server-side failures
count towards the circuit breaker (any answer from Clazar resets it); an unknown create or publish is
looked up at once (``reconcile``); a final outcome is written to the response Nexset when the destination
has the response webhook on.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from clazar_dest.clazar.endpoints import BY_KEY
from clazar_dest.clazar.spec import RequestSpec
from clazar_dest.clazar.transport import AttemptResult
from flows import audit, ratelimit, responses, tokens
from flows.attempts import closing, new_attempt, open_attempts
from flows.bulk import set_many
from flows.config import DestinationConfig, scan_headers
from flows.delivery.batch import GroupCommit
from flows.models import Attempt, Credential, Delivery, Destination, Record
from flows.outcomes import RETRY_AFTER_MAX, RETRY_AFTER_MIN, Outcome, classify, retry_after_seconds
from flows.sending import BLOCKING, Blocking, drive, send_with

log = logging.getLogger(__name__)

STATE_FOR = {
    "done": Delivery.State.SUCCEEDED,
    "retry": Delivery.State.RETRY_SCHEDULED,
    "refresh_token": Delivery.State.RETRY_SCHEDULED,
    "unknown": Delivery.State.UNKNOWN,
    "permanent": Delivery.State.FAILED,
    "exhausted": Delivery.State.EXHAUSTED,
}
FINAL = (Delivery.State.SUCCEEDED, Delivery.State.FAILED, Delivery.State.EXHAUSTED)
WRITE_LINGER = 0.01  # seconds an outcome or response batch waits for more before it is written
_tally_lock = threading.Lock()


@dataclass(frozen=True)
class Exchange:
    """One attempt: the row (still open), what the transport saw and what it means."""

    attempt: Attempt
    result: AttemptResult
    outcome: Outcome


@dataclass
class Context:
    """What every send of one destination shares, read once per deliver task."""

    destination: Destination
    credential: Credential
    headers: tuple[tuple[str, str], ...]
    responses: bool
    # Set by a send that paused the credential or tripped the breaker: the loop re-reads its gate at once.
    changed: threading.Event = field(default_factory=threading.Event)
    # Set by the loop when sends must stop: claimed deliveries not yet started are given back.
    halt: threading.Event = field(default_factory=threading.Event)
    # Whether the breaker count may be above zero (so a success must reset it): saves a write per send.
    failing: bool = True
    # The credential's API base and token as the sends of this run see them (refreshed by the run's loop).
    view: tokens.CredentialView = field(init=False)
    # The attempt rows and the outcomes of this run's threads, written in batches (``batch.GroupCommit``),
    # by writer threads of their own when the run has a pool of threads (``writers``).
    writers: bool = False
    opener: GroupCommit[Attempt, Attempt] = field(init=False)
    recorder: GroupCommit[Written, str] = field(init=False)
    responder: GroupCommit[int, Record | None] = field(init=False)  # response records, by delivery id

    def __post_init__(self) -> None:
        self.view = tokens.CredentialView(self.credential.pk)
        self.opener = GroupCommit(open_attempts, writer=self.writers)
        # Outcomes and response records wait a little for company: a send no longer holds its slot then.
        self.recorder = GroupCommit(write_outcomes, writer=self.writers, linger=WRITE_LINGER)
        self.responder = GroupCommit(
            responses.store_many, writer=self.writers, write_one=responses.write, linger=WRITE_LINGER
        )

    def close(self) -> None:
        """Stop the writer threads (after every write handed in)."""
        self.opener.close()
        self.recorder.close()
        self.responder.close()

    @classmethod
    def load(cls, destination_id: int, *, writers: bool = False) -> Context | None:
        dest = Destination.objects.select_related("credential").filter(pk=destination_id).first()
        if dest is None:
            return None
        config = DestinationConfig.from_json(dest.config)
        headers = scan_headers(config.headers)[0] if config.mode == "advanced" else ()
        return cls(
            dest,
            dest.credential,
            headers,
            config.response_webhook,
            failing=dest.failures > 0,
            writers=writers,
        )


def unsafe(method: str, endpoint_key: str) -> bool:
    """Whether repeating the request could do it twice: creates, publishes and any other POST."""
    endpoint = BY_KEY.get(endpoint_key)
    return method.upper() == "POST" or bool(endpoint and endpoint.action in ("create", "publish"))


def exchange(
    delivery: Delivery,
    spec: RequestSpec,
    number: int,
    credential_id: int,
    in_round: int | None = None,
    view: tokens.CredentialView | None = None,
    opener: GroupCommit[Attempt, Attempt] | None = None,
) -> Exchange:
    """Open attempt ``number`` (committed), send ``spec`` with the credential, classify the answer as the
    ``in_round``-th try of the current retry schedule (default: ``number``). The caller closes the attempt
    (``close_attempt`` or ``write_outcomes``) together with its own write. Shared with Send Test Data. ``view`` and ``opener``:
    the deliver run's shared credential view and attempt batches."""
    return drive(exchange_with(BLOCKING, delivery, spec, number, credential_id, in_round, view, opener))


async def exchange_with(
    way: Blocking,
    delivery: Delivery,
    spec: RequestSpec,
    number: int,
    credential_id: int,
    in_round: int | None = None,
    view: tokens.CredentialView | None = None,
    opener: GroupCommit[Attempt, Attempt] | None = None,
) -> Exchange:
    """``exchange`` with its steps carried out ``way`` (``flows.sending.Blocking``)."""
    endpoint = BY_KEY.get(spec.endpoint)
    risky = unsafe(spec.method, spec.endpoint)
    attempt = new_attempt(delivery, spec, number)
    if opener is not None:
        await way.write(opener, attempt)
    else:
        await way.call(open_attempts, [attempt])
    key = str(delivery.idempotency_key) if risky else None
    result = await send_with(way, spec, credential_id, idempotency_key=key, view=view)
    outcome = classify(
        method=spec.method,
        creates_or_publishes=risky,
        error_kind=result.error_kind,
        status=result.status,
        headers=result.headers,
        body_json=result.json,
        attempt=in_round or number,
        now=timezone.now(),
        refreshed=result.refreshed,
        target_id=spec.target_id or None,
        resource_label=endpoint.resource.replace("_", " ").rstrip("s").capitalize() if endpoint else None,
        error=result.error,
    )
    return Exchange(attempt, result, outcome)


def spec_for(delivery: Delivery, headers: tuple[tuple[str, str], ...] = ()) -> RequestSpec:
    """The request a planned delivery sends (its seqs are not needed to send it)."""
    body = bytes(delivery.body) if delivery.body is not None else None
    return RequestSpec(
        method=delivery.method,
        url=delivery.url,
        body=body,
        seqs=(),
        headers=headers,
        target_id=delivery.target_id,
        endpoint=delivery.endpoint,
    )


def deliver_one(delivery: Delivery, ctx: Context, tally: Counter | None = None) -> str:
    """Send one claimed delivery and settle it; returns the state it ended in."""
    return drive(deliver_with(BLOCKING, delivery, ctx, tally))


async def deliver_with(way: Blocking, delivery: Delivery, ctx: Context, tally: Counter | None = None) -> str:
    """``deliver_one`` with its steps carried out ``way``: in the calling thread, or on a deliver run's
    event loop (``flows.sending.OnLoop``), where every database step is handed to a thread."""
    in_round = max(delivery.attempts - delivery.attempts_base, 1)
    spec = spec_for(delivery, ctx.headers)
    ex = await exchange_with(
        way, delivery, spec, delivery.attempts, ctx.credential.pk, in_round, ctx.view, ctx.opener
    )
    way.done_sending()  # the next request may go out while this one's outcome is written
    state = await way.write(ctx.recorder, outcome_write(delivery, ex))
    if tally is not None:
        count(tally, state)
    if ex.result.status == 429:
        await way.call(pause_credential, ctx.credential, ex)
        ctx.changed.set()
    if (ex.outcome.counts_for_breaker or (ex.result.status is not None and ctx.failing)) and await way.call(
        breaker, ctx, ex
    ):
        ctx.changed.set()
    if state == Delivery.State.UNKNOWN:
        from flows.delivery.reconcile import settle

        state = await way.call(settle, delivery, ctx)
    elif state in FINAL and ctx.responses:
        await way.write(ctx.responder, delivery.pk)
    return state


def count(tally: Counter, key: str) -> None:
    """Add one to a tally shared by the deliver threads."""
    with _tally_lock:
        tally[key] += 1


@dataclass(frozen=True)
class Written:
    """One outcome to write: the delivery as claimed, its exchange and the delivery's new fields."""

    delivery: Delivery
    exchange: Exchange
    fields: dict


def record(delivery: Delivery, ex: Exchange, recorder: GroupCommit[Written, str] | None = None) -> str:
    """Write the attempt and the delivery's new state (in one transaction, batched with the other threads'
    through ``recorder``); return the delivery's state."""
    written = outcome_write(delivery, ex)
    return recorder.submit(written) if recorder is not None else write_outcomes([written])[0]


def outcome_write(delivery: Delivery, ex: Exchange) -> Written:
    """The write that closes the attempt and moves the delivery on (``write_outcomes``)."""
    now = timezone.now()
    outcome, result = ex.outcome, ex.result
    state = STATE_FOR.get(outcome.action, Delivery.State.FAILED)
    fields: dict = {"state": state, "last_status": result.status, "lease_until": None, "updated_at": now}
    if outcome.action == "done":
        endpoint = BY_KEY.get(delivery.endpoint)
        known = outcome.created_id or ("" if endpoint is None or endpoint.creates else delivery.target_id)
        fields["created_object_id"] = (known or "")[:255]  # updates/publishes: the object they changed
        lost_id = not outcome.created_id and endpoint is not None and endpoint.creates
        fields["last_error"] = outcome.message if lost_id else ""  # "accepted, but the id is not known"
    else:
        fields["last_error"] = outcome.message
    if state in FINAL:
        fields["finished_at"] = now
    if outcome.action == "retry":
        fields["next_attempt_at"] = outcome.retry_at
    elif outcome.action == "refresh_token":
        fields["next_attempt_at"] = now + timedelta(seconds=1)
    elif outcome.action == "unknown":
        # Held by this worker for the lookup that follows at once.
        fields["next_attempt_at"] = now
        fields["lease_until"] = now + timedelta(seconds=settings.DELIVERY_LEASE_SECONDS)
    return Written(delivery, ex, fields)


def write_outcomes(batch: list[Written]) -> list[str]:
    """Close the attempts and move the deliveries on, in one transaction; returns each delivery's state.
    A delivery is moved only while it is still this send's (same attempt count, still ``sending`` or the
    ``unknown`` the sweeper set while the answer was on its way): the rows are locked first (in id order,
    so two batches never deadlock) and the fence checked on what they hold."""
    fenced = (Delivery.State.SENDING, Delivery.State.UNKNOWN)
    with transaction.atomic():
        held = _lock([w.delivery.pk for w in batch])
        set_many(
            Attempt, [(w.exchange.attempt.pk, closing(w.exchange.result, w.exchange.outcome)) for w in batch]
        )
        mine = {
            w.delivery.pk
            for w in batch
            if held.get(w.delivery.pk, (None, ""))[0] == w.delivery.attempts
            and held[w.delivery.pk][1] in fenced
        }
        set_many(Delivery, [(w.delivery.pk, w.fields) for w in batch if w.delivery.pk in mine])
    states = []
    for w in batch:
        if w.delivery.pk in mine:
            states.append(w.fields["state"])
            _log_outcome(w)
        else:
            # The lease ran out and the sweeper queued it again (an idempotent request): leave that be.
            log.warning(
                "delivery %s: answer came after the lease was resolved; kept as the sweeper left it",
                w.delivery.uuid,
            )
            states.append(held.get(w.delivery.pk, (None, "deleted"))[1])
    return states


def _lock(ids: list[int]) -> dict[int, tuple[int, str]]:
    """Lock the deliveries (in id order, so two batches never deadlock): {id: (attempts, state)}. On
    PostgreSQL one statement compiled once (the ORM's compiling cost more than the query)."""
    if connection.vendor != "postgresql":  # (SQLite: the transaction holds the database's write lock)
        rows = Delivery.objects.filter(pk__in=ids).values_list("pk", "attempts", "state")
        return {pk: (attempts, state) for pk, attempts, state in rows}
    with connection.cursor() as cursor:
        cursor.execute(_lock_sql(), [ids])
        return {pk: (attempts, state) for pk, attempts, state in cursor.fetchall()}


@functools.cache
def _lock_sql() -> str:
    quote, meta = connection.ops.quote_name, Delivery._meta
    key, attempts, state = (quote(meta.get_field(name).column) for name in ("id", "attempts", "state"))
    return (
        f"SELECT {key}, {attempts}, {state} FROM {quote(meta.db_table)} "  # noqa: S608 (names from the model)
        f"WHERE {key} = ANY(%s) ORDER BY {key} FOR UPDATE"
    )


def _log_outcome(w: Written) -> None:
    """A line per outcome; a success at DEBUG (its attempt row is the record; at a thousand deliveries a
    second, a line for each would flood the log), anything else at INFO."""
    level = logging.DEBUG if w.fields["state"] == Delivery.State.SUCCEEDED else logging.INFO
    if not log.isEnabledFor(level):
        return
    delivery, result = w.delivery, w.exchange.result
    log.log(
        level,
        "delivery %s attempt %s: %s %s -> %s (%s)",
        delivery.uuid,
        delivery.attempts,
        delivery.method,
        result.url,
        result.status if result.status is not None else result.error_kind,
        w.fields["state"],
    )


def pause_credential(credential: Credential, ex: Exchange) -> None:
    """A 429: stop every send of this credential until Retry-After (or the retry time chosen)."""
    now = timezone.now()
    header = next((v for k, v in ex.result.headers.items() if k.lower() == "retry-after"), None)
    seconds = retry_after_seconds(header, now)
    if seconds is None:
        retry_at = ex.outcome.retry_at or now + timedelta(seconds=RETRY_AFTER_MIN)
        seconds = (retry_at - now).total_seconds()
    seconds = min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, seconds))
    until = now + timedelta(seconds=seconds)
    Credential.objects.filter(pk=credential.pk).filter(
        Q(paused_until__isnull=True) | Q(paused_until__lt=until)
    ).update(paused_until=until)
    ratelimit.hold(credential, seconds)
    log.warning("credential %s: HTTP 429 from Clazar; paused for %.0f s", credential.uuid, seconds)


def breaker(ctx: Context, ex: Exchange) -> bool:
    """Count consecutive server-side failures; auto-pause the destination at the threshold (returns
    True then). Any answer that is not a server-side failure (2xx, 4xx, 429) resets the count."""
    dest_id = ctx.destination.pk
    if not ex.outcome.counts_for_breaker:
        if ex.result.status is not None and ctx.failing:
            Destination.objects.filter(pk=dest_id, failures__gt=0).update(failures=0)
            ctx.failing = False
        return False
    ctx.failing = True
    Destination.objects.filter(pk=dest_id).update(failures=F("failures") + 1)
    failures = Destination.objects.values_list("failures", flat=True).get(pk=dest_id)
    return failures >= settings.DELIVERY_BREAKER_FAILURES and trip(dest_id, failures, ex.outcome.message)


def trip(destination_id: int, failures: int, message: str) -> bool:
    """Auto-pause an active destination with the reason and schedule the first probe."""
    now = timezone.now()
    reason = (
        f"Auto-paused after {failures} server-side failures in a row; deliveries resume by themselves when "
        f"a test delivery succeeds (tried every {settings.DELIVERY_PROBE_SECONDS} s). The last error: "
        f"{message}"
    )[:5000]
    paused = Destination.objects.filter(pk=destination_id, status=Destination.Status.ACTIVE).update(
        status=Destination.Status.AUTO_PAUSED,
        paused_reason=reason,
        probe_at=now + timedelta(seconds=settings.DELIVERY_PROBE_SECONDS),
        updated_at=now,
    )
    if paused:
        dest = Destination.objects.get(pk=destination_id)
        audit.record(
            None, "destination.auto_pause", dest, extra={"failures": failures, "reason": message[:500]}
        )
        log.warning("destination %s auto-paused after %s failures: %s", dest.uuid, failures, message)
    return bool(paused)


def finished(delivery_id: int, ctx: Context | None = None) -> None:
    """A delivery reached a final state: write its response record when the destination wants them."""
    if ctx is None:
        responses.write(delivery_id)
    elif ctx.responses:
        ctx.responder.submit(delivery_id)
