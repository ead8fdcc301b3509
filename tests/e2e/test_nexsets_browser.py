"""An Operator uploads a file in a real browser, a real Celery worker imports it while the page polls its
progress, then the records are browsed: pages, search, the JSON of a record. And a webhook is created."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

from flows import roles
from flows.models import Import, Nexset

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SHOTS = os.environ.get("SCREENSHOTS_DIR")


def shot(page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def test_an_operator_uploads_a_csv_and_watches_the_import_finish(page, login, start_proc, tmp_path):
    rows = "".join(
        f"{i},SKU-{i % 97:03d},{i % 500}.{i % 100:02d},{'true' if i % 3 else 'false'}\n"
        for i in range(1, 60_001)
    )
    path = tmp_path / "orders.csv"
    path.write_text("id,sku,price,in_stock\n" + rows)
    login(roles.OPERATOR)
    page.goto("/nexsets/")
    expect(page.get_by_role("heading", name="No Nexsets yet")).to_be_visible()
    page.get_by_role("link", name="Upload file").first.click()
    shot(page, "upload-form")
    page.get_by_label("File").set_input_files(str(path))
    page.get_by_role("button", name="Upload and import").click()

    page.wait_for_url(re.compile(r"/imports/[0-9a-f-]+/$"))
    status = page.locator(".import-status")
    # No worker yet: the page shows the queued import and keeps polling.
    expect(status.locator("progress")).to_be_visible()
    expect(status).to_contain_text("Waiting for a worker")
    assert status.get_attribute("hx-trigger") == "every 1s"
    shot(page, "import-queued")
    # A real worker subprocess on the same test database and broker picks it up; the page follows.
    start_proc("worker", "celery", "-A", "clazar_dest", "worker", "--pool", "solo", "-l", "info")
    expect(status.get_by_role("status")).to_have_text("Imported 60,000 rows.", timeout=90_000)
    expect(status.locator("progress")).to_have_count(0)
    assert status.get_attribute("hx-trigger") is None, "polling stops when the import is done"
    expect(status).to_contain_text("60,000 stored")
    shot(page, "import-done")
    imp = Import.objects.get()
    assert imp.status == Import.Status.SUCCEEDED

    page.get_by_role("link", name="Open the Nexset").click()
    expect(page.locator("#record-count")).to_have_text("60,000")
    expect(page.get_by_role("cell", name="SKU-001").first).to_be_visible()
    schema = page.locator("table.compact")
    expect(schema).to_contain_text("price")
    expect(schema).to_contain_text("number")
    shot(page, "nexset-detail")

    page.get_by_role("link", name="Next ›").click()
    expect(page.locator("#record-51")).to_be_visible()
    assert "after=50" in page.url
    page.get_by_role("link", name="Last »").click()
    expect(page.locator("#record-60000")).to_be_visible()

    page.get_by_label("Field").select_option("sku")
    page.get_by_label("equals").fill("SKU-042")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#record-42")).to_be_visible()
    expect(page.locator("#record-139")).to_be_visible()
    expect(page.locator("table.records tbody tr")).to_have_count(50)

    page.get_by_role("link", name="JSON of record 42", exact=True).click()
    expect(page.locator(".json-row pre")).to_contain_text('"sku": "SKU-042"')
    shot(page, "nexset-json")
    page.get_by_role("link", name="JSON of record 42", exact=True).click()
    expect(page.locator(".json-row")).to_have_count(0)


def test_a_bad_file_is_refused_in_the_form_without_leaving_the_page(page, login, tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("id,price,id\n1,2,3\n")
    login(roles.OPERATOR)
    page.goto("/nexsets/upload/")
    page.get_by_label("File").set_input_files(str(path))
    page.get_by_role("button", name="Upload and import").click()
    expect(page.get_by_role("alert")).to_contain_text("names the column “id” twice (columns 1 and 3)")
    assert page.url.endswith("/nexsets/upload/")
    assert not Nexset.objects.exists()


def test_an_operator_creates_a_webhook_and_rotates_its_secret(page, login):
    login(roles.OPERATOR)
    page.goto("/nexsets/")
    page.get_by_role("link", name="New webhook").first.click()
    page.get_by_label("Name").fill("Orders feed")
    page.get_by_role("button", name="Create webhook").click()
    secret = page.get_by_label("Signing secret").input_value()
    assert secret.startswith("whsec_")
    shot(page, "webhook-created")
    page.get_by_role("link", name="Open the Nexset").click()
    assert secret not in page.content()
    page.get_by_role("button", name="Rotate secret").click()
    expect(page.locator("#webhook")).to_contain_text("New signing secret. Copy it now")
    new = page.get_by_label("New webhook secret").input_value()
    assert new.startswith("whsec_") and new != secret
    shot(page, "webhook-rotated")
