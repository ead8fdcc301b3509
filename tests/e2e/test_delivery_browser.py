"""An Operator activates a destination from the dashboard after reading the preview, watches the progress
bar reach 100% while a real Celery worker delivers to the Clazar simulator, then opens a failed delivery's
attempt in the history and fixes it with edit-and-replay. Real browser, real worker, real sockets."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pytest
from playwright.sync_api import expect

pytest.importorskip(
    "flows.delivery", reason="the delivery engine (flows.delivery) is not installed: nothing would send"
)

from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from flows import records, roles
from flows.models import Delivery, Destination
from tests.factories import CredentialFactory, DestinationFactory, NexsetFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ENGINE_ENV = {
    "CELERY_SWEEP_SECONDS": "1",
    "CLAZAR_CONNECT_TIMEOUT": "2",
    "CLAZAR_READ_TIMEOUT": "3",
    "CLAZAR_DEADLINE": "5",
    "DELIVERY_LEASE_SECONDS": "8",
    "DELIVERY_THREADS": "4",
    "DELIVERY_SLICE_SECONDS": "20",
}


def offers(n: int) -> list[dict]:
    return [{"name": f"Offer {i}", "listing": "lst-1", "buyer": f"1234567890{i:02d}"} for i in range(n)]


@pytest.fixture
def sim(settings, clazar_sim):
    settings.CLAZAR_API_BASES = [*settings.CLAZAR_API_BASES, clazar_sim.url]
    return clazar_sim


@pytest.fixture
def worker(start_proc, sim):
    """A solo Celery worker and beat over the test database and broker, talking to the simulator."""
    env = {**ENGINE_ENV, "CLAZAR_SIMULATOR_URL": sim.url}
    proc = start_proc(
        "worker",
        "celery",
        "-A",
        "clazar_dest",
        "worker",
        "--pool",
        "solo",
        "-n",
        "ui@%h",
        "-l",
        "info",
        env=env,
    )
    start_proc("beat", "celery", "-A", "clazar_dest", "beat", "-l", "info", env=env)
    proc.wait_for("ready", timeout=60)
    return proc


@pytest.fixture
def destination(sim):
    nexset = NexsetFactory(name="Q4 offers")
    records.append(nexset.pk, offers(20))
    credential = CredentialFactory(
        name="Simulator",
        api_base=sim.url,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
        rate_limit=100_000,
    )
    return DestinationFactory(name="Q4 private offers", nexset=nexset, credential=credential)


def wait_until(check: Callable[[], bool], what: str, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(
        f"{what} did not happen within {timeout}s; the worker said:\n{proc.output()[-3000:]}"
    )


def test_activate_watch_it_deliver_then_fix_a_failed_record_by_replaying_it(
    page, login, sim, worker, destination
):
    login(roles.OPERATOR)
    card = page.locator(f"#dest-{destination.uuid}")
    expect(card).to_contain_text("Draft: nothing is sent until it is activated. 20 records waiting")

    # The preview comes first and says exactly what will happen.
    card.get_by_role("link", name="Activate…").click()
    panel = page.locator("#activation-panel")
    host = sim.url.split("://", 1)[1]
    expect(panel).to_contain_text(f"20 records will be sent with Create Private Offer (POST) to {host}.")
    panel.get_by_role("button", name="Activate and send 20 records").click()
    expect(page.locator("#toasts")).to_contain_text("Activated “Q4 private offers”")

    # The board polls while the worker delivers, until every record is delivered; then it slows down.
    expect(card.locator(".pct")).to_have_text("100%", timeout=60_000)
    expect(card).to_contain_text("20 of 20 records delivered")
    expect(card.locator(".count-chips")).to_contain_text("Succeeded 20")
    expect(page.locator("#board")).to_have_attribute("data-poll", "every 30s", timeout=10_000)
    assert len(sim.requests_log(method="POST", path="/private_offers/")) == 20

    # A record without a buyer arrives; Clazar refuses it.
    records.append(destination.nexset_id, [{"name": "No buyer", "listing": "lst-1"}])
    wait_until(
        lambda: destination.deliveries.filter(state=Delivery.State.FAILED).exists(), "the failure", worker
    )
    page.reload()
    expect(card.locator(".pct")).to_have_text("95%")
    card.get_by_role("link", name=re.compile("Failed 1")).click()

    # The history, filtered on failures; the attempt opens inline.
    expect(page.get_by_role("heading", name=re.compile("Delivery history"))).to_be_visible()
    failed = destination.deliveries.get(state=Delivery.State.FAILED)
    page.get_by_role("link", name=f"Inspect delivery {str(failed.uuid)[:8]}").click()
    inspector = page.locator(f"#inspect-{failed.uuid}")
    expect(inspector.locator(".attempt").first).to_contain_text("HTTP 400")
    expect(inspector.locator(".exchange")).to_contain_text("This field is required.")
    expect(inspector.locator(".exchange")).to_contain_text("Authorization: Bearer ****")

    # Edit and replay: the button waits for valid JSON, then the fixed body is queued and delivered.
    inspector.get_by_text("Edit and replay…").click()
    body = inspector.locator("textarea")
    replay = inspector.get_by_role("button", name="Replay with this body")
    body.fill('{"name": "No buyer", "listing": "lst-1", "buyer": ')
    expect(replay).to_be_disabled()
    expect(inspector.locator(".json-error")).to_contain_text("Not valid JSON")
    body.fill(json.dumps({"name": "No buyer", "listing": "lst-1", "buyer": "123456789099"}))
    replay.click()
    expect(page.locator("#toasts")).to_contain_text("queued with the edited body")
    expect(page.locator(f"#row-{failed.uuid} .badge")).not_to_have_text("Failed")
    wait_until(
        lambda: Delivery.objects.get(pk=failed.pk).state == Delivery.State.SUCCEEDED, "the replay", worker
    )
    created = sim.requests_log(method="POST", path="/private_offers/")[-1]
    assert created["json"]["buyer"] == "123456789099"

    page.goto("/")
    expect(card.locator(".pct")).to_have_text("100%")
    expect(card).to_contain_text("21 of 21 records delivered")
    assert Destination.objects.get(pk=destination.pk).status == "active"
