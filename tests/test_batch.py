"""Group commit of the deliver threads' writes (flows.delivery.batch): each thread's write is committed
before it goes on, batches form when threads overlap, a failed batch fails each of its writes, and the
engine with a pool of threads keeps "the attempt is committed before the request leaves" for every send,
as seen by Clazar's side of the socket."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connections
from django.utils import timezone

from clazar_dest.simulators import clazar as clazar_sim_module
from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from flows import delivery, records
from flows.bulk import _converter, insert_many, insert_rows, set_many
from flows.delivery.batch import GroupCommit
from flows.models import Attempt, Delivery, Destination, Nexset, Record
from tests.factories import CredentialFactory, DestinationFactory, NexsetFactory

S = Delivery.State


def in_threads(count: int, work) -> list:
    results: list = [None] * count
    gate = threading.Barrier(count)

    def run(i: int) -> None:
        gate.wait(10)
        try:
            results[i] = work(i)
        except Exception as exc:  # returned for the test to look at
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


WRITER = pytest.mark.parametrize("writer", [False, True], ids=["leader", "writer-thread"])


@WRITER
def test_each_thread_gets_its_own_result_and_overlapping_writes_share_a_batch(writer):
    seen: list[list[int]] = []

    def write_many(items: list[int]) -> list[int]:
        seen.append(items)
        time.sleep(0.02)  # a slow commit: the others queue up behind it
        return [item * 10 for item in items]

    group = GroupCommit(write_many, writer=writer)
    results = in_threads(24, group.submit)
    group.close()
    assert results == [i * 10 for i in range(24)]
    assert sorted(i for batch in seen for i in batch) == list(range(24))  # each write exactly once
    assert group.batches == len(seen) < 24  # and some batches held several


def test_a_lingering_writer_waits_for_company_and_writes_at_once_when_the_batch_is_full():
    seen: list[list[int]] = []

    def write_many(items: list[int]) -> list[int]:
        seen.append(items)
        return items

    group = GroupCommit(write_many, writer=True, linger=0.5, fill=100)
    started = time.monotonic()
    in_threads(12, group.submit)  # without the linger the first write would go alone
    assert len(seen) == 1 and sorted(seen[0]) == list(range(12))
    assert time.monotonic() - started >= 0.4  # it waited for more, up to the linger
    full = GroupCommit(write_many, writer=True, linger=30, fill=12)
    started = time.monotonic()
    assert in_threads(12, full.submit) == list(range(12))
    assert time.monotonic() - started < 10  # full: written without waiting out the linger
    group.close()
    full.close()


@WRITER
def test_when_a_batch_fails_each_write_is_tried_again_alone_so_only_a_failing_one_fails(writer):
    calls: list[list[int]] = []

    def write_many(items: list[int]) -> list[int]:
        calls.append(items)
        time.sleep(0.02)
        if 3 in items:  # say, the thread writing this one lost its database connection
            raise RuntimeError("the database went away")
        return items

    group = GroupCommit(write_many, writer=writer)

    def submit(i: int) -> int:
        time.sleep(0 if i == 0 else 0.005)  # 0 writes alone; the others queue up behind it together
        return group.submit(i)

    results = in_threads(8, submit)
    group.close()
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
    assert isinstance(results[3], RuntimeError) and "went away" in str(results[3])
    assert any(len(batch) > 1 and 3 in batch for batch in calls)  # it failed a shared batch first
    assert [3] in calls  # then alone


def on_a_loop(count: int, group: GroupCommit, delay=lambda i: 0.0) -> list:
    """``count`` coroutines on one event loop, each handing its number in (after ``delay(i)`` s)."""

    async def one(i: int):
        await asyncio.sleep(delay(i))
        return await group.asubmit(i)

    async def every() -> list:
        return await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)

    # In a thread of its own, as a deliver run's loop (the browser tests leave a loop on the main thread).
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, every()).result(60)


def test_coroutines_on_an_event_loop_get_their_own_results_from_shared_batches():
    seen: list[list[int]] = []
    writer_threads: set[str] = set()

    def write_many(items: list[int]) -> list[int]:
        seen.append(items)
        writer_threads.add(threading.current_thread().name)
        time.sleep(0.02)
        return [item * 10 for item in items]

    group = GroupCommit(write_many, writer=True)
    results = on_a_loop(40, group)
    group.close()
    assert results == [i * 10 for i in range(40)]
    assert sorted(i for batch in seen for i in batch) == list(range(40))
    assert group.batches == len(seen) < 40 and writer_threads == {"group-commit"}


def test_on_an_event_loop_a_failed_batch_is_written_again_alone_and_only_the_bad_write_fails():
    calls: list[list[int]] = []

    def write_many(items: list[int]) -> list[int]:
        calls.append(items)
        time.sleep(0.02)
        if 3 in items:
            raise RuntimeError("the database went away")
        return items

    group = GroupCommit(write_many, writer=True)
    results = on_a_loop(8, group, delay=lambda i: 0 if i == 0 else 0.005)
    group.close()
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
    assert isinstance(results[3], RuntimeError) and "went away" in str(results[3])
    assert any(len(batch) > 1 and 3 in batch for batch in calls) and [3] in calls


@pytest.mark.django_db
def test_set_many_updates_rows_by_key_with_different_fields_and_typed_values():
    dest = DestinationFactory()
    rows = [Delivery.objects.create(destination=dest, method="POST", url="https://x/") for _ in range(3)]
    attempt = Attempt.objects.create(
        delivery=rows[0], number=1, started_at=timezone.now(), method="POST", url="https://x/"
    )
    later = timezone.now() + timedelta(minutes=5)
    set_many(
        Delivery,
        [
            (rows[0].pk, {"state": S.SUCCEEDED, "created_object_id": "po-1", "finished_at": later}),
            (rows[1].pk, {"state": S.RETRY_SCHEDULED, "next_attempt_at": later, "last_status": 503}),
            (rows[2].pk, {"state": S.SUCCEEDED, "created_object_id": "po-3", "finished_at": later}),
        ],
    )
    set_many(Attempt, [(attempt.pk, {"response_headers": {"X-Request-Id": "r-1"}, "status_code": 201})])
    got = {d.pk: d for d in Delivery.objects.filter(pk__in=[r.pk for r in rows])}
    assert (got[rows[0].pk].state, got[rows[0].pk].created_object_id) == (S.SUCCEEDED, "po-1")
    assert got[rows[0].pk].finished_at == later
    assert (got[rows[1].pk].state, got[rows[1].pk].last_status) == (S.RETRY_SCHEDULED, 503)
    assert got[rows[1].pk].next_attempt_at == later and got[rows[1].pk].created_object_id == ""
    assert got[rows[2].pk].created_object_id == "po-3"
    attempt.refresh_from_db()
    assert (attempt.response_headers, attempt.status_code) == ({"X-Request-Id": "r-1"}, 201)


@pytest.mark.django_db
def test_insert_many_stores_every_field_as_save_would_and_gives_each_object_its_id():
    dest = DestinationFactory()
    now = timezone.now()
    rows = [
        Delivery(destination=dest, method="POST", url="https://x/a", body=b'{"name": "\xc3\xa9"}'),
        Delivery(
            destination=dest,
            method="PUT",
            url="https://x/b",
            body=None,
            target_id="po-1",
            next_attempt_at=now,
        ),
        Delivery(destination=dest, state=S.FAILED, method="POST", url="", last_error='it\'s "bad"\n{x}'),
    ]
    insert_many(Delivery, rows)
    assert all(row.pk for row in rows) and len({row.pk for row in rows}) == 3
    stored = {d.pk: d for d in Delivery.objects.filter(destination=dest)}
    for row in rows:
        got = stored[row.pk]  # each id belongs to its own object
        assert (got.url, got.method, got.state, got.target_id) == (
            row.url,
            row.method,
            row.state,
            row.target_id,
        )
        assert (bytes(got.body) if got.body is not None else None) == row.body
        assert got.uuid == row.uuid and got.idempotency_key == str(row.idempotency_key)
        assert got.created_at is not None and got.last_error == row.last_error
    assert stored[rows[1].pk].next_attempt_at == now
    attempts = [
        Attempt(
            delivery=rows[0],
            number=1,
            started_at=now,
            method="POST",
            url="https://x/a",
            request_headers={"X-Trace": "a'b\"c"},
        ),
        Attempt(delivery=rows[1], number=1, started_at=now, method="PUT", url="https://x/b"),
    ]
    insert_many(Attempt, attempts)
    first = Attempt.objects.get(pk=attempts[0].pk)
    assert first.request_headers == {"X-Trace": "a'b\"c"} and first.outcome == Attempt.Outcome.SENDING
    assert Attempt.objects.get(pk=attempts[1].pk).response_headers == {}


@pytest.mark.django_db
def test_insert_rows_fills_what_a_row_leaves_out_as_a_new_object_would_and_returns_the_ids_in_order():
    dest = DestinationFactory()
    before = timezone.now()
    rows = [
        {"destination_id": dest.pk, "method": "POST", "url": f"https://x/{i}", "body": b'{"n": "\xc3\xa9"}'}
        for i in range(3)
    ]
    ids = insert_rows(Delivery, rows)
    assert len(set(ids)) == 3
    stored = {d.pk: d for d in Delivery.objects.filter(destination=dest)}
    for key, row in zip(ids, rows, strict=True):
        got = stored[key]  # each id belongs to its own row, in order
        assert (got.url, bytes(got.body)) == (row["url"], row["body"])
        assert (got.state, got.attempts, got.target_id, got.last_error) == (S.QUEUED, 0, "", "")
        assert got.created_at >= before and got.updated_at >= before and got.finished_at is None
    # Defaults made per row (as a new object's): every delivery its own uuid and idempotency key.
    assert len({d.uuid for d in stored.values()}) == 3
    assert len({d.idempotency_key for d in stored.values()}) == 3
    assert insert_rows(Delivery, []) == []


AWARE = datetime(2026, 11, 26, 9, 30, 15, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("model", "name", "value"),
    [
        (Delivery, "state", S.SUCCEEDED),
        (Delivery, "url", "https://api.clazar.io/private_offers/"),
        (Delivery, "target_id", 42),  # not a string: the field makes it one
        (Delivery, "last_status", 503),
        (Delivery, "last_status", "503"),  # not an int: the field makes it one
        (Delivery, "attempts", True),  # a bool in an integer column: the field makes it 1
        (Delivery, "finished_at", AWARE),
        (Delivery, "destination", 7),
        (Attempt, "duration_ms", 12),
        (Attempt, "outcome", Attempt.Outcome.SUCCEEDED),
    ],
)
def test_a_value_goes_into_the_json_document_as_the_field_prepares_it(model, name, value):
    field = model._meta.get_field(name)
    expected = field.get_prep_value(value)
    expected = expected.isoformat() if isinstance(expected, datetime) else expected
    got = _converter(field)(value)
    assert (got, type(got)) == (expected, type(expected))


def creates_over_the_simulator(settings, sim, count: int, **config) -> Destination:
    """An active Create Private Offer destination over ``count`` new records, sent to ``sim`` (50 ms a
    call, no rate limit)."""
    settings.CLAZAR_API_BASES = ["https://api.clazar.io", sim.url]
    sim.add_fault("latency", seconds=0.05)
    credential = CredentialFactory(
        api_base=sim.url, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET, rate_limit=100_000
    )
    nexset = NexsetFactory()
    records.append(
        nexset.pk, [{"name": f"Offer {i}", "listing": "lst-1", "buyer": f"{i:012d}"} for i in range(count)]
    )
    return DestinationFactory(
        nexset=nexset,
        credential=credential,
        config={"mode": "template", "template": "create_private_offer", **config},
        status=Destination.Status.ACTIVE,
    )


@pytest.mark.django_db(transaction=True)
def test_with_a_pool_of_threads_every_attempt_is_committed_before_clazar_sees_the_request(
    settings, clazar_sim, monkeypatch
):
    dest = creates_over_the_simulator(settings, clazar_sim, 60)
    # On Clazar's side, before the request is handled: is its attempt committed (seen from another
    # database connection) and still open?
    checked: list[tuple[str, bool]] = []
    serve = clazar_sim_module._Handler._serve

    def checking(handler) -> None:
        key = handler.headers.get("Idempotency-Key")
        if key:
            try:
                sent = Delivery.objects.filter(idempotency_key=key).values_list("pk", "attempts").first()
                ok = (
                    sent is not None
                    and Attempt.objects.filter(
                        delivery_id=sent[0], number=sent[1], outcome=Attempt.Outcome.SENDING
                    ).exists()
                )
            finally:
                connections.close_all()
            checked.append((key, ok))
        serve(handler)

    monkeypatch.setattr(clazar_sim_module._Handler, "_serve", checking)
    tally = delivery.process_due(dest.pk, threads=8, lease_seconds=30)
    assert tally["claimed"] == 60
    assert dict(Counter(dest.deliveries.values_list("state", flat=True))) == {S.SUCCEEDED: 60}
    assert len(checked) == 60 and all(ok for _, ok in checked)
    assert len(clazar_sim.objects("private_offers")) == 60
    # Each delivery has its one attempt, closed with Clazar's answer.
    assert (
        list(Attempt.objects.filter(delivery__destination=dest).values_list("outcome", flat=True))
        == [Attempt.Outcome.SUCCEEDED] * 60
    )


@pytest.mark.django_db(transaction=True)
def test_a_pool_of_threads_writes_every_response_once_through_few_database_connections(settings, clazar_sim):
    dest = creates_over_the_simulator(settings, clazar_sim, 48, response_webhook=True)
    peak = [0]
    threads_peak = [0]
    done = threading.Event()
    postgres = connections["default"].vendor == "postgresql"

    def ours() -> int:  # threads, without the in-process simulator's (one per connection it serves)
        return sum(1 for thread in threading.enumerate() if "process_request" not in thread.name)

    def watch() -> None:  # how many threads, and connections to the database (PostgreSQL), while it sends
        try:
            while not done.is_set():
                threads_peak[0] = max(threads_peak[0], ours())
                if postgres:
                    with connections["default"].cursor() as cursor:
                        cursor.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        )
                        peak[0] = max(peak[0], cursor.fetchone()[0])
                time.sleep(0.01)
        finally:
            connections.close_all()

    before = ours()
    watcher = threading.Thread(target=watch)
    watcher.start()
    settings.DELIVERY_THREADS = 16  # requests in flight, and the connections kept alive to Clazar
    try:
        tally = delivery.process_due(dest.pk, lease_seconds=30)
    finally:
        done.set()
        watcher.join()
    assert tally["claimed"] == 48
    responses_nexset = Nexset.objects.get(feeding_destination=dest)
    refs = list(Record.objects.filter(nexset=responses_nexset).values_list("source_ref", flat=True))
    ids = set(dest.deliveries.values_list("pk", flat=True))
    assert sorted(refs) == sorted(f"delivery:{pk}" for pk in ids)  # each final response once
    created = {o["id"] for o in clazar_sim.objects("private_offers")}
    assert {r.data["id"] for r in Record.objects.filter(nexset=responses_nexset)} == created
    # The run kept its connections to Clazar alive: not a new connection per request.
    assert clazar_sim.connections_accepted <= 16 + 1, clazar_sim.connections_accepted  # (+ the token call)
    # 16 requests in flight without a thread each: the watcher, the run's loop, its three writers, its
    # four database threads and the loop's name lookups.
    assert threads_peak[0] - before <= 11, threads_peak[0] - before
    if postgres:
        # The test's own, the watcher's, the run's loop and writers: not one per request in flight.
        assert 0 < peak[0] <= 8, peak[0]


@pytest.mark.django_db(transaction=True)
def test_the_next_chunk_is_planned_while_the_current_one_is_still_being_sent(settings, clazar_sim):
    """Planning only when a claim found nothing left the sends idle while a chunk was planned. A run now
    plans the next chunk on a database thread once half a chunk was claimed: chunk two exists before
    chunk one's last request goes out, and every record still goes out once, in order of planning."""
    settings.DELIVERY_PLAN_CHUNK = 20
    dest = creates_over_the_simulator(settings, clazar_sim, 100)
    clazar_sim.add_fault("latency", seconds=0.2)
    tally = delivery.process_due(dest.pk, threads=8, lease_seconds=30)
    assert tally["claimed"] == 100
    assert dict(Counter(dest.deliveries.values_list("state", flat=True))) == {S.SUCCEEDED: 100}
    rows = list(dest.deliveries.order_by("pk").values_list("pk", "created_at"))
    first_chunk, second_chunk = [pk for pk, _ in rows[:20]], rows[20][1]
    last_sent = Attempt.objects.filter(delivery_id__in=first_chunk).order_by("-started_at")[0].started_at
    assert second_chunk < last_sent
    names = [e["json"]["name"] for e in clazar_sim.requests_log(method="POST", path="/private_offers/")]
    assert sorted(names) == sorted(f"Offer {i}" for i in range(100))


