"""The delivery engine against the database and a real simulator over a socket, run in the test's thread
(``threads=0``): planner, claims, ordering, classification into states, reconciliation, the circuit
breaker, the sweeper and the response Nexset. Real worker processes are in test_engine_workers.py."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from flows import delivery, records, responses
from flows.delivery import claims, planner, sweeper
from flows.models import Attempt, Credential, Delivery, DeliveryItem, Destination, Nexset, Record
from tests.factories import CredentialFactory, DestinationFactory, NexsetFactory

pytestmark = pytest.mark.django_db

S = Delivery.State


def offers(n: int, start: int = 1) -> list[dict]:
    return [
        {"name": f"Offer {i}", "listing": "lst-1", "buyer": f"1234567890{i:02d}"}
        for i in range(start, start + n)
    ]


@pytest.fixture
def sim(settings, clazar_sim):
    settings.CLAZAR_API_BASES = ["https://api.clazar.io", clazar_sim.url]
    settings.CLAZAR_CONNECT_TIMEOUT = 2
    settings.CLAZAR_READ_TIMEOUT = 2
    settings.CLAZAR_DEADLINE = 4
    return clazar_sim


@pytest.fixture
def make(sim):
    """make(config, rows): an active destination over a new Nexset holding ``rows``."""
    credential = CredentialFactory(
        api_base=sim.url, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET, rate_limit=100_000
    )

    def build(
        config: dict, rows: list[dict], status: str = Destination.Status.ACTIVE, **extra
    ) -> Destination:
        nexset = NexsetFactory()
        if rows:
            records.append(nexset.pk, rows, [f"row-{i}" for i in range(1, len(rows) + 1)])
        return DestinationFactory(nexset=nexset, credential=credential, config=config, status=status, **extra)

    return build


CREATE = {"mode": "template", "template": "create_private_offer"}
UPDATE = {"mode": "template", "template": "update_private_offer", "id_value": "{id}"}
PUBLISH = {"mode": "template", "template": "publish_private_offer", "id_value": "{id}"}
DELETE = {"mode": "template", "template": "delete_private_offer", "id_value": "{id}"}


def run(dest: Destination, **options) -> dict:
    return dict(delivery.process_due(dest.pk, threads=0, lease_seconds=30, **options))


def states(dest: Destination) -> dict[str, int]:
    out: dict[str, int] = {}
    for state in dest.deliveries.filter(is_test=False).values_list("state", flat=True):
        out[state] = out.get(state, 0) + 1
    return out


def make_due(dest: Destination) -> None:
    dest.deliveries.filter(state=S.RETRY_SCHEDULED).update(next_attempt_at=timezone.now())


# -- planning -------------------------------------------------------------------------------------------


def test_the_planner_turns_records_past_the_cursor_into_deliveries_in_chunks(make):
    dest = make(CREATE, offers(7))
    assert planner.plan(dest.pk, chunk=3) == 7
    dest.refresh_from_db()
    assert dest.cursor == 7
    planned = list(dest.deliveries.order_by("id"))
    assert [d.state for d in planned] == [S.QUEUED] * 7
    assert [d.items.get().record.seq for d in planned] == list(range(1, 8))
    assert json.loads(bytes(planned[0].body)) == offers(1)[0]
    assert planned[0].endpoint == "create_private_offer" and planned[0].method == "POST"
    assert planner.plan(dest.pk) == 0


def test_new_records_are_planned_after_the_cursor_only(make):
    dest = make(CREATE, offers(2))
    planner.plan(dest.pk)
    records.append(dest.nexset_id, offers(3, start=3))
    assert planner.plan(dest.pk) == 3
    assert DeliveryItem.objects.filter(destination=dest).count() == 5


def test_a_record_the_builder_refuses_becomes_a_failed_delivery_with_the_reason(make):
    dest = make(UPDATE, [{"id": "po-1", "name": "A"}, {"name": "no id"}])
    planner.plan(dest.pk)
    failed = dest.deliveries.get(state=S.FAILED)
    assert failed.items.get().record.seq == 2
    assert "Record 2 was not sent" in failed.last_error and "id" in failed.last_error
    assert dest.deliveries.get(state=S.QUEUED).target_id == "po-1"


def test_only_active_destinations_are_planned(make):
    dest = make(CREATE, offers(2), status=Destination.Status.PAUSED)
    assert planner.plan(dest.pk) == 0
    assert not dest.deliveries.exists()


def test_a_deactivated_destination_asks_clazar_for_nothing_not_even_a_token(make, sim):
    dest = make(CREATE, offers(2))
    run(dest, limit=1)  # one sent while active
    dest.credential.__class__.objects.filter(pk=dest.credential_id).update(
        access_token="", token_expires_at=None
    )
    dest.status = Destination.Status.PAUSED
    dest.save(update_fields=["status"])
    sim.clear_requests_log()
    assert run(dest) == {}
    assert sim.requests_log() == []  # no /authenticate/ either


def test_batching_puts_several_records_in_one_delivery(make):
    config = {**CREATE, "mode": "advanced", "method": "POST", "batching": {"enabled": True, "size": 3}}
    dest = make(config, offers(7))
    dest.config["url"] = f"{dest.credential.api_base}/private_offers/"
    dest.save()
    planner.plan(dest.pk)
    sizes = [d.items.count() for d in dest.deliveries.order_by("id")]
    assert sizes == [3, 3, 1]


# -- claims and ordering --------------------------------------------------------------------------------


def test_a_claim_takes_due_deliveries_once_and_a_second_claim_finds_nothing(make):
    dest = make(CREATE, offers(3))
    planner.plan(dest.pk)
    first = claims.claim(dest.pk, 10, 30)
    assert len(first) == 3
    row = Delivery.objects.get(pk=first[0].pk)
    assert (row.state, row.attempts) == (S.SENDING, 1)
    assert row.lease_until > timezone.now()
    assert claims.claim(dest.pk, 10, 30) == []


def test_a_claimed_delivery_carries_every_field_a_sender_needs_as_stored(make):
    """The claim builds its rows from one UPDATE ... RETURNING on PostgreSQL: each field lands where it
    belongs, the attempt is counted and the rows come oldest first, as on SQLite."""
    dest = make(UPDATE, [{"id": "po-7", "v": 1}, {"id": "po-8", "v": 2}])
    planner.plan(dest.pk)
    Delivery.objects.filter(destination=dest, target_id="po-8").update(state=S.RETRY_SCHEDULED, attempts=2)
    claimed = claims.claim(dest.pk, 10, 30)
    assert [d.target_id for d in claimed] == ["po-7", "po-8"]
    for row in claimed:
        stored = Delivery.objects.get(pk=row.pk)
        for name in claims.FIELDS:
            assert getattr(row, name) == getattr(stored, name), name
        assert json.loads(bytes(row.body))["id"] == row.target_id
        assert row.url.endswith(f"/private_offers/{row.target_id}/") and row.method == "PUT"
    assert [d.attempts for d in claimed] == [1, 3]
    assert {d.state for d in claimed} == {S.SENDING}


def test_a_retry_is_claimable_only_when_due(make):
    dest = make(CREATE, offers(1))
    planner.plan(dest.pk)
    dest.deliveries.update(state=S.RETRY_SCHEDULED, next_attempt_at=timezone.now() + timedelta(minutes=5))
    assert claims.claim(dest.pk, 10, 30) == []
    make_due(dest)
    assert len(claims.claim(dest.pk, 10, 30)) == 1


def test_a_claim_takes_the_oldest_due_deliveries_whether_queued_or_due_retries(make):
    """On PostgreSQL the claim picks the oldest of each state apart, then the oldest of both: a limited
    claim still takes the oldest due across both states, and passes over a retry not yet due."""
    dest = make(CREATE, offers(7))
    planner.plan(dest.pk)
    ids = list(dest.deliveries.order_by("pk").values_list("pk", flat=True))
    Delivery.objects.filter(pk__in=ids[0:5:2]).update(state=S.RETRY_SCHEDULED, attempts=1)
    Delivery.objects.filter(pk=ids[0]).update(next_attempt_at=timezone.now() + timedelta(minutes=5))
    assert [d.pk for d in claims.claim(dest.pk, 3, 30)] == ids[1:4]
    assert [d.pk for d in claims.claim(dest.pk, 10, 30)] == ids[4:]
    make_due(dest)
    assert [d.pk for d in claims.claim(dest.pk, 10, 30)] == ids[:1]


def test_two_updates_of_one_object_are_never_claimed_out_of_order(make):
    dest = make(UPDATE, [{"id": "po-1", "v": 1}, {"id": "po-2", "v": 1}, {"id": "po-1", "v": 2}])
    planner.plan(dest.pk)
    first = claims.claim(dest.pk, 10, 30)
    assert sorted(d.target_id for d in first) == ["po-1", "po-2"]
    assert claims.claim(dest.pk, 10, 30) == []  # the second po-1 update waits for the first
    later = timezone.now() + timedelta(minutes=5)
    Delivery.objects.filter(pk__in=[d.pk for d in first]).update(
        state=S.RETRY_SCHEDULED, next_attempt_at=later
    )
    assert claims.claim(dest.pk, 10, 30) == []  # still open: retries keep their place
    Delivery.objects.filter(pk__in=[d.pk for d in first]).update(state=S.SUCCEEDED)
    later = claims.claim(dest.pk, 10, 30)
    assert [json.loads(bytes(d.body))["v"] for d in later] == [2]


# -- sending --------------------------------------------------------------------------------------------


def test_every_record_is_created_once_with_its_id_and_attempt(make, sim):
    dest = make(CREATE, offers(5))
    tally = run(dest)
    assert tally["succeeded"] == 5 and tally["claimed"] == 5
    created = sim.requests_log(method="POST", path="/private_offers/")
    assert sorted(e["json"]["name"] for e in created) == [f"Offer {i}" for i in range(1, 6)]
    done = dest.deliveries.order_by("id").first()
    assert done.created_object_id in {o["id"] for o in sim.api.objects("private_offers")}
    attempt = done.attempt_rows.get()
    assert (attempt.outcome, attempt.status_code, attempt.number) == (Attempt.Outcome.SUCCEEDED, 201, 1)
    assert created[0]["headers"]["idempotency-key"] == done.idempotency_key
    assert run(dest) == {}  # a duplicate wake-up finds nothing


def test_a_put_that_fails_with_503_is_retried_and_then_succeeds(make, sim):
    [offer] = sim.seed(private_offers=[{"name": "A", "listing": "l", "buyer": "123456789012"}])[
        "private_offers"
    ]
    sim.add_fault("error", route="update_private_offer", status=503)
    dest = make(UPDATE, [{"id": offer["id"], "name": "B"}])
    run(dest)
    retry = dest.deliveries.get()
    assert retry.state == S.RETRY_SCHEDULED and "503" in retry.last_error
    assert retry.next_attempt_at > timezone.now()
    make_due(dest)
    run(dest)
    retry.refresh_from_db()
    assert (retry.state, retry.attempts) == (S.SUCCEEDED, 2)
    assert [e["status"] for e in sim.requests_log(method="PUT")] == [503, 200]
    assert sim.api.objects("private_offers")[0]["name"] == "B"


def test_an_exhausted_delivery_retried_by_a_person_gets_a_fresh_round_of_retries(make, sim):
    from flows import actions
    from flows.outcomes import MAX_ATTEMPTS
    from tests.factories import UserFactory

    [offer] = sim.seed(private_offers=[{"name": "A", "listing": "l", "buyer": "123456789012"}])[
        "private_offers"
    ]
    dest = make(UPDATE, [{"id": offer["id"], "name": "B"}])
    sim.add_fault("error", route="update_private_offer", status=503, times=0)
    run(dest)
    tired = dest.deliveries.get()
    dest.deliveries.update(attempts=MAX_ATTEMPTS - 1)
    make_due(dest)
    run(dest)
    tired.refresh_from_db()
    assert tired.state == S.EXHAUSTED

    actions.retry(tired.pk, user=UserFactory(role="Operator"))
    run(dest)
    tired.refresh_from_db()
    assert tired.state == S.RETRY_SCHEDULED, tired.last_error  # not exhausted again at once
    assert tired.attempts == MAX_ATTEMPTS + 1
    sim.clear_faults()
    make_due(dest)
    run(dest)
    tired.refresh_from_db()
    assert tired.state == S.SUCCEEDED


def test_a_validation_error_is_permanent_with_clazars_message(make, sim):
    dest = make(CREATE, [{"name": "No buyer", "listing": "l"}])
    run(dest)
    failed = dest.deliveries.get()
    assert failed.state == S.FAILED and failed.last_status == 400
    assert "buyer" in failed.last_error and failed.finished_at is not None


def test_a_create_applied_then_dropped_is_found_by_a_lookup_and_never_sent_again(make, sim):
    sim.add_fault("drop", route="create_private_offer", apply=True)
    dest = make(CREATE, offers(1))
    run(dest)
    settled = dest.deliveries.get()
    assert settled.state == S.SUCCEEDED
    assert settled.created_object_id == sim.api.objects("private_offers")[0]["id"]
    assert len(sim.requests_log(method="POST", path="/private_offers/")) == 1
    lookup = sim.requests_log(method="GET", path="/private_offers/")
    assert lookup and lookup[0]["query"]["name"] == "Offer 1"
    attempt = settled.attempt_rows.get()
    assert attempt.outcome == Attempt.Outcome.UNKNOWN and "Reconciled" in attempt.error
    assert run(dest) == {}


def test_a_create_with_a_server_error_that_is_not_found_needs_attention_and_is_not_resent(make, sim):
    sim.add_fault("error", route="create_private_offer", status=502)
    dest = make(CREATE, offers(1))
    run(dest)
    stuck = dest.deliveries.get()
    assert stuck.state == S.NEEDS_ATTENTION
    assert "probably not created" in stuck.last_error and "Send again" in stuck.last_error
    make_due(dest)
    run(dest)
    assert len(sim.requests_log(method="POST", path="/private_offers/")) == 1


def test_a_publish_whose_answer_was_lost_is_checked_by_reading_the_offer(make, sim):
    [offer] = sim.seed(private_offers=[{"name": "A", "listing": "l", "buyer": "123456789012"}])[
        "private_offers"
    ]
    sim.add_fault("drop", route="publish_private_offer", apply=True)
    dest = make(PUBLISH, [{"id": offer["id"]}])
    run(dest)
    published = dest.deliveries.get()
    assert published.state == S.SUCCEEDED and published.created_object_id == offer["id"]
    assert sim.requests_log(method="GET", path=f"/private_offers/{offer['id']}/")


def test_a_repeated_delete_that_finds_nothing_counts_as_done(make, sim):
    [offer] = sim.seed(private_offers=[{"name": "A", "listing": "l", "buyer": "123456789012"}])[
        "private_offers"
    ]
    sim.add_fault("drop", route="delete_private_offer", apply=True)
    dest = make(DELETE, [{"id": offer["id"]}])
    run(dest)
    gone = dest.deliveries.get()
    assert gone.state == S.RETRY_SCHEDULED
    make_due(dest)
    run(dest)
    gone.refresh_from_db()
    assert (gone.state, gone.last_status, gone.attempts) == (S.SUCCEEDED, 404, 2)


def test_a_429_pauses_the_whole_credential_until_retry_after(make, sim):
    sim.configure(rate_limit=2, rate_window=30)
    dest = make(CREATE, offers(4))
    tally = run(dest)
    assert tally["succeeded"] == 2 and tally["retry_scheduled"] == 1
    assert tally["claimed"] == 3  # the loop stopped claiming once the credential was paused
    credential = Credential.objects.get(pk=dest.credential_id)
    assert credential.paused_until > timezone.now() + timedelta(seconds=20)
    waiting = dest.deliveries.get(state=S.RETRY_SCHEDULED)
    assert waiting.next_attempt_at >= credential.paused_until - timedelta(seconds=1)
    assert run(dest).get("claimed") is None


def test_a_token_refused_mid_run_is_refreshed_once_and_the_request_sent_again(make, sim):
    dest = make(CREATE, offers(3))
    run(dest, limit=1)
    sim.api.expire_tokens()
    run(dest)
    assert states(dest) == {S.SUCCEEDED: 3}
    assert [e["status"] for e in sim.requests_log(method="POST", path="/private_offers/")] == [
        201,
        401,
        201,
        201,
    ]
    assert len(sim.requests_log(path="/authenticate/")) == 2


# -- circuit breaker ------------------------------------------------------------------------------------


def test_sustained_server_errors_auto_pause_the_destination_and_a_probe_resumes_it(make, sim, settings):
    settings.DELIVERY_BREAKER_FAILURES = 3
    seeded = sim.seed(
        private_offers=[{"name": f"O{i}", "listing": "l", "buyer": "123456789012"} for i in range(5)]
    )
    sim.add_fault("error", route="update_private_offer", status=503, times=3)
    dest = make(UPDATE, [{"id": o["id"], "name": "new"} for o in seeded["private_offers"]])
    run(dest)
    dest.refresh_from_db()
    assert dest.status == Destination.Status.AUTO_PAUSED and dest.failures == 3
    assert "3 server-side failures" in dest.paused_reason and "503" in dest.paused_reason
    assert len(sim.requests_log(method="PUT")) == 3
    assert run(dest) == {}  # the probe is not due yet
    Destination.objects.filter(pk=dest.pk).update(probe_at=timezone.now())
    tally = run(dest)
    assert tally["probed"] == 1
    dest.refresh_from_db()
    assert (dest.status, dest.paused_reason, dest.failures) == (Destination.Status.ACTIVE, "", 0)
    make_due(dest)
    run(dest)
    assert states(dest) == {S.SUCCEEDED: 5}


def test_validation_errors_never_trip_the_breaker(make, sim, settings):
    settings.DELIVERY_BREAKER_FAILURES = 2
    dest = make(CREATE, [{"name": f"bad {i}"} for i in range(4)])
    run(dest)
    dest.refresh_from_db()
    assert dest.status == Destination.Status.ACTIVE and dest.failures == 0
    assert states(dest) == {S.FAILED: 4}


# -- sweeper --------------------------------------------------------------------------------------------


def expire(dest: Destination) -> None:
    dest.deliveries.filter(state=S.SENDING).update(lease_until=timezone.now() - timedelta(seconds=1))


def test_an_expired_claim_that_never_sent_is_queued_again_without_counting(make):
    dest = make(CREATE, offers(1))
    planner.plan(dest.pk)
    claims.claim(dest.pk, 1, 30)
    expire(dest)
    sweeper.sweep()
    again = dest.deliveries.get()
    assert (again.state, again.attempts, again.lease_until) == (S.QUEUED, 0, None)


def test_an_expired_put_that_may_have_been_sent_is_queued_again(make):
    dest = make(UPDATE, [{"id": "po-1"}])
    planner.plan(dest.pk)
    [row] = claims.claim(dest.pk, 1, 30)
    Attempt.objects.create(delivery=row, number=1, started_at=timezone.now(), method="PUT", url=row.url)
    expire(dest)
    sweeper.sweep()
    row.refresh_from_db()
    assert (row.state, row.attempts) == (S.QUEUED, 1)
    assert row.attempt_rows.get().outcome == Attempt.Outcome.UNKNOWN


def test_an_expired_create_becomes_unknown_and_is_settled_by_a_lookup(make, sim):
    dest = make(CREATE, offers(2))
    planner.plan(dest.pk)
    rows = claims.claim(dest.pk, 2, 30)
    # The worker sent the first, then died; the second never reached Clazar.
    for row in rows:
        Attempt.objects.create(delivery=row, number=1, started_at=timezone.now(), method="POST", url=row.url)
    sim.seed(private_offers=[offers(1)[0]])
    expire(dest)
    sweeper.sweep()
    assert states(dest) == {S.UNKNOWN: 2}
    tally = run(dest)
    assert tally["settled"] == 2
    assert states(dest) == {S.SUCCEEDED: 1, S.NEEDS_ATTENTION: 1}
    assert sim.requests_log(method="POST", path="/private_offers/") == []


def test_the_sweeper_queues_due_retries_and_names_destinations_with_work(make):
    busy = make(CREATE, offers(1))
    idle = make(CREATE, [])
    fresh = make(CREATE, offers(1))  # never planned: records past the cursor
    planner.plan(busy.pk)
    busy.deliveries.update(state=S.RETRY_SCHEDULED, next_attempt_at=timezone.now())
    woken = sweeper.wake_due(timezone.now())
    assert busy.pk in woken and fresh.pk in woken and idle.pk not in woken
    sweeper.sweep()
    assert busy.deliveries.get().state == S.QUEUED


# -- responses ------------------------------------------------------------------------------------------


def test_final_responses_are_written_once_to_the_response_nexset(make, sim):
    dest = make({**CREATE, "response_webhook": True}, [*offers(2), {"name": "bad"}])
    run(dest)
    nexset = Nexset.objects.get(feeding_destination=dest)
    assert (nexset.kind, nexset.name) == (Nexset.Kind.RESPONSE, f"{dest.name} responses")
    rows = {r.source_ref: r.data for r in nexset.records.all()}
    assert len(rows) == 3
    ok = dest.deliveries.filter(state=S.SUCCEEDED).order_by("id").first()
    data = rows[f"delivery:{ok.pk}"]
    assert data["id"] == ok.created_object_id == data["body"]["id"]
    assert data["records"] == [{"seq": 1, "source_ref": "row-1"}]
    assert (data["method"], data["status"], data["attempts"], data["state"]) == ("POST", 201, 1, "succeeded")
    assert data["url"] == f"{sim.url}/private_offers/"
    failed = rows[f"delivery:{dest.deliveries.get(state=S.FAILED).pk}"]
    assert failed["id"] is None and failed["status"] == 400 and "listing" in failed["error"]
    text = json.dumps(list(rows.values()))
    assert "Bearer" not in text and DEFAULT_CLIENT_SECRET not in text
    responses.write(ok.pk)
    assert nexset.records.count() == 3


def test_no_response_nexset_without_the_response_webhook(make, sim):
    dest = make(CREATE, offers(1))
    run(dest)
    assert not Nexset.objects.filter(feeding_destination=dest).exists()


def test_a_create_feeds_a_publish_through_the_response_nexset(make, sim):
    creator = make({**CREATE, "response_webhook": True}, offers(3))
    run(creator)
    feed = Nexset.objects.get(feeding_destination=creator)
    publisher = DestinationFactory(
        nexset=feed, credential=creator.credential, config=PUBLISH, status=Destination.Status.ACTIVE
    )
    run(publisher)
    assert states(publisher) == {S.SUCCEEDED: 3}
    published = {o["id"]: o["status"] for o in sim.api.objects("private_offers")}
    assert set(published.values()) == {"published"}
    assert set(published) == set(creator.deliveries.values_list("created_object_id", flat=True))


def test_appending_records_wakes_the_active_destinations_after_commit(
    make, django_capture_on_commit_callbacks
):
    dest = make(CREATE, [])
    make(CREATE, [], status=Destination.Status.PAUSED)
    with django_capture_on_commit_callbacks() as callbacks:
        records.append(dest.nexset_id, offers(1))
    assert len(callbacks) == 1
    assert Record.objects.filter(nexset_id=dest.nexset_id).count() == 1
