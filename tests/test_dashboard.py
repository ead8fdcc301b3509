"""The dashboard (flows/views/dashboard.py, flows/charts.py): counts, progress, rate, chart, polling that
stops itself, banners, empty states; and Activate (preview first) / Deactivate."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from flows import charts, records
from flows.models import AuditEvent, Credential, Delivery, Destination
from tests.deliveries import DeliveryFactory, deliveries
from tests.factories import CredentialFactory, DestinationFactory, NexsetFactory

pytestmark = pytest.mark.django_db
S = Delivery.State
HTMX = {"HX-Request": "true"}
BOARD = {**HTMX, "HX-Target": "board"}


def card(page: str, destination: Destination) -> str:
    start = page.index(f'id="dest-{destination.uuid}"')
    end = page.find("</article>", start)
    return page[start:end]


def poll_of(page: str) -> str | None:
    match = re.search(r'<div id="board"[^>]*?hx-trigger="([^"]+)"', page)
    return match.group(1) if match else None


def test_each_card_counts_deliveries_by_state_without_test_sends(viewer_client):
    destination = DestinationFactory(name="Offers", status="active")
    deliveries(destination, {S.SUCCEEDED: 3, S.FAILED: 2, S.QUEUED: 1})
    DeliveryFactory(destination=destination, state=S.SUCCEEDED, is_test=True)
    page = viewer_client.get(reverse("dashboard")).content.decode()
    mine = card(page, destination)
    assert re.search(r"Succeeded <strong>3</strong>", mine)
    assert re.search(r"Failed <strong>2</strong>", mine)
    assert re.search(r"Queued <strong>1</strong>", mine)
    assert f'href="/destinations/{destination.uuid}/history/?state=failed"' in mine


def test_progress_is_delivered_records_out_of_all_records_planned_or_not(viewer_client):
    destination = DestinationFactory(status="active")
    deliveries(destination, {S.SUCCEEDED: 3, S.QUEUED: 1})  # 4 records, planned
    records.append(destination.nexset_id, [{"name": "later"}] * 4)  # 4 more, not planned yet
    Destination.objects.filter(pk=destination.pk).update(cursor=4)
    mine = card(viewer_client.get(reverse("dashboard")).content.decode(), destination)
    assert 'value="37"' in mine
    assert "<strong>3</strong> of 8 records delivered" in mine
    assert "4 still to plan" in mine


def test_batched_destinations_count_records_not_requests(viewer_client):
    destination = DestinationFactory(
        status="active",
        config={"mode": "template", "template": "create_private_offer", "batching": {"enabled": True}},
    )
    batch = DeliveryFactory(destination=destination, state=S.SUCCEEDED)
    records.append(destination.nexset_id, [{"name": "b"}])
    second = destination.nexset.records.order_by("-seq").first()
    batch.items.create(record=second, destination=destination)
    mine = card(viewer_client.get(reverse("dashboard")).content.decode(), destination)
    assert "<strong>2</strong> of 2 records delivered" in mine


def test_the_rate_counts_deliveries_finished_in_the_last_minute(viewer_client):
    destination = DestinationFactory(status="active")
    recent = deliveries(destination, {S.SUCCEEDED: 2, S.FAILED: 1})
    old = DeliveryFactory(destination=destination, state=S.SUCCEEDED)
    Delivery.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(minutes=5))
    mine = card(viewer_client.get(reverse("dashboard")).content.decode(), destination)
    assert f"{len(recent)} finished in the last minute" in mine


def test_the_chart_stacks_outcomes_per_ten_minutes_as_svg(viewer_client):
    destination = DestinationFactory(status="paused")
    deliveries(destination, {S.SUCCEEDED: 3, S.FAILED: 1})
    mine = card(viewer_client.get(reverse("dashboard")).content.decode(), destination)
    assert '<svg viewBox="0 0 288 56"' in mine
    assert mine.count('class="seg seg-succeeded"') == 1
    assert mine.count('class="seg seg-failed"') == 1
    assert re.search(r"<title>\d\d:\d\d–\d\d:\d\d: 1 failed, 3 succeeded</title>", mine)
    assert "Deliveries finished in the last 24 hours: 3 succeeded, 1 failed." in mine


def test_the_last_error_is_shown_with_its_time(viewer_client):
    destination = DestinationFactory(status="active")
    DeliveryFactory(destination=destination, state=S.FAILED, last_error="buyer: This field is required.")
    DeliveryFactory(destination=destination, state=S.SUCCEEDED)
    mine = card(viewer_client.get(reverse("dashboard")).content.decode(), destination)
    assert "Last error" in mine
    assert "buyer: This field is required." in mine


# Polling --------------------------------------------------------------------------------------------------------


def test_it_polls_every_3_seconds_while_an_active_destination_has_work(viewer_client):
    destination = DestinationFactory(status="active")
    deliveries(destination, {S.QUEUED: 1, S.SUCCEEDED: 1})
    assert poll_of(viewer_client.get(reverse("dashboard")).content.decode()) == "every 3s"
    fragment = viewer_client.get(reverse("dashboard"), headers=BOARD).content.decode()
    assert fragment.lstrip().startswith('<div id="board"')
    assert "<html" not in fragment
    assert poll_of(fragment) == "every 3s"


def test_it_polls_while_records_wait_to_be_planned(viewer_client):
    destination = DestinationFactory(status="active")
    records.append(destination.nexset_id, [{"name": "a"}])
    assert poll_of(viewer_client.get(reverse("dashboard"), headers=BOARD).content.decode()) == "every 3s"


def test_it_slows_down_when_active_destinations_are_caught_up(viewer_client):
    destination = DestinationFactory(status="active")
    deliveries(destination, {S.SUCCEEDED: 2})
    Destination.objects.filter(pk=destination.pk).update(cursor=2)
    assert poll_of(viewer_client.get(reverse("dashboard"), headers=BOARD).content.decode()) == "every 30s"


def test_polling_stops_when_nothing_is_active_or_pending(viewer_client):
    destination = DestinationFactory(status="paused")
    deliveries(destination, {S.QUEUED: 3, S.SUCCEEDED: 2})  # pending, but paused: nothing moves
    DestinationFactory(status="draft")
    page = viewer_client.get(reverse("dashboard")).content.decode()
    assert poll_of(page) is None
    assert 'data-poll="off"' in page
    fragment = viewer_client.get(reverse("dashboard"), headers=BOARD).content.decode()
    assert poll_of(fragment) is None
    assert "hx-trigger" not in fragment.split(">", 1)[0]


def test_in_flight_requests_of_a_paused_destination_keep_the_poll_going_until_recorded(viewer_client):
    destination = DestinationFactory(status="paused")
    deliveries(destination, {S.SENDING: 1})
    assert poll_of(viewer_client.get(reverse("dashboard"), headers=BOARD).content.decode()) == "every 3s"


# Banners and empty states ---------------------------------------------------------------------------------------


def test_banners_name_what_needs_a_person(viewer_client):
    destination = DestinationFactory(name="Offers", status="auto_paused", paused_reason="HTTP 503 ten times.")
    deliveries(destination, {S.NEEDS_ATTENTION: 2})
    CredentialFactory(name="Old key", status=Credential.Status.REJECTED, last_error="Clazar rejected it.")
    page = viewer_client.get(reverse("dashboard")).content.decode()
    assert "<strong>Offers</strong> was paused automatically: HTTP 503 ten times." in page
    assert "2 deliveries need a person's decision" in page
    assert f"/destinations/{destination.uuid}/history/?state=needs_attention" in page
    assert "Clazar rejects the credential <strong>Old key</strong>: Clazar rejected it." in page


def test_an_empty_dashboard_says_what_to_do_next(operator_client):
    CredentialFactory()
    NexsetFactory()
    page = operator_client.get(reverse("dashboard")).content.decode()
    assert "No destinations yet" in page
    assert "set up a destination</a>" in page


def test_a_draft_says_nothing_is_sent_until_activated(viewer_client):
    destination = DestinationFactory(status="draft")
    records.append(destination.nexset_id, [{"name": "a"}, {"name": "b"}])
    mine = card(viewer_client.get(reverse("dashboard")).content.decode(), destination)
    assert "Draft: nothing is sent until it is activated. 2 records waiting" in mine
    assert "<svg" not in mine


def test_operators_get_activate_and_deactivate_buttons_viewers_do_not(viewer_client, operator_client):
    draft = DestinationFactory(status="draft")
    active = DestinationFactory(status="active")
    page = operator_client.get(reverse("dashboard")).content.decode()
    assert "Activate…" in card(page, draft)
    assert "Deactivate" in card(page, active)
    seen = viewer_client.get(reverse("dashboard")).content.decode()
    assert "Activate…" not in seen and "Deactivate" not in seen


# Activation ------------------------------------------------------------------------------------------------------


@pytest.fixture
def offers():
    destination = DestinationFactory(name="Q4 offers")
    records.append(destination.nexset_id, [{"name": f"Offer {i}"} for i in range(12)])
    return destination


def test_activation_shows_what_will_be_sent_before_anything_is(operator_client, offers):
    url = reverse("destination_activate", args=[offers.uuid])
    page = operator_client.get(url, headers={**HTMX, "HX-Target": "activation"}).content.decode()
    assert page.lstrip().startswith('<section class="card activation"')
    text = re.sub(r"<[^>]+>", "", page)
    assert "12 records will be sent with Create Private Offer (POST) to api.clazar.io." in text
    assert "Activate and send 12 records" in text
    offers.refresh_from_db()
    assert offers.status == "draft"


def test_activating_sets_the_destination_active_and_is_audited(operator_client, offers):
    url = reverse("destination_activate", args=[offers.uuid])
    response = operator_client.post(url, {"next": reverse("dashboard")})
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard")
    offers.refresh_from_db()
    assert offers.status == "active"
    assert AuditEvent.objects.filter(action="destination.activate", object_id=str(offers.uuid)).exists()


def test_activation_through_htmx_goes_back_to_where_the_button_was(operator_client, offers):
    url = reverse("destination_activate", args=[offers.uuid])
    response = operator_client.post(url, {"next": reverse("dashboard")}, headers=HTMX)
    assert response["HX-Redirect"] == reverse("dashboard")


def test_problems_are_listed_and_block_activation(operator_client, offers):
    Credential.objects.filter(pk=offers.credential_id).update(status="rejected", last_error="Bad secret.")
    url = reverse("destination_activate", args=[offers.uuid])
    page = operator_client.get(url).content.decode()
    assert "Fix these before activating" in page
    assert "Bad secret." in page
    assert re.search(r'<button class="btn btn-primary" type="submit" disabled data-blocked>', page)
    response = operator_client.post(url)
    assert response.status_code == 422
    offers.refresh_from_db()
    assert offers.status == "draft"


def test_irreversible_templates_need_the_count_typed(operator_client):
    destination = DestinationFactory(
        config={"mode": "template", "template": "publish_private_offer", "id_value": "{id}"}
    )
    records.append(destination.nexset_id, [{"id": f"po-{i}"} for i in range(3)])
    url = reverse("destination_activate", args=[destination.uuid])
    page = operator_client.get(url).content.decode()
    assert "This cannot be undone." in page
    assert 'data-confirm="3"' in page
    refused = operator_client.post(url, {"confirm": "2"})
    assert refused.status_code == 422
    assert "Type 3" in refused.content.decode()
    destination.refresh_from_db()
    assert destination.status == "draft"
    assert operator_client.post(url, {"confirm": "3"}).status_code == 302
    destination.refresh_from_db()
    assert destination.status == "active"


def test_deactivate_is_one_click_that_refreshes_the_board_with_a_toast(operator_client):
    destination = DestinationFactory(name="Offers", status="active")
    url = reverse("destination_deactivate", args=[destination.uuid])
    response = operator_client.post(url, headers=BOARD)
    assert response.status_code == 200
    assert response.content.decode().lstrip().startswith('<div id="board"')
    toast = json.loads(response["HX-Trigger"])["messages"][0]
    assert toast["text"].startswith("Deactivated “Offers”")
    destination.refresh_from_db()
    assert destination.status == "paused"
    assert AuditEvent.objects.filter(action="destination.deactivate").exists()


def test_deactivate_from_the_destination_page_refreshes_it(operator_client):
    destination = DestinationFactory(status="active")
    response = operator_client.post(reverse("destination_deactivate", args=[destination.uuid]), headers=HTMX)
    assert response["HX-Refresh"] == "true"
    plain = operator_client.post(reverse("destination_deactivate", args=[destination.uuid]))
    assert plain["Location"] == reverse("destination_detail", args=[destination.uuid])


def test_the_destination_page_links_history_and_offers_activate(operator_client):
    destination = DestinationFactory()
    page = operator_client.get(reverse("destination_detail", args=[destination.uuid])).content.decode()
    assert f'href="/destinations/{destination.uuid}/history/"' in page
    assert f'hx-get="/destinations/{destination.uuid}/activate/"' in page


def test_a_local_next_only(operator_client, offers):
    url = reverse("destination_activate", args=[offers.uuid])
    response = operator_client.post(url, {"next": "https://evil.example/"})
    assert response["Location"] == reverse("destination_detail", args=[offers.uuid])


# The chart helper (pure) ----------------------------------------------------------------------------------------


def test_the_chart_window_ends_with_the_bucket_holding_now():
    now = datetime(2025, 11, 25, 14, 37, 12, tzinfo=UTC)
    first, count = charts.window(now)
    assert count == 144
    assert first + charts.BUCKET * 143 == datetime(2025, 11, 25, 14, 30, tzinfo=UTC)


def test_bars_stack_in_a_fixed_order_and_the_peak_fills_the_height():
    now = datetime(2025, 11, 25, 14, 37, tzinfo=UTC)
    bucket = datetime(2025, 11, 25, 14, 30, tzinfo=UTC)
    earlier = bucket - timedelta(hours=1)
    chart = charts.stacked(
        {(bucket, "failed"): 1, (bucket, "succeeded"): 3, (earlier, "succeeded"): 2},
        now,
        width=144,
        height=40,
    )
    assert chart.peak == 4
    last = chart.bars[-1]
    assert [s.state for s in last.segments] == ["succeeded", "failed"]
    assert last.segments[0].height + last.segments[1].height == 40
    assert last.segments[-1].y == 0
    assert last.x == 143
    assert chart.bars[0].total == 2
    assert chart.totals == (("succeeded", "succeeded", 5), ("failed", "failed", 1))


def test_counts_outside_the_window_are_left_out():
    now = datetime(2025, 11, 25, 14, 37, tzinfo=UTC)
    chart = charts.stacked({(now - timedelta(days=2), "succeeded"): 9}, now)
    assert chart.empty
    assert chart.summary == "No deliveries finished in the last 24 hours."


# Reading fast at scale (flows/board.py) ------------------------------------------------------------------------


def test_counts_beyond_the_cap_show_as_the_cap_plus(viewer_client, monkeypatch):
    from flows import board

    monkeypatch.setattr(board, "CAP", 2)
    destination = DestinationFactory(status="active")
    deliveries(destination, {S.QUEUED: 3, S.FAILED: 2, S.SUCCEEDED: 4})
    mine = card(viewer_client.get(reverse("dashboard")).content.decode(), destination)
    assert re.search(r"Queued <strong>2\+</strong>", mine)
    assert re.search(r"Failed <strong>2</strong>", mine)
    assert re.search(r"Succeeded <strong>4</strong>", mine), "succeeded is exact at any size"


def test_the_succeeded_count_stays_exact_as_its_cached_base_is_carried_forward():
    from flows import board

    destination = DestinationFactory(status="active")
    t0 = timezone.now()

    def finished(at):
        d = DeliveryFactory(destination=destination, state=S.SUCCEEDED)
        Delivery.objects.filter(pk=d.pk).update(finished_at=at)

    def succeeded(at):
        return board.read([destination], at).counts[destination.pk][S.SUCCEEDED]

    finished(t0 - timedelta(hours=1))
    finished(t0 - timedelta(minutes=1))
    assert succeeded(t0) == 2
    finished(t0 + timedelta(minutes=5))
    assert succeeded(t0 + timedelta(minutes=6)) == 3
    assert succeeded(t0 + timedelta(hours=1)) == 3
    entry = board.cache.get(f"board:succeeded:{destination.uuid}")
    assert entry["base"] == 3, "the base was carried forward to the settled edge"
    finished(t0 + timedelta(minutes=55))
    assert succeeded(t0 + timedelta(hours=1)) == 4
    DeliveryFactory(destination=destination, state=S.SUCCEEDED, is_test=True)
    assert succeeded(t0 + timedelta(hours=1)) == 4
    assert succeeded(t0 + timedelta(hours=1, minutes=30)) == 4


def test_closed_chart_buckets_come_from_the_cache_and_recent_ones_are_counted_again():
    from flows import board

    destination = DestinationFactory(status="active")
    now = timezone.now()
    old = DeliveryFactory(destination=destination, state=S.FAILED)
    Delivery.objects.filter(pk=old.pk).update(finished_at=now - timedelta(hours=2))
    DeliveryFactory(destination=destination, state=S.SUCCEEDED)
    first = board.read([destination], now).outcomes[destination.pk]
    assert sorted(first.values()) == [1, 1]
    assert board.read([destination], now).outcomes[destination.pk] == first, "nothing is counted twice"
    # Retried later: the chart keeps showing that it failed two hours ago.
    Delivery.objects.filter(pk=old.pk).update(state=S.QUEUED, finished_at=None)
    DeliveryFactory(destination=destination, state=S.SUCCEEDED)
    again = board.read([destination], now + timedelta(seconds=5)).outcomes[destination.pk]
    assert sum(n for (_, state), n in again.items() if state == "failed") == 1
    assert sum(n for (_, state), n in again.items() if state == "succeeded") == 2
