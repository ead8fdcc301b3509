"""The delivery engine with real Celery worker and beat processes over the configured database and broker:
SQLite + the filesystem transport by default, PostgreSQL + Redis with DATABASE_URL and REDIS_URL. The
simulator's request log is the witness of what reached Clazar."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import Client
from django.urls import reverse

from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from flows import activation, nexsets, records, responses, roles
from flows.models import Attempt, AuditEvent, Credential, Delivery, Destination
from flows.tasks import deliver
from tests.factories import CredentialFactory, DestinationFactory, NexsetFactory, UserFactory
from tests.test_webhook import headers as signed

pytestmark = pytest.mark.slow

S = Delivery.State
SETTLED = (S.SUCCEEDED, S.FAILED, S.EXHAUSTED, S.NEEDS_ATTENTION)
CREATE = {"mode": "template", "template": "create_private_offer"}
UPDATE = {"mode": "template", "template": "update_private_offer", "id_value": "{id}"}
PUBLISH = {"mode": "template", "template": "publish_private_offer", "id_value": "{id}"}
ENGINE_ENV = {
    "CELERY_SWEEP_SECONDS": "1",
    "CLAZAR_CONNECT_TIMEOUT": "2",
    "CLAZAR_READ_TIMEOUT": "3",
    "CLAZAR_DEADLINE": "5",
    "DELIVERY_LEASE_SECONDS": "8",
    "DELIVERY_THREADS": "4",
    "DELIVERY_PROBE_SECONDS": "1",
    "DELIVERY_SLICE_SECONDS": "20",
}


def offers(n: int, start: int = 1) -> list[dict]:
    return [
        {"name": f"Offer {i}", "listing": "lst-1", "buyer": f"1234567890{i:02d}"}
        for i in range(start, start + n)
    ]


@pytest.fixture
def sim(settings, clazar_sim):
    settings.CLAZAR_API_BASES = [*settings.CLAZAR_API_BASES, clazar_sim.url]
    return clazar_sim


@pytest.fixture
def user(transactional_db):
    return UserFactory(role=roles.OPERATOR)


@pytest.fixture
def engine(start_proc, sim):
    """engine(workers=1, **env) starts beat and that many solo workers; returns the workers."""

    def start(workers: int = 1, **env: str) -> list:
        full = {**ENGINE_ENV, "CLAZAR_SIMULATOR_URL": sim.url, **env}
        procs = [worker(start_proc, f"w{i}", full) for i in range(workers)]
        start_proc("beat", "celery", "-A", "clazar_dest", "beat", "-l", "info", env=full)
        for proc in procs:
            proc.wait_for("ready", timeout=60)
        return procs

    return start


def worker(start_proc, name: str, env: dict):
    return start_proc(
        name,
        "celery",
        "-A",
        "clazar_dest",
        "worker",
        "--pool",
        "solo",
        "-n",
        f"{name}@%h",
        "-l",
        "info",
        env=env,
    )


@pytest.fixture
def make(sim, transactional_db):
    credential = CredentialFactory(
        api_base=sim.url, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET, rate_limit=100_000
    )

    def build(config: dict, rows: list[dict], **extra) -> Destination:
        nexset = extra.pop("nexset", None) or NexsetFactory()
        if rows:
            records.append(nexset.pk, rows)
        return DestinationFactory(nexset=nexset, credential=credential, config=config, **extra)

    return build


def wait_until(check: Callable[[], bool], what: str, procs: list, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    logs = "\n".join(p.output()[-2500:] for p in procs)
    raise AssertionError(f"{what} did not happen within {timeout}s; workers said:\n{logs}")


def settled(dest: Destination, total: int) -> Callable[[], bool]:
    return lambda: dest.deliveries.filter(is_test=False, state__in=SETTLED).count() >= total


def states(dest: Destination) -> dict[str, int]:
    return dict(Counter(dest.deliveries.filter(is_test=False).values_list("state", flat=True)))


def creates(sim) -> list[dict]:
    return sim.requests_log(method="POST", path="/private_offers/")


def test_two_workers_deliver_every_record_once_and_a_duplicate_wake_up_does_nothing(engine, make, sim, user):
    sim.add_fault("latency", seconds=0.02)
    dest = make(CREATE, offers(60))
    procs = engine(workers=2)
    activation.activate(dest.pk, user=user)
    wait_until(settled(dest, 60), "60 deliveries", procs)
    assert states(dest) == {S.SUCCEEDED: 60}
    names = Counter(e["json"]["name"] for e in creates(sim))
    assert len(names) == 60 and set(names.values()) == {1}
    ids = set(dest.deliveries.values_list("created_object_id", flat=True))
    assert ids == {o["id"] for o in sim.api.objects("private_offers")}
    for _ in range(3):
        deliver.delay(dest.pk)
    wait_until(
        lambda: sum(p.output().count(f"deliver {dest.pk}: nothing due") for p in procs) >= 3,
        "three empty wake-ups",
        procs,
        timeout=30,
    )
    assert len(creates(sim)) == 60


def test_a_backlog_gets_every_free_worker_at_once_not_at_the_next_sweep(engine, make, sim, user):
    """A run that claims a full batch wakes one more worker for its destination; with the sweeper an hour
    away, the second worker can only have joined that way. Each record still goes out once."""
    sim.add_fault("latency", seconds=0.05)
    dest = make(CREATE, offers(400))
    procs = engine(workers=2, CELERY_SWEEP_SECONDS="3600", DELIVERY_PLAN_CHUNK="50")
    activation.activate(dest.pk, user=user)
    wait_until(settled(dest, 400), "400 deliveries", procs)
    assert states(dest) == {S.SUCCEEDED: 400}
    names = Counter(e["json"]["name"] for e in creates(sim))
    assert len(names) == 400 and set(names.values()) == {1}
    sent_some = re.compile(rf"deliver {dest.pk}: \{{[^}}]*'claimed': [1-9]")
    wait_until(lambda: all(sent_some.search(p.output()) for p in procs), "both workers sending", procs, 10)


def test_a_worker_killed_mid_run_loses_nothing_and_creates_nothing_twice(engine, make, sim, start_proc, user):
    sim.add_fault("latency", seconds=0.5)
    dest = make(CREATE, offers(30))
    [first] = engine(workers=1)
    activation.activate(dest.pk, user=user)
    wait_until(lambda: len(creates(sim)) >= 8, "eight creates", [first])
    os.killpg(first.popen.pid, signal.SIGKILL)
    killed_at = len(creates(sim))
    second = worker(start_proc, "w9", {**ENGINE_ENV, "CLAZAR_SIMULATOR_URL": sim.url})
    second.wait_for("ready", timeout=60)
    wait_until(settled(dest, 30), "every delivery settled", [first, second])
    final = states(dest)
    unknown = dest.deliveries.filter(attempt_rows__outcome=Attempt.Outcome.UNKNOWN).distinct().count()
    print(f"killed after {killed_at} creates; ended {final}; {unknown} went through an unknown outcome")
    assert set(final) <= {S.SUCCEEDED, S.NEEDS_ATTENTION} and sum(final.values()) == 30
    created = Counter(o["name"] for o in sim.api.objects("private_offers"))
    assert set(created.values()) == {1}  # nothing created twice
    for row in dest.deliveries.all():
        name = row.items.get().record.data["name"]
        if row.state == S.SUCCEEDED:
            assert created[name] == 1 and row.created_object_id
        else:  # not found in Clazar after the crash: left for a person, never re-sent blindly
            assert name not in created and "Send again" in row.last_error
    assert unknown >= 1
    assert killed_at < 30 and len(creates(sim)) == sum(created.values())


def test_a_429_pauses_the_credential_until_retry_after(engine, make, sim, user):
    sim.configure(rate_limit=4, rate_window=3)
    dest = make(CREATE, offers(10))
    procs = engine()
    activation.activate(dest.pk, user=user)
    wait_until(settled(dest, 10), "10 deliveries", procs)
    assert states(dest) == {S.SUCCEEDED: 10}
    log = creates(sim)
    limited = [e for e in log if e["status"] == 429]
    assert limited and len(log) - len(limited) == 10
    # After a 429 only the requests already in flight arrive; nothing new starts before Retry-After (>= 1 s).
    for hit in limited:
        assert not [e for e in log if hit["time"] + 0.3 < e["time"] < hit["time"] + 0.9]
    assert Credential.objects.get(pk=dest.credential_id).paused_until is not None


def test_a_token_that_expires_mid_run_is_refreshed_and_nothing_is_sent_twice(engine, make, sim, user):
    # Enough records and latency that most are still to send when the tokens expire (4 threads at 0.1 s
    # each send 40 a second at most).
    sim.add_fault("latency", seconds=0.1)
    dest = make(CREATE, offers(80))
    procs = engine()
    activation.activate(dest.pk, user=user)
    wait_until(lambda: len(creates(sim)) >= 5, "five creates", procs)
    sim.api.expire_tokens()
    wait_until(settled(dest, 80), "80 deliveries", procs)
    assert states(dest) == {S.SUCCEEDED: 80}
    assert any(e["status"] == 401 for e in creates(sim))
    assert len(sim.requests_log(path="/authenticate/")) >= 2
    assert sorted(o["name"] for o in sim.api.objects("private_offers")) == sorted(
        r["name"] for r in offers(80)
    )


def test_a_put_answered_503_is_retried_and_then_succeeds(engine, make, sim, user):
    seeded = sim.seed(private_offers=offers(3))["private_offers"]
    sim.add_fault("error", route="update_private_offer", status=503, times=2)
    dest = make(UPDATE, [{"id": o["id"], "price": "9.99"} for o in seeded])
    procs = engine()
    activation.activate(dest.pk, user=user)
    wait_until(settled(dest, 3), "3 deliveries", procs)
    assert states(dest) == {S.SUCCEEDED: 3}
    statuses = [e["status"] for e in sim.requests_log(method="PUT")]
    assert statuses.count(503) == 2 and statuses.count(200) == 3
    assert {o["price"] for o in sim.api.objects("private_offers")} == {"9.99"}


def test_a_create_applied_then_dropped_is_reconciled_and_never_sent_again(engine, make, sim, user):
    sim.add_fault("drop", route="create_private_offer", apply=True)
    dest = make(CREATE, offers(5))
    procs = engine()
    activation.activate(dest.pk, user=user)
    wait_until(settled(dest, 5), "5 deliveries", procs)
    assert states(dest) == {S.SUCCEEDED: 5}
    assert len(creates(sim)) == 5 and len(sim.api.objects("private_offers")) == 5
    assert sim.requests_log(method="GET", path="/private_offers/")  # the lookup


def test_deactivate_stops_new_sends_and_in_flight_requests_are_recorded(engine, make, sim, user):
    sim.add_fault("latency", seconds=0.3)
    dest = make(CREATE, offers(80))
    procs = engine()
    activation.activate(dest.pk, user=user)
    wait_until(lambda: len(creates(sim)) >= 8, "eight creates", procs)
    activation.deactivate(dest.pk, user=user)
    time.sleep(1.5)
    sent = len(creates(sim))
    time.sleep(2.5)
    assert len(creates(sim)) == sent < 80
    assert not dest.deliveries.filter(state=S.SENDING).exists()
    assert states(dest) == {S.SUCCEEDED: sent, S.QUEUED: 80 - sent}
    assert not Attempt.objects.filter(delivery__destination=dest, outcome=Attempt.Outcome.SENDING).exists()


def test_records_arriving_for_an_active_destination_are_delivered_without_a_click(engine, make, sim, user):
    feed, secret = nexsets.create_webhook("Offers feed", AnonymousUser())
    dest = make(CREATE, [], nexset=feed)
    procs = engine()
    activation.activate(dest.pk, user=user)
    body = b'{"name": "Offer 1", "listing": "lst-1", "buyer": "123456789001"}'
    response = Client().post(
        reverse("hook", args=[feed.code]),
        data=body,
        content_type="application/json",
        headers=signed(secret, body),
    )
    assert response.status_code == 202
    wait_until(lambda: len(creates(sim)) == 1, "the webhook record delivered", procs, timeout=30)
    records.append(feed.pk, offers(1, start=2))
    wait_until(lambda: len(creates(sim)) == 2, "the appended record delivered", procs, timeout=30)
    assert sorted(e["json"]["name"] for e in creates(sim)) == ["Offer 1", "Offer 2"]


def test_created_offers_flow_through_the_response_nexset_into_publish(engine, make, sim, user):
    creator = make({**CREATE, "response_webhook": True}, offers(5))
    feed = responses.nexset_for(creator)
    publisher = make(PUBLISH, [], nexset=feed)
    procs = engine()
    activation.activate(publisher.pk, user=user, confirm="0")
    activation.activate(creator.pk, user=user)
    wait_until(settled(publisher, 5), "5 publishes", procs)
    assert states(creator) == {S.SUCCEEDED: 5} and states(publisher) == {S.SUCCEEDED: 5}
    assert {o["status"] for o in sim.api.objects("private_offers")} == {"published"}
    paths = {e["path"] for e in sim.requests_log(method="POST") if e["path"].endswith("/publish/")}
    assert paths == {
        f"/private_offers/{i}/publish/"
        for i in creator.deliveries.values_list("created_object_id", flat=True)
    }
    assert feed.records.count() == 5


def test_sustained_server_errors_auto_pause_and_the_probe_resumes(engine, make, sim, user):
    seeded = sim.seed(private_offers=offers(6))["private_offers"]
    sim.add_fault("error", route="update_private_offer", status=502, times=4)
    dest = make(UPDATE, [{"id": o["id"], "price": "1"} for o in seeded])
    procs = engine(DELIVERY_BREAKER_FAILURES="3", DELIVERY_THREADS="1")
    activation.activate(dest.pk, user=user)
    wait_until(settled(dest, 6), "6 deliveries", procs)
    assert states(dest) == {S.SUCCEEDED: 6}
    actions = list(AuditEvent.objects.filter(object_id=str(dest.uuid)).values_list("action", flat=True))
    assert "destination.auto_pause" in actions and "destination.auto_resume" in actions
    dest.refresh_from_db()
    assert dest.status == Destination.Status.ACTIVE and dest.probe_at is None
