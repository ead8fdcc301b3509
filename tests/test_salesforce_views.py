"""The Salesforce Nexset pages: settings from describe data, filter test, field mapping with live preview."""

from __future__ import annotations

import pytest
from django.urls import reverse

from flows.models import Import, Nexset
from tests.sf_helpers import connect, sf_nexset, use_simulator

pytestmark = pytest.mark.django_db


@pytest.fixture
def sim(settings, sf_sim, admin_client):
    use_simulator(settings, sf_sim)
    connect(admin_client, sf_sim)
    return sf_sim


def test_the_new_nexset_form_lists_objects_and_fields_from_describe(admin_client, sim):
    page = admin_client.get(reverse("salesforce_nexset_new")).content.decode()
    assert "Opportunity (Opportunity)" in page
    assert 'value="CloseDate"' in page and 'value="Account.Name"' in page


def test_picking_another_object_reloads_the_fields(admin_client, sim):
    page = admin_client.get(reverse("salesforce_fields"), {"object": "Account"}).content.decode()
    assert 'value="Website"' in page and 'value="CloseDate"' not in page


def test_creating_a_nexset_and_pulling_at_once(admin_client, sim):
    response = admin_client.post(
        reverse("salesforce_nexset_new"),
        {"name": "Deals", "object": "Opportunity", "fields": ["Name", "Amount"], "every": "15", "pull": "1"},
    )
    assert response.status_code == 302
    nexset = Nexset.objects.get(name="Deals")
    assert nexset.kind == "salesforce" and nexset.source["every"] == 15 and nexset.next_pull_at
    assert nexset.imports.get().status == Import.Status.QUEUED


def test_invalid_settings_name_each_field(admin_client, sim):
    response = admin_client.post(
        reverse("salesforce_nexset_new"),
        {"name": "", "object": "Opportunity", "fields": ["Nope__c"], "filter": "Name = 'x", "every": "7"},
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "Give the Nexset a name" in page
    assert "Nope__c" in page
    assert "Pick a schedule from the list" in page
    assert not Nexset.objects.exists()


def test_the_filter_test_counts_matches_or_shows_salesforce_error(admin_client, sim):
    ok = admin_client.post(
        reverse("salesforce_filter_test"),
        {"object": "Opportunity", "fields": ["Name"], "filter": "StageName = 'Closed Won'"},
    ).content.decode()
    won = [r for r in sim.records("Opportunity") if r["StageName"] == "Closed Won"]
    assert f"{len(won)} record" in ok
    bad = admin_client.post(
        reverse("salesforce_filter_test"),
        {"object": "Opportunity", "fields": ["Name"], "filter": "Bogus__c = 1"},
    ).content.decode()
    assert "Bogus__c" in bad and "alert-error" in bad


def test_the_mapping_page_suggests_a_mapping_for_opportunities(admin_client, sim):
    nexset = sf_nexset()
    page = admin_client.get(reverse("salesforce_mapping", args=[nexset.uuid])).content.decode()
    assert "A suggested mapping" in page
    assert 'name="m-title-value" type="text" value="Name"' in page


def form_for(title_source: str = "field", title_value: str = "Name") -> dict[str, str]:
    return {
        "m-title-source": title_source,
        "m-title-value": title_value,
        "m-cloud-source": "constant",
        "m-cloud-value": "aws",
        "m-customer_company-source": "field",
        "m-customer_company-value": "Account.Name",
        "m-customer_company-fb-source": "constant",
        "m-customer_company-fb-value": "Unknown customer",
        "m-target_close_date-source": "field",
        "m-target_close_date-value": "CloseDate",
        "m-target_close_date-fb-source": "expression",
        "m-target_close_date-fb-value": "today + 15 days",
        "m-stage-source": "field",
        "m-stage-value": "StageName",
        "m-stage-values": "Closed Won = launched\nProspecting = prospect",
        "cp-0-name": "salesforce_id",
        "cp-0-source": "field",
        "cp-0-value": "Id",
    }


def test_the_live_preview_maps_real_records(admin_client, sim):
    nexset = sf_nexset()
    page = admin_client.post(
        reverse("salesforce_mapping_preview", args=[nexset.uuid]), form_for()
    ).content.decode()
    first = sim.records("Opportunity")[0]
    assert first["Id"] in page
    assert "&quot;cloud&quot;: &quot;aws&quot;" in page
    assert "salesforce_id" in page


def test_the_preview_names_mapping_errors_without_calling_salesforce(admin_client, sim):
    nexset = sf_nexset()
    sim.clear_log()
    page = admin_client.post(
        reverse("salesforce_mapping_preview", args=[nexset.uuid]), form_for("expression", "Name ~ (")
    ).content.decode()
    assert "Fix the mapping" in page and "title" in page
    assert sim.requests_log(path="/services/data/v62.0/query") == []


def test_saving_a_mapping_queues_a_full_pull(admin_client, sim):
    nexset = sf_nexset()
    response = admin_client.post(reverse("salesforce_mapping", args=[nexset.uuid]), form_for())
    assert response.status_code == 302
    nexset.refresh_from_db()
    assert nexset.source["mapping"]["fields"]["stage"]["values"] == {
        "Closed Won": "launched",
        "Prospecting": "prospect",
    }
    imp = nexset.imports.get()
    assert imp.options["full"] is True


def test_an_invalid_mapping_is_not_saved(admin_client, sim):
    nexset = sf_nexset()
    form = form_for()
    del form["m-title-source"]
    response = admin_client.post(reverse("salesforce_mapping", args=[nexset.uuid]), form)
    assert response.status_code == 400
    assert "title" in response.content.decode()
    nexset.refresh_from_db()
    assert nexset.source["mapping"] is None
