"""An Admin connects Salesforce in a real browser (the simulator's consent page, Allow), creates a Salesforce
Nexset from the field picker, watches a real Celery worker pull it, maps it to Clazar co-sell opportunities
with the live preview, and sends a mapped record to the Clazar simulator from the destination wizard.
And Deny on the consent page connects nothing. Real browser, real worker, real sockets (issue 8)."""

from __future__ import annotations

import json
import os
import re

import pytest
from playwright.sync_api import expect

from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from flows import roles
from flows.models import Destination, Import, Nexset, Record, SalesforceConnection
from tests.factories import CredentialFactory
from tests.sf_helpers import sf_nexset, use_simulator

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PICKED = ["Name", "CloseDate", "StageName", "Account.Name"]
SHOTS = os.environ.get("SCREENSHOTS_DIR")


def shot(page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, f"sf-{name}.png"), full_page=True)


@pytest.fixture
def sims(settings, sf_sim, clazar_sim):
    """Both simulators, with the connected app saved and the Clazar simulator an allowed API base."""
    use_simulator(settings, sf_sim)
    settings.CLAZAR_API_BASES = [*settings.CLAZAR_API_BASES, clazar_sim.url]
    return sf_sim, clazar_sim


@pytest.fixture
def worker(start_proc, sims):
    """A solo Celery worker on the test database and broker that reaches both simulators."""
    sf_sim, clazar_sim = sims
    env = {"SALESFORCE_SIMULATOR_URL": sf_sim.url, "CLAZAR_SIMULATOR_URL": clazar_sim.url}
    proc = start_proc(
        "worker",
        "celery",
        "-A",
        "clazar_dest",
        "worker",
        "--pool",
        "solo",
        "-n",
        "sf@%h",
        "-l",
        "info",
        env=env,
    )
    proc.wait_for("ready", timeout=60)
    return proc


def connect_through_consent_page(page, sf_sim, decision: str) -> None:
    page.goto("/salesforce/")
    page.get_by_role("button", name="Connect to Salesforce").click()
    page.wait_for_url(f"{sf_sim.url}/services/oauth2/authorize?**")
    expect(page.get_by_role("heading", name="Allow access?")).to_be_visible()
    expect(page.locator("main")).to_contain_text("in the org Acme Inc.")
    shot(page, f"consent-{decision.lower()}")
    page.get_by_role("button", name=decision, exact=True).click()


def finished_pull(page, nexset: Nexset, worker, queued: str) -> Import:
    """After the click that queued a pull (its page says ``queued``), wait until the Nexset page shows that
    pull finished: the page polls the import and reloads itself when it ends."""
    expect(page.locator("#toasts")).to_contain_text(queued)
    newest = nexset.imports.first()
    row = page.locator(".import-row", has=page.locator(f'a[href="/imports/{newest.uuid}/"]'))
    try:
        expect(row.locator(".badge")).to_have_text(re.compile("^Imported"), timeout=45_000)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nThe worker said:\n{worker.output()[-3000:]}") from None
    newest.refresh_from_db()
    return newest


