"""An Admin adds a Clazar credential and tests it, in a real browser, against the simulator."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from flows import roles
from flows.models import Credential

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sim_allowed(settings, clazar_sim):
    settings.CLAZAR_API_BASES = ["https://api.clazar.io", clazar_sim.url]
    return clazar_sim


def test_an_admin_adds_a_credential_and_tests_it(page, login, sim_allowed):
    login(roles.ADMIN)
    page.get_by_role("link", name="Credentials").click()
    expect(page.get_by_role("heading", name="No credentials yet")).to_be_visible()
    page.get_by_role("link", name="Add credential").first.click()
    page.get_by_label("Name").fill("Production")
    page.get_by_label("API base").select_option(sim_allowed.url)
    page.get_by_label("Client ID").fill(DEFAULT_CLIENT_ID)
    page.get_by_label("Client secret").fill(DEFAULT_CLIENT_SECRET)
    page.get_by_role("button", name="Save and test").click()
    expect(page.locator(".toast-success")).to_contain_text(
        "“Production” works: Clazar issued a token valid for"
    )
    expect(page.locator("#credential-status .badge")).to_have_text("Working")
    # The secret is write-only: the field comes back empty.
    expect(page.get_by_label("Client secret")).to_have_value("")
    assert DEFAULT_CLIENT_SECRET not in page.content()


def test_the_test_button_updates_the_status_in_place_and_names_the_failure(page, login, sim_allowed):
    credential = Credential(name="Staging", api_base=sim_allowed.url, client_id=DEFAULT_CLIENT_ID)
    credential.client_secret = "not-the-secret"
    credential.save()
    login(roles.ADMIN)
    page.goto(f"/credentials/{credential.uuid}/")
    page.get_by_role("button", name="Test credential").click()
    status = page.locator("#credential-status")
    expect(status).to_contain_text("Clazar rejected the client ID or secret (HTTP 401")
    expect(status.locator(".badge")).to_have_text("Rejected")
    assert page.url.endswith(f"/credentials/{credential.uuid}/"), "no full page load"


def test_a_failed_htmx_request_shows_an_error_toast(page, login, sim_allowed):
    credential = Credential(name="Gone soon", api_base=sim_allowed.url, client_id=DEFAULT_CLIENT_ID)
    credential.client_secret = DEFAULT_CLIENT_SECRET
    credential.save()
    login(roles.ADMIN)
    page.goto(f"/credentials/{credential.uuid}/")
    Credential.objects.filter(pk=credential.pk).delete()
    page.get_by_role("button", name="Test credential").click()
    expect(page.locator(".toast-error")).to_contain_text("It no longer exists: reload the page.")


def test_a_viewer_sees_no_credentials_link_and_is_told_which_role_is_needed(page, login):
    login(roles.VIEWER)
    expect(page.get_by_role("link", name="Credentials")).to_have_count(0)
    page.goto("/credentials/")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.locator("main")).to_contain_text("This page needs the Admin role; you are a Viewer.")


def test_the_layout_collapses_the_navigation_on_a_phone(page, login):
    login(roles.ADMIN)
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto("/")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav).to_be_hidden()
    page.locator("label.nav-toggle-label").click()
    expect(nav).to_be_visible()
    expect(nav.get_by_role("link", name="Nexsets")).to_be_visible()
