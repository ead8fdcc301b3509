"""Writing created Clazar ids back into the source Salesforce records (flows/salesforce/writeback.py), after
real deliveries to the Clazar simulator, as a person's linked Salesforce user on the Salesforce simulator.
The engine runs in the test's thread and the task function is called directly; the last test runs the
whole chain in a real Celery worker."""

from __future__ import annotations

import time

import pytest
import requests
from django.urls import reverse

from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from flows import delivery, records, roles, tasks
from flows.models import AuditEvent, Delivery, Destination, Nexset, SalesforceUserLink
from flows.salesforce import connection, describe, writeback
from tests.factories import CredentialFactory, DestinationFactory, UserFactory
from tests.sf_helpers import connect, sf_nexset, use_simulator
from tests.test_salesforce_userlink import REP, link

pytestmark = pytest.mark.django_db

FIELD = "Clazar_Opportunity_Id__c"
CREATE = {"mode": "template", "template": "create_opportunity", "response_webhook": True}


@pytest.fixture
def sim(settings, sf_sim):
    use_simulator(settings, sf_sim)
    return sf_sim


@pytest.fixture
def clazar(settings, clazar_sim):
    settings.CLAZAR_API_BASES = [*settings.CLAZAR_API_BASES, clazar_sim.url]
    return clazar_sim


@pytest.fixture
def admin(admin_client, sim):
    """An Admin who connected the org (as the integration user) and linked their own user (the rep)."""
    connect(admin_client, sim)
    fresh_describe()
    link(admin_client, sim, REP)
    return admin_client


def fresh_describe() -> None:
    """Describe data is cached per org id, which every simulator shares: forget what another test saw."""
    describe.forget("Opportunity")


def opportunity_ids(sim, count: int) -> list[str]:
    return [row["Id"] for row in sim.records("Opportunity")[:count]]


def field_of(sim, record_id: str) -> str | None:
    return next(row for row in sim.records("Opportunity") if row["Id"] == record_id)[FIELD]


def setup(clazar, ids: list[str], user_id: int | None, config: dict | None = None) -> Destination:
    """A Salesforce Nexset holding one record per Opportunity Id (write-back as ``user_id``) and an
    active Create Opportunity destination over it."""
    nexset = sf_nexset(writeback={"field": FIELD, "user_id": user_id} if user_id else None)
    rows = [{"title": f"Deal {i}", "cloud": "aws", "customer_company": "Acme"} for i in range(len(ids))]
    records.append(nexset.pk, rows, ids)
    credential = CredentialFactory(
        api_base=clazar.url,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
        rate_limit=100_000,
    )
    return DestinationFactory(
        nexset=nexset, credential=credential, config=config or CREATE, status=Destination.Status.ACTIVE
    )


def deliver(dest: Destination) -> list[Delivery]:
    delivery.process_due(dest.pk, threads=0, lease_seconds=30)
    done = list(dest.deliveries.filter(is_test=False).order_by("id"))
    assert done and all(d.state == Delivery.State.SUCCEEDED and d.created_object_id for d in done)
    return done


def events() -> list[dict]:
    return [
        e.changes["details"] for e in AuditEvent.objects.filter(action="salesforce.writeback").order_by("id")
    ]


def test_the_created_clazar_id_is_written_into_the_salesforce_record_as_the_linked_user(admin, sim, clazar):
    ids = opportunity_ids(sim, 2)
    dest = setup(clazar, ids, admin.user.pk)
    done = deliver(dest)
    # The org's own grant no longer works: whatever is written, is written with the person's token.
    requests.post(
        f"{sim.url}/services/oauth2/revoke", data={"token": connection.current().refresh_token.reveal()}
    )
    sim.clear_log()
    for d in done:
        tasks.salesforce_writeback(d.pk)
    patches = sim.requests_log(method="PATCH")
    assert [p["path"].rsplit("/", 1)[1] for p in patches] == ids
    assert [field_of(sim, i) for i in ids] == [d.created_object_id for d in done]
    logged = events()
    assert [(e["record"], e["outcome"], e["error"]) for e in logged] == [(i, "ok", "") for i in ids]
    assert {e["salesforce_user"] for e in logged} == {"rep@acme.example"}
    assert {(e["field"], e["object"]) for e in logged} == {(FIELD, "Opportunity")}
    assert logged[0]["value"] == done[0].created_object_id and logged[0]["user"] == admin.user.username
    audit_page = admin.get(reverse("audit_list"), {"action": "salesforce.writeback"}).content.decode()
    assert "rep@acme.example" in audit_page and ids[0] in audit_page


def test_the_write_back_is_idempotent(admin, sim, clazar):
    ids = opportunity_ids(sim, 1)
    (done,) = deliver(setup(clazar, ids, admin.user.pk))
    assert writeback.run(done.pk).outcomes == {ids[0]: "ok"}
    assert writeback.run(done.pk).outcomes == {ids[0]: "ok"}
    assert field_of(sim, ids[0]) == done.created_object_id


