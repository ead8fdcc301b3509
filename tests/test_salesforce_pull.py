"""Pulling a Salesforce object into its Nexset (flows/salesforce/pull.py) against the simulator."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from flows.models import Import, Nexset, Record
from flows.salesforce import pull
from tests.sf_helpers import connect, sf_nexset, use_simulator

pytestmark = pytest.mark.django_db

MAPPING = {
    "fields": {
        "title": {"source": "field", "value": "Name"},
        "cloud": {"source": "constant", "value": "aws"},
        "customer_company": {"source": "field", "value": "Account.Name"},
        "target_close_date": {
            "source": "field",
            "value": "CloseDate",
            "fallback": {"source": "expression", "value": "today + 15 days"},
        },
    },
    "custom_properties": {},
}


@pytest.fixture
def sim(settings, sf_sim, admin_client):
    use_simulator(settings, sf_sim)
    connect(admin_client, sf_sim)
    sf_sim.clear_log()
    return sf_sim


def pull_now(nexset: Nexset, full: bool = False) -> Import:
    imp = pull.start(nexset, full=full)
    return pull.run(imp.pk)


def test_a_pull_stores_every_record_keyed_by_its_salesforce_id(sim):
    nexset = sf_nexset()
    imp = pull_now(nexset)
    assert imp.status == Import.Status.SUCCEEDED, imp.message
    expected = {r["Id"] for r in sim.records("Opportunity")}
    assert set(Record.objects.filter(nexset=nexset).values_list("source_ref", flat=True)) == expected
    record = Record.objects.filter(nexset=nexset).first()
    assert "attributes" not in record.data and "Name" in record.data
    nexset.refresh_from_db()
    assert nexset.record_count == len(expected) and nexset.pull_watermark is not None
    assert f"{len(expected):,} new" in imp.message


def test_an_incremental_pull_picks_up_only_changed_records_and_updates_them_in_place(sim):
    nexset = sf_nexset()
    pull_now(nexset)
    count = Nexset.objects.get(pk=nexset.pk).record_count
    changed = sim.touch("Opportunity", count=3, changes={"Name": "Renamed deal"})
    sim.clear_log()
    imp = pull_now(nexset)
    assert imp.status == Import.Status.SUCCEEDED, imp.message
    assert imp.rows_read <= 4  # the three changed ones (and at most the one sharing the watermark)
    assert "3 updated" in imp.message and "0 new" in imp.message
    nexset.refresh_from_db()
    assert nexset.record_count == count  # updated, not duplicated
    for sf_id in changed:
        assert Record.objects.get(nexset=nexset, source_ref=sf_id).data["Name"] == "Renamed deal"
    query = sim.requests_log(path="/services/data/v62.0/query")[0]["query"]["q"]
    assert "SystemModstamp >=" in query


def test_a_new_salesforce_record_is_appended_and_wakes_nothing_twice(sim):
    nexset = sf_nexset()
    pull_now(nexset)
    new_id = sim.create("Opportunity", {"Name": "Fresh deal", "StageName": "Prospecting"})
    imp = pull_now(nexset)
    assert "1 new" in imp.message
    assert Record.objects.filter(nexset=nexset, source_ref=new_id).count() == 1


def test_pagination_over_5000_records(sim):
    sim.seed(accounts=50, opportunities=5000)
    nexset = sf_nexset(fields=["Name", "Amount"])
    imp = pull_now(nexset)
    assert imp.status == Import.Status.SUCCEEDED, imp.message
    assert Record.objects.filter(nexset=nexset).count() == 5000
    pages = [e for e in sim.requests_log() if e["path"].startswith("/services/data/v62.0/query")]
    assert len(pages) == 3  # 2,000 per page


def test_a_failure_half_way_keeps_what_was_stored_and_the_next_pull_duplicates_nothing(sim):
    sim.seed(accounts=10, opportunities=4500)
    nexset = sf_nexset(fields=["Name"])
    sim.add_fault("error", route="query_more", status=503, on_call=1, times=1)
    imp = pull_now(nexset)
    assert imp.status == Import.Status.FAILED
    assert "2,000 records were stored" in imp.message and "nothing is duplicated" in imp.message
    nexset.refresh_from_db()
    assert nexset.pull_watermark is None  # the whole pull runs again
    imp = pull_now(nexset)
    assert imp.status == Import.Status.SUCCEEDED, imp.message
    assert Record.objects.filter(nexset=nexset).count() == 4500


def test_a_mapping_stores_clazar_fields_and_lists_rejected_records_unsent(sim):
    mapping = {
        **MAPPING,
        "fields": {**MAPPING["fields"], "customer_company": {"source": "field", "value": "Account.Name"}},
    }
    nexset = sf_nexset(mapping=mapping)
    imp = pull_now(nexset)
    without_account = [r for r in sim.records("Opportunity") if not r.get("AccountId")]
    assert without_account, "the simulator seeds some opportunities without an account"
    assert imp.status == Import.Status.PARTIAL
    assert imp.rows_rejected == len(without_account)
    assert "customer_company" in imp.errors[0]["text"]
    stored = Record.objects.filter(nexset=nexset).first().data
    assert set(stored) <= {"title", "cloud", "customer_company", "target_close_date"}
    assert stored["cloud"] == "aws"
    refs = set(Record.objects.filter(nexset=nexset).values_list("source_ref", flat=True))
    assert not refs & {r["Id"] for r in without_account}


def test_a_salesforce_error_is_shown_on_the_import(sim):
    nexset = sf_nexset(filter="NoSuchField__c = 1")
    imp = pull_now(nexset)
    assert imp.status == Import.Status.FAILED
    assert "NoSuchField__c" in imp.message and "Nothing was stored" in imp.message


def test_a_second_pull_is_refused_while_one_is_queued(sim):
    nexset = sf_nexset()
    pull.start(nexset)
    with pytest.raises(pull.PullRefused, match="already"):
        pull.start(nexset)


def test_due_schedules_start_pulls_and_move_the_next_time(sim):
    nexset = sf_nexset(every=15)
    Nexset.objects.filter(pk=nexset.pk).update(next_pull_at=timezone.now() - timedelta(seconds=1))
    started = pull.due()
    assert len(started) == 1
    nexset.refresh_from_db()
    assert nexset.next_pull_at > timezone.now() + timedelta(minutes=14)
    assert pull.due() == []


def test_pull_now_from_the_nexset_page(sim, operator_client):
    nexset = sf_nexset()
    response = operator_client.post(reverse("salesforce_nexset_pull", args=[nexset.uuid]), follow=True)
    assert "Pull queued" in response.content.decode()
    imp = nexset.imports.get()
    assert pull.run(imp.pk).status == Import.Status.SUCCEEDED
    page = operator_client.get(reverse("nexset_detail", args=[nexset.uuid])).content.decode()
    assert "keyed by their Salesforce Id" in page