def test_an_admin_connects_pulls_maps_and_sends_a_mapped_opportunity_to_clazar(page, login, sims, worker):
    sf_sim, clazar_sim = sims
    login(roles.ADMIN)

    # Connect: the simulator's consent page, Allow, and back with the green check and the permissions.
    connect_through_consent_page(page, sf_sim, "Allow")
    page.wait_for_url(re.compile(r"/salesforce/$"))
    connection = page.locator("#connection")
    expect(connection.locator(".connected")).to_contain_text(
        "Connected to Acme Inc. as integration@acme.example"
    )
    expect(connection.locator(".ok-check")).to_be_visible()
    expect(connection.locator(".ok-check")).to_have_css("color", "rgb(26, 127, 55)")  # --ok: green
    permissions = page.locator("#permissions table")
    expect(permissions).to_be_visible()
    expect(permissions.get_by_role("row", name=re.compile("^Opportunity"))).to_contain_text("read, edit ✔")
    expect(permissions.locator("tr.row-error")).to_have_count(0)
    assert SalesforceConnection.objects.get().org_name == "Acme Inc."
    shot(page, "connected")

    # A Salesforce Nexset from the picker: just the four fields, created and pulled at once.
    page.get_by_role("link", name="New Salesforce Nexset").click()
    page.get_by_label("Name", exact=True).fill("Acme opportunities")
    expect(page.get_by_label("Object")).to_have_value("Opportunity")
    picker = page.locator("#sf-fields")
    defaults = picker.locator("input[name=fields]:checked").evaluate_all("boxes => boxes.map(b => b.value)")
    assert "Name" in defaults and len(defaults) > len(PICKED), defaults
    for path in defaults:
        picker.locator(f'input[name=fields][value="{path}"]').uncheck()
    for path in PICKED:
        picker.locator(f'input[name=fields][value="{path}"]').check()
    shot(page, "nexset-form")
    page.get_by_role("button", name="Create and pull now").click()
    expect(page.get_by_role("heading", name=re.compile("Acme opportunities"))).to_be_visible()
    nexset = Nexset.objects.get(name="Acme opportunities")
    assert nexset.source["fields"] == PICKED
    source = page.locator("#salesforce-source")
    expect(source).to_contain_text("Name, CloseDate, StageName, Account.Name")

    total = len(sf_sim.records("Opportunity"))
    pulled = finished_pull(page, nexset, worker, "The first pull is running.")
    assert (pulled.status, pulled.rows_read, pulled.rows_stored) == (Import.Status.SUCCEEDED, total, total)
    expect(page.locator("#record-count")).to_have_text(str(total))
    expect(page.locator(".import-row").first).to_contain_text(f"{total} stored")
    expect(source).not_to_contain_text("never pulled")
    expect(page.locator("table.records")).to_contain_text(sf_sim.records("Opportunity")[0]["Name"])
    shot(page, "pulled")

    # The field mapping: the suggested one previews real records; a constant cloud shows up live.
    source.get_by_role("link", name="Map to co-sell opportunities").click()
    preview = page.locator("#mapping-preview")
    expect(preview.locator(".preview-record").first).to_be_visible()
    expect(preview).to_contain_text('"customer_company"')
    cloud_before = re.findall(r'"cloud": "(\w+)"', preview.inner_text())
    assert cloud_before and set(cloud_before) != {"azure"}, cloud_before
    page.get_by_label("Source of cloud", exact=True).select_option("constant")
    page.get_by_label("Value of cloud", exact=True).fill("azure")
    expect(preview.locator("pre.json").first).to_contain_text('"cloud": "azure"')
    shown = preview.locator("pre.json")
    expect(shown.filter(has_text='"cloud": "azure"')).to_have_count(shown.count())
    shot(page, "mapping")

    page.get_by_role("button", name="Save and pull again").click()
    mapped = finished_pull(page, nexset, worker, "Saved the field mapping. A full pull is re-reading")
    nexset.refresh_from_db()
    assert nexset.source["mapping"]["fields"]["cloud"]["source"] == "constant"
    assert mapped.options["full"] is True and mapped.rows_read == total
    # Opportunities without an Account have no customer_company: rejected by the mapping, not stored.
    orphans = sum(1 for r in sf_sim.records("Opportunity") if not r.get("AccountId"))
    assert (mapped.rows_stored, mapped.rows_rejected) == (total - orphans, orphans)
    expect(source).to_contain_text("to Clazar co-sell opportunities")
    expect(page.locator("table.compact")).to_contain_text("customer_company")
    shot(page, "mapped")

    # The destination wizard: Create Opportunity against the Clazar simulator; Send Test Data for real.
    CredentialFactory(
        name="Clazar simulator",
        api_base=clazar_sim.url,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
    )
    page.get_by_role("link", name="Send to destination").click()
    expect(page.get_by_label("Nexset to send")).to_have_value(str(nexset.uuid))
    page.get_by_label("Clazar credential").select_option(label="Clazar simulator")
    page.get_by_role("button", name="Next").click()
    samples = page.locator("#samples")
    page.get_by_label("Endpoint").select_option(label="Create Opportunity")
    expect(samples).to_contain_text(f"POST {clazar_sim.url}/opportunities/")
    first = samples.locator("details.sample").first
    expect(first.locator("pre.json")).to_contain_text('"cloud": "azure"')
    page.get_by_label("Test", exact=True).check()
    expect(page.locator(".test-warning")).to_be_visible()  # the samples re-rendered in test mode
    first.get_by_role("button", name="Send Test Data").click()
    expect(first.locator(".test-result")).to_contain_text("HTTP 201", timeout=20_000)
    shot(page, "test-send")

    sent = clazar_sim.requests_log(method="POST", path="/opportunities/")
    assert len(sent) == 1
    body = sent[0]["json"]
    accounts = {a["Id"]: a["Name"] for a in sf_sim.records("Account")}
    opportunities = {o["Name"]: o for o in sf_sim.records("Opportunity")}
    assert body["title"] in opportunities, json.dumps(body)
    assert body["customer_company"] == accounts[opportunities[body["title"]]["AccountId"]]
    assert body["cloud"] == "azure"
    assert clazar_sim.objects("opportunities")[0]["title"] == body["title"]

    page.get_by_label("Destination name").fill("Acme co-sell")
    page.get_by_role("button", name="Done").click()
    expect(page.get_by_role("heading", name=re.compile("Acme co-sell"))).to_be_visible()
    destination = Destination.objects.get(name="Acme co-sell")
    assert destination.nexset_id == nexset.pk
    assert destination.status == Destination.Status.DRAFT