def test_the_write_back_is_queued_only_for_a_created_object_of_a_nexset_that_wants_it(admin, sim, clazar):
    ids = opportunity_ids(sim, 1)
    (wanted,) = deliver(setup(clazar, ids, admin.user.pk))
    assert writeback.schedule(wanted)
    (off,) = deliver(setup(clazar, opportunity_ids(sim, 2)[1:], None))
    assert not writeback.schedule(off)
    Delivery.objects.filter(pk=wanted.pk).update(state=Delivery.State.FAILED)
    wanted.refresh_from_db()
    assert not writeback.schedule(wanted)


def test_a_403_is_audited_and_does_not_raise(admin, sim, clazar):
    ids = opportunity_ids(sim, 2)
    (done, _) = deliver(setup(clazar, ids, admin.user.pk))
    sim.configure(permissions={"Opportunity": {"edit": False}})
    assert tasks.salesforce_writeback(done.pk) == 1
    assert field_of(sim, ids[0]) is None
    (event,) = events()
    assert (event["record"], event["outcome"], event["salesforce_user"]) == (
        ids[0],
        "error",
        "rep@acme.example",
    )
    assert "403 INSUFFICIENT_ACCESS_OR_READONLY" in event["error"]
    assert "rep@acme.example may not edit this Opportunity" in event["error"]


def test_a_user_without_a_link_is_audited_and_nothing_is_written(admin, sim, clazar):
    someone = UserFactory(role=roles.ADMIN)
    ids = opportunity_ids(sim, 1)
    (done,) = deliver(setup(clazar, ids, someone.pk))
    sim.clear_log()
    assert writeback.run(done.pk).outcomes == {ids[0]: "skipped"}
    assert sim.requests_log(method="PATCH") == []
    (event,) = events()
    assert event["records"] == ids and "has no Salesforce link" in event["error"]


def test_a_refused_user_token_is_audited_and_does_not_raise(admin, sim, clazar):
    ids = opportunity_ids(sim, 2)
    done = deliver(setup(clazar, ids, admin.user.pk))
    link_row = SalesforceUserLink.objects.get(user=admin.user)
    requests.post(f"{sim.url}/services/oauth2/revoke", data={"token": link_row.refresh_token.reveal()})
    for d in done:
        assert tasks.salesforce_writeback(d.pk) == 1
    assert all(field_of(sim, i) is None for i in ids)
    logged = events()
    assert [(e["records"], e["outcome"]) for e in logged] == [([i], "error") for i in ids]
    assert all("Salesforce refused the refresh token of rep@acme.example" in e["error"] for e in logged)
    assert all("connect again on their profile page" in e["error"] for e in logged)


def test_an_unreachable_salesforce_is_tried_again_for_the_records_it_missed(admin, sim, clazar):
    ids = opportunity_ids(sim, 1)
    (done,) = deliver(setup(clazar, ids, admin.user.pk))
    sim.add_fault("error", route="update", status=503, times=1)
    first = writeback.run(done.pk)
    assert first.outcomes == {ids[0]: "unavailable"} and first.again == ids
    assert "Trying again in 60 s (attempt 1 of 4)" in events()[-1]["error"]
    assert writeback.run(done.pk, only=[], attempt=2).outcomes == {}
    second = writeback.run(done.pk, only=first.again, attempt=2)
    assert second.outcomes == {ids[0]: "ok"} and second.again == []
    assert field_of(sim, ids[0]) == done.created_object_id
    sim.add_fault("error", route="update", status=503, times=1)
    last = writeback.run(done.pk, attempt=writeback.ATTEMPTS)
    assert last.again == [] and "Gave up after 4 attempts" in events()[-1]["error"]


def test_the_settings_page_saves_the_field_and_user_and_shows_the_last_results(admin, sim, clazar):
    ids = opportunity_ids(sim, 1)
    dest = setup(clazar, ids, None)
    nexset = dest.nexset
    url = reverse("salesforce_writeback", args=[nexset.uuid])
    page = admin.get(url).content.decode()
    assert "Off: nothing is written" in page
    assert f'<option value="{FIELD}" selected>' in page  # the usual field is suggested
    assert f'<option value="{admin.user.pk}" selected>' in page  # the Admin configuring it, linked
    assert "Name (Name" in page and "Amount" not in page  # updateable text fields only

    response = admin.post(url, {"field": FIELD, "user": admin.user.pk}, follow=True)
    assert f"written into {FIELD} as {admin.user.username} (Salesforce user rep@acme.example)" in (
        response.content.decode()
    )
    nexset.refresh_from_db()
    assert nexset.source["writeback"] == {"field": FIELD, "user_id": admin.user.pk}
    assert nexset.source["object"] == "Opportunity" and nexset.source["fields"]
    assert AuditEvent.objects.filter(action="nexset.salesforce_writeback").exists()

    (done,) = deliver(dest)
    writeback.run(done.pk)
    page = admin.get(url).content.decode()
    assert "✔ ok" in page and ids[0] in page and "rep@acme.example" in page and done.created_object_id in page

    admin.post(url, {"action": "off"})
    nexset.refresh_from_db()
    assert nexset.source["writeback"] is None and nexset.source["object"] == "Opportunity"