@pytest.mark.django_db(transaction=True)
def test_a_send_opens_its_attempt_while_the_requests_in_flight_are_all_taken_and_never_exceeds_them(
    settings, clazar_sim
):
    """A send waited for a place among the requests in flight before it opened its attempt, so every
    request waited for the commit of its attempt after the previous one ended. Now the attempt is opened
    while the run's ``threads`` requests are all in flight (its request goes out as one ends), and Clazar
    still never sees more than ``threads`` requests of the run at once."""
    dest = creates_over_the_simulator(settings, clazar_sim, 40)
    clazar_sim.add_fault("latency", seconds=0.15)
    tally = delivery.process_due(dest.pk, threads=4, lease_seconds=30)
    assert tally["claimed"] == 40
    assert dict(Counter(dest.deliveries.values_list("state", flat=True))) == {S.SUCCEEDED: 40}
    calls = clazar_sim.requests_log(method="POST", path="/private_offers/")
    spans = [(e["time"], e["time"] + e["duration"]) for e in calls]
    assert len(spans) == 40

    def in_flight(at: float) -> int:
        return sum(1 for start, end in spans if start <= at < end)

    assert max(in_flight(start) for start, _ in spans) == 4
    # Each attempt is open from its opening until Clazar finished its request: up to one more than the
    # requests in flight (a pool of 4 opens 1 ahead), where before it was at most as many.
    ended = {e["json"]["name"]: e["time"] + e["duration"] for e in calls}
    attempts = Attempt.objects.filter(delivery__destination=dest).values_list("started_at", "request_body")
    opened = [(at.timestamp(), ended[json.loads(body)["name"]]) for at, body in attempts]
    assert max(sum(1 for start, end in opened if start <= at < end) for at, _ in opened) == 5