def test_deny_on_the_consent_page_says_access_was_denied_and_connects_nothing(page, login, sims):
    sf_sim, _ = sims
    login(roles.ADMIN)
    connect_through_consent_page(page, sf_sim, "Deny")
    page.wait_for_url(re.compile(r"/salesforce/callback/\?"))
    expect(page.get_by_role("heading", name="Salesforce did not connect")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("Access was denied.")
    expect(page.locator("main")).to_contain_text("Nothing was stored")
    shot(page, "denied")
    assert not SalesforceConnection.objects.exists()
    assert not sf_sim.requests_log(path="/services/oauth2/token"), "no code may be traded after a Deny"

    page.get_by_role("link", name="Back to Salesforce").click()
    expect(page.get_by_role("button", name="Connect to Salesforce")).to_be_visible()
    expect(page.locator("#connection")).not_to_contain_text("Connected to")


# -- a mapping change re-shapes what is stored --------------------------------------------------------


def pulled_then_mapped(page, login, sf_sim, worker) -> tuple[Nexset, Import]:
    """Connect, pull the picked fields, then save the suggested mapping and wait for its full pull."""
    login(roles.ADMIN)
    connect_through_consent_page(page, sf_sim, "Allow")
    page.wait_for_url(re.compile(r"/salesforce/$"))
    nexset = sf_nexset(fields=PICKED)
    page.goto(f"/nexsets/{nexset.uuid}/")
    page.get_by_role("button", name="Pull now").click()
    finished_pull(page, nexset, worker, "Pull queued")
    page.get_by_role("link", name="Map to co-sell opportunities").click()
    expect(page.locator("#mapping-preview .preview-record").first).to_be_visible()
    page.get_by_role("button", name="Save and pull again").click()
    return nexset, finished_pull(page, nexset, worker, "Saved the field mapping.")


def test_a_record_the_new_mapping_rejects_does_not_stay_in_the_nexset_unmapped(page, login, sims, worker):
    sf_sim, _ = sims
    nexset, mapped = pulled_then_mapped(page, login, sf_sim, worker)
    assert mapped.rows_rejected > 0  # the Opportunities without an Account
    unmapped = [r.seq for r in Record.objects.filter(nexset=nexset) if "title" not in r.data]
    assert unmapped == [], f"records still holding Salesforce's raw fields: {unmapped}"
    expect(page.locator("#record-count")).to_have_text(str(mapped.rows_stored))


def test_saving_the_same_mapping_again_keeps_the_schema(page, login, sims, worker):
    sf_sim, _ = sims
    nexset, _ = pulled_then_mapped(page, login, sf_sim, worker)
    nexset.refresh_from_db()
    fields = sorted(nexset.schema)
    assert "title" in fields
    page.locator("#salesforce-source").get_by_role("link", name="Edit field mapping").click()
    page.get_by_role("button", name="Save and pull again").click()
    again = finished_pull(page, nexset, worker, "Saved the field mapping.")
    assert again.options["full"] is True
    nexset.refresh_from_db()
    assert sorted(nexset.schema) == fields
    expect(page.get_by_label("Field", exact=True)).to_be_visible()  # the records search needs the schema