def test_the_settings_page_refuses_a_field_that_is_not_updateable_text_or_an_unlinked_user(admin, sim):
    nexset = sf_nexset()
    someone = UserFactory(role=roles.ADMIN)
    url = reverse("salesforce_writeback", args=[nexset.uuid])
    response = admin.post(url, {"field": "Amount", "user": someone.pk})
    assert response.status_code == 400
    page = response.content.decode()
    assert "Pick one of the updateable text fields of Opportunity" in page
    assert "Pick a user whose Salesforce login is linked" in page
    nexset.refresh_from_db()
    assert nexset.source.get("writeback") is None


def test_the_settings_page_says_when_the_admin_is_not_linked_and_which_destinations_keep_responses(
    admin_client, sim, clazar
):
    connect(admin_client, sim)
    fresh_describe()
    dest = setup(clazar, [], None, {"mode": "template", "template": "create_opportunity"})
    page = admin_client.get(reverse("salesforce_writeback", args=[dest.nexset.uuid])).content.decode()
    assert "Your own Salesforce user is not linked" in page
    assert dest.name in page and "turn on the response webhook" in page


def test_editing_the_nexset_settings_keeps_the_write_back(admin, sim):
    setting = {"field": FIELD, "user_id": admin.user.pk}
    nexset = sf_nexset(writeback=setting)
    form = {"object": "Opportunity", "fields": ["Name", "Amount"], "filter": "", "every": ""}
    assert admin.post(reverse("salesforce_nexset_edit", args=[nexset.uuid]), form).status_code == 302
    nexset.refresh_from_db()
    assert nexset.source["fields"] == ["Name", "Amount"] and nexset.source["writeback"] == setting


def test_changing_the_object_to_one_without_the_write_back_field_is_refused(admin, sim):
    setting = {"field": FIELD, "user_id": admin.user.pk}
    nexset = sf_nexset(writeback=setting)
    form = {"object": "Account", "fields": ["Name"], "filter": "", "every": ""}
    response = admin.post(reverse("salesforce_nexset_edit", args=[nexset.uuid]), form)
    assert response.status_code == 400
    assert f"The write-back writes into {FIELD}, which Account does not have" in response.content.decode()
    nexset.refresh_from_db()
    assert nexset.source["object"] == "Opportunity" and nexset.source["writeback"] == setting


def test_saving_and_removing_a_mapping_keeps_the_write_back(admin, sim):
    from tests.test_salesforce_views import form_for

    setting = {"field": FIELD, "user_id": admin.user.pk}
    nexset = sf_nexset(writeback=setting)
    admin.post(reverse("salesforce_mapping", args=[nexset.uuid]), form_for())
    nexset.refresh_from_db()
    assert nexset.source["mapping"] and nexset.source.get("writeback") == setting
    nexset.imports.all().delete()
    admin.post(reverse("salesforce_mapping", args=[nexset.uuid]), {"action": "remove"})
    nexset.refresh_from_db()
    assert nexset.source["mapping"] is None and nexset.source.get("writeback") == setting


@pytest.mark.slow
def test_a_real_worker_delivers_and_writes_the_id_back(settings, sf_sim, clazar, start_proc, make_client):
    use_simulator(settings, sf_sim)
    admin = make_client(roles.ADMIN)
    connect(admin, sf_sim)
    link(admin, sf_sim, REP)
    env = {
        "SALESFORCE_SIMULATOR_URL": sf_sim.url,
        "CLAZAR_SIMULATOR_URL": clazar.url,
        "CELERY_SWEEP_SECONDS": "1",
    }
    worker = start_proc(
        "worker", "celery", "-A", "clazar_dest", "worker", "--pool", "solo", "-l", "info", env=env
    )
    start_proc("beat", "celery", "-A", "clazar_dest", "beat", "-l", "info", env=env)
    worker.wait_for("ready", timeout=60)
    ids = opportunity_ids(sf_sim, 2)
    dest = setup(clazar, ids, admin.user.pk)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and any(field_of(sf_sim, i) is None for i in ids):
        time.sleep(0.3)
    created = {d.created_object_id for d in dest.deliveries.all()}
    assert {field_of(sf_sim, i) for i in ids} == created and None not in created, worker.output()[-3000:]
    worker.wait_for("Task flows.salesforce_writeback", timeout=10)
    assert Nexset.objects.get(feeding_destination=dest).record_count == 2
