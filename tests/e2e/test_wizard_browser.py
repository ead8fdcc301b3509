"""An Operator sets up a destination in the wizard, in a real browser, against the Clazar simulator."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from flows import records, roles
from flows.models import Credential, Destination
from tests.factories import CredentialFactory, NexsetFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def setup(settings, clazar_sim):
    settings.CLAZAR_API_BASES = ["https://api.clazar.io", clazar_sim.url]
    seeded = clazar_sim.seed(
        private_offers=[{"name": "Existing", "listing": "lst-1", "buyer": "111122223333"}]
    )
    offer_id = seeded["private_offers"][0]["id"]
    nexset = NexsetFactory(name="Q4 offers")
    rows = [
        {
            "id": offer_id,
            "name": "Acme annual",
            "listing": "lst-1",
            "buyer": "123456789012",
            "price": "24000.00",
        },
        {
            "id": "po-2",
            "name": "Globex annual",
            "listing": "lst-1",
            "buyer": "210987654321",
            "price": "18000.00",
        },
        {
            "id": "po-3",
            "name": "Initech annual",
            "listing": "lst-1",
            "buyer": "555566667777",
            "price": "9000.00",
        },
    ]
    records.append(nexset.pk, rows)
    credential = CredentialFactory(
        name="Simulator",
        api_base=clazar_sim.url,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
    )
    return {"nexset": nexset, "credential": credential, "offer_id": offer_id, "sim": clazar_sim}


def test_an_operator_sets_up_tests_and_saves_a_destination(page, login, setup):
    sim, offer_id = setup["sim"], setup["offer_id"]
    login(roles.OPERATOR)
    page.goto(f"/destinations/new/?nexset={setup['nexset'].uuid}")
    page.get_by_label("Clazar credential").select_option(label="Simulator")
    page.get_by_role("button", name="Next").click()

    samples = page.locator("#samples")
    page.get_by_label("Endpoint").select_option(label="Create Private Offer")
    expect(samples).to_contain_text(f"POST {sim.url}/private_offers/")
    expect(samples.locator("pre.json").first).to_contain_text('"price"')

    # Excluding an attribute updates the sample.
    page.locator("label.chip", has_text="price").click()
    expect(samples.locator("pre.json").first).not_to_contain_text('"price"')

    # Batching shows the batched body, then off again.
    page.get_by_label("Would you like to batch your records together?").check()
    expect(samples.locator("pre.json").first).to_contain_text('"records": [')
    page.get_by_label("Would you like to batch your records together?").uncheck()
    expect(samples.locator("pre.json").first).not_to_contain_text('"records": [')

    # Test mode: send the first sample for real and see Clazar's 201 and the new id.
    page.get_by_label("Test", exact=True).check()
    first = samples.locator("details.sample").first
    expect(page.locator(".test-warning")).to_be_visible()
    first.get_by_role("button", name="Send Test Data").click()
    expect(first.locator(".test-result")).to_contain_text("HTTP 201")
    created_id = first.locator(".test-result code.created-id").inner_text()
    assert any(o["id"] == created_id for o in sim.objects("private_offers"))

    # An invalid body: Clazar's field message is shown; the button waits for valid JSON.
    body = first.locator("textarea")
    body.fill('{"name": "No buyer"')
    expect(first.get_by_role("button", name="Send Test Data")).to_be_disabled()
    body.fill('{"name": "No buyer"}')
    first.get_by_role("button", name="Send Test Data").click()
    expect(first.locator(".test-result")).to_contain_text("This field is required.")

    # Switch to Update Private Offer with the ID taken from a record attribute.
    page.get_by_label("Endpoint").select_option(label="Update Private Offer")
    expect(page.get_by_label("Private Offer ID", exact=True)).to_be_visible()
    page.get_by_label("Record attribute for the ID").select_option("id")
    expect(page.get_by_label("Private Offer ID", exact=True)).to_have_value("{id}")
    expect(samples).to_contain_text(f"PUT {sim.url}/private_offers/{offer_id}/")
    expect(samples).to_contain_text(f"PUT {sim.url}/private_offers/po-2/")

    page.get_by_label("Destination name").fill("Update Q4 offers")
    page.get_by_role("button", name="Done").click()
    expect(page.get_by_role("heading", name=re.compile("Update Q4 offers"))).to_be_visible()
    expect(page.locator("main")).to_contain_text("Update Private Offer -> PUT /private_offers/{id}/")
    destination = Destination.objects.get(name="Update Q4 offers")
    assert destination.status == Destination.Status.DRAFT
    assert destination.config["exclude"] == ["price"]

    # Reopen to edit: everything is as it was saved.
    page.get_by_role("link", name="Edit settings").click()
    expect(page.get_by_label("Endpoint")).to_have_value("update_private_offer")
    expect(page.get_by_label("Private Offer ID", exact=True)).to_have_value("{id}")
    expect(samples).to_contain_text(f"PUT {sim.url}/private_offers/{offer_id}/")


def test_publish_needs_the_typed_offer_id_before_the_button_works(page, login, setup):
    login(roles.OPERATOR)
    destination = Destination.objects.create(
        name="Publish", nexset=setup["nexset"], credential=setup["credential"], config={}
    )
    page.goto(f"/destinations/{destination.uuid}/edit/")
    page.get_by_label("Endpoint").select_option(label="Publish Private Offer")
    expect(page.locator(".endpoint-help")).to_contain_text("cannot be undone")
    page.get_by_label("Private Offer ID", exact=True).fill("{id}")
    page.get_by_label("Test", exact=True).check()
    first = page.locator("#samples details.sample").first
    button = first.get_by_role("button", name="Send Test Data")
    expect(button).to_be_disabled()
    first.get_by_label(re.compile("to confirm")).fill(setup["offer_id"])
    expect(button).to_be_enabled()
    button.click()
    expect(first.locator(".test-result")).to_contain_text("HTTP 200")
    assert setup["sim"].objects("private_offers")[0]["status"] == "published"


def test_the_advanced_tab_keeps_what_was_typed_in_the_template_tab(page, login, setup):
    login(roles.OPERATOR)
    destination = Destination.objects.create(
        name="Adv", nexset=setup["nexset"], credential=setup["credential"], config={}
    )
    page.goto(f"/destinations/{destination.uuid}/edit/")
    page.get_by_label("Endpoint").select_option(label="Update Listing")
    page.get_by_label("Listing ID", exact=True).fill("{id}")
    page.get_by_text("Advanced", exact=True).click()
    page.get_by_label("Method").select_option("PATCH")
    page.locator("#id_url").fill(setup["sim"].url + "/private_offers/{id}/")
    expect(page.locator("#samples")).to_contain_text(f"PATCH {setup['sim'].url}/private_offers/po-2/")
    page.get_by_text("Template", exact=True).click()
    expect(page.get_by_label("Listing ID", exact=True)).to_have_value("{id}")


def test_an_admin_adds_a_credential_inline_without_losing_the_chosen_nexset(page, login, setup):
    login(roles.ADMIN)
    page.goto(f"/destinations/new/?nexset={setup['nexset'].uuid}")
    page.get_by_text("Add a new credential here").click()
    page.locator("#id_cred-name").fill("Inline account")
    page.locator("#id_cred-api_base").select_option(setup["sim"].url)
    page.locator("#id_cred-client_id").fill(DEFAULT_CLIENT_ID)
    page.locator("#id_cred-client_secret").fill(DEFAULT_CLIENT_SECRET)
    page.get_by_role("button", name="Add credential").click()
    expect(page.locator(".toast-success")).to_contain_text("Added “Inline account”")
    added = Credential.objects.get(name="Inline account")
    expect(page.get_by_label("Clazar credential")).to_have_value(str(added.uuid))
    expect(page.get_by_label("Nexset to send")).to_have_value(str(setup["nexset"].uuid))
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_role("heading", name="Sample Payload")).to_be_visible()
