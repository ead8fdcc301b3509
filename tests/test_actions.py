"""Operator actions on deliveries (flows/actions.py) and their views: state transitions, roles, audit."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from flows import actions, roles
from flows.history import Filters
from flows.models import Attempt, AuditEvent, Delivery, Record
from tests.deliveries import DeliveryFactory, deliveries
from tests.factories import DestinationFactory, UserFactory

pytestmark = pytest.mark.django_db
S = Delivery.State


@pytest.fixture
def operator():
    return UserFactory(role=roles.OPERATOR)


@pytest.fixture
def destination():
    return DestinationFactory(status="active")


# Retry -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [S.FAILED, S.EXHAUSTED, S.CANCELLED])
def test_retry_queues_a_finished_delivery_again_now_and_wakes_its_destination(
    state, operator, destination, django_capture_on_commit_callbacks
):
    delivery = DeliveryFactory(destination=destination, state=state)
    with django_capture_on_commit_callbacks() as callbacks:
        actions.retry(delivery.pk, user=operator)
    delivery.refresh_from_db()
    assert delivery.state == S.QUEUED
    assert delivery.finished_at is None
    assert abs((delivery.next_attempt_at - timezone.now()).total_seconds()) < 5
    assert delivery.attempts == 1  # attempt numbers keep counting: the next one is #2
    assert callbacks, "the destination is woken after commit"
    event = AuditEvent.objects.get(action="delivery.retry")
    assert event.actor == operator
    assert event.object_id == str(delivery.uuid)
    assert event.changes["state"] == {"before": state, "after": "queued"}


@pytest.mark.parametrize("state", [S.QUEUED, S.SENDING, S.SUCCEEDED, S.RETRY_SCHEDULED, S.NEEDS_ATTENTION])
def test_retry_refuses_deliveries_that_are_pending_done_or_waiting_for_a_decision(state, operator):
    delivery = DeliveryFactory(state=state)
    with pytest.raises(actions.ActionError, match="can't be retried"):
        actions.retry(delivery.pk, user=operator)
    delivery.refresh_from_db()
    assert delivery.state == state
    assert not AuditEvent.objects.filter(action="delivery.retry").exists()


def test_retry_needs_the_operator_role():
    delivery = DeliveryFactory(state=S.FAILED)
    with pytest.raises(actions.ActionError, match="Only Operators"):
        actions.retry(delivery.pk, user=UserFactory(role=roles.VIEWER))
    assert Delivery.objects.get(pk=delivery.pk).state == S.FAILED


def test_test_sends_are_never_retried(operator):
    delivery = DeliveryFactory(state=S.FAILED, is_test=True)
    with pytest.raises(actions.ActionError, match="test send"):
        actions.retry(delivery.pk, user=operator)


def test_a_record_that_never_became_a_request_is_not_retried(operator):
    delivery = DeliveryFactory(state=S.FAILED, url="", body=None, last_error="Record 3 was not sent: no id")
    with pytest.raises(actions.ActionError, match="never became a request"):
        actions.retry(delivery.pk, user=operator)


def test_a_delivery_cancelled_while_its_outcome_was_unknown_is_not_retried_blindly(operator):
    delivery = DeliveryFactory(state=S.CANCELLED)
    Attempt.objects.filter(delivery=delivery).update(outcome=Attempt.Outcome.UNKNOWN)
    with pytest.raises(actions.ActionError, match="may have been applied"):
        actions.retry(delivery.pk, user=operator)


# Edit and replay -------------------------------------------------------------------------------------------


def test_replay_stores_the_edited_body_on_that_delivery_only_and_audits_the_old_one(
    operator, destination, django_capture_on_commit_callbacks
):
    failed, other = deliveries(destination, {S.FAILED: 2}, data={"name": "Acme"})
    with django_capture_on_commit_callbacks() as callbacks:
        actions.replay(failed.pk, '{\n  "name": "Acme",\n  "buyer": "123456789012"\n}', user=operator)
    failed.refresh_from_db()
    other.refresh_from_db()
    assert bytes(failed.body) == b'{"name":"Acme","buyer":"123456789012"}'
    assert failed.state == S.QUEUED
    assert bytes(other.body) == b'{"name": "Acme"}'
    assert other.state == S.FAILED
    record = Record.objects.get(deliveries=failed)
    assert record.data == {"name": "Acme"}, "the record itself is not changed"
    assert callbacks
    event = AuditEvent.objects.get(action="delivery.replay")
    assert event.changes["body"] == {
        "before": '{"name": "Acme"}',
        "after": '{"name":"Acme","buyer":"123456789012"}',
    }
    assert event.changes["state"]["after"] == "queued"


def test_replay_refuses_a_body_that_is_not_json_and_says_where(operator):
    delivery = DeliveryFactory(state=S.FAILED)
    before = bytes(delivery.body)
    with pytest.raises(actions.ActionError, match=r"not valid JSON: Expecting .* line 2, column"):
        actions.replay(delivery.pk, '{"name": "x",\n}', user=operator)
    delivery.refresh_from_db()
    assert bytes(delivery.body) == before
    assert delivery.state == S.FAILED


def test_replay_of_a_request_without_a_body_says_to_retry_instead(operator):
    delivery = DeliveryFactory(state=S.FAILED, method="DELETE", body=None)
    with pytest.raises(actions.ActionError, match="no body to edit: retry it instead"):
        actions.replay(delivery.pk, "{}", user=operator)


# Cancel --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [S.QUEUED, S.RETRY_SCHEDULED, S.NEEDS_ATTENTION])
def test_cancel_drops_pending_work(state, operator):
    delivery = DeliveryFactory(state=state, next_attempt_at=timezone.now())
    actions.cancel(delivery.pk, user=operator)
    delivery.refresh_from_db()
    assert delivery.state == S.CANCELLED
    assert delivery.next_attempt_at is None
    assert delivery.finished_at is not None
    assert AuditEvent.objects.get(action="delivery.cancel").changes["state"] == {
        "before": state,
        "after": "cancelled",
    }


@pytest.mark.parametrize("state", [S.SENDING, S.SUCCEEDED, S.FAILED, S.UNKNOWN])
def test_cancel_leaves_in_flight_and_finished_deliveries_alone(state, operator):
    delivery = DeliveryFactory(state=state)
    with pytest.raises(actions.ActionError, match="can't be cancelled"):
        actions.cancel(delivery.pk, user=operator)
    assert Delivery.objects.get(pk=delivery.pk).state == state


def test_cancel_loses_cleanly_to_a_worker_that_claimed_the_delivery_first(operator):
    delivery = DeliveryFactory(state=S.QUEUED)
    stale = Delivery.objects.get(pk=delivery.pk)
    Delivery.objects.filter(pk=delivery.pk).update(state=S.SENDING)  # a worker's claim
    with pytest.raises(actions.ActionError, match="“Sending” now"):
        actions._transition(stale, actions.CANCELLABLE, "cancelled", state=S.CANCELLED)
    assert Delivery.objects.get(pk=delivery.pk).state == S.SENDING


# Needs attention ---------------------------------------------------------------------------------------------


def test_it_was_created_settles_the_delivery_with_the_id_entered_and_writes_the_response(
    operator, django_capture_on_commit_callbacks
):
    destination = DestinationFactory(
        status="active",
        config={"mode": "template", "template": "create_private_offer", "response_webhook": True},
    )
    delivery = DeliveryFactory(
        destination=destination, state=S.NEEDS_ATTENTION, last_error="The connection dropped."
    )
    with django_capture_on_commit_callbacks(execute=True):
        actions.mark_created(delivery.pk, "  po-7f3a  ", user=operator)
    delivery.refresh_from_db()
    assert delivery.state == S.SUCCEEDED
    assert delivery.created_object_id == "po-7f3a"
    assert delivery.finished_at is not None
    event = AuditEvent.objects.get(action="delivery.mark_created")
    assert event.changes["created_object_id"] == {"before": "", "after": "po-7f3a"}
    response = Record.objects.get(nexset__feeding_destination=destination)
    assert response.data["id"] == "po-7f3a"


@pytest.mark.parametrize("typed", ["", "   ", "two words", "x" * 256])
def test_it_was_created_needs_a_plausible_id(typed, operator):
    delivery = DeliveryFactory(state=S.NEEDS_ATTENTION)
    with pytest.raises(actions.ActionError, match="Enter the id"):
        actions.mark_created(delivery.pk, typed, user=operator)
    assert Delivery.objects.get(pk=delivery.pk).state == S.NEEDS_ATTENTION


def test_send_again_is_an_audited_decision_that_queues_the_request(
    operator, django_capture_on_commit_callbacks
):
    delivery = DeliveryFactory(state=S.NEEDS_ATTENTION)
    with django_capture_on_commit_callbacks() as callbacks:
        actions.send_again(delivery.pk, user=operator)
    delivery.refresh_from_db()
    assert delivery.state == S.QUEUED
    assert callbacks
    event = AuditEvent.objects.get(action="delivery.send_again")
    assert "chose to send it again" in event.changes["details"]["decision"]


def test_send_again_only_applies_to_deliveries_waiting_for_a_decision(operator):
    delivery = DeliveryFactory(state=S.FAILED)
    with pytest.raises(actions.ActionError, match="can't be sent again"):
        actions.send_again(delivery.pk, user=operator)


# Bulk ----------------------------------------------------------------------------------------------------------


def test_the_bulk_retry_preview_count_is_exactly_what_is_retried(operator, destination):
    deliveries(destination, {S.FAILED: 5, S.EXHAUSTED: 2, S.SUCCEEDED: 3, S.QUEUED: 2, S.CANCELLED: 1})
    DeliveryFactory(destination=destination, state=S.FAILED, is_test=True)
    DeliveryFactory(destination=destination, state=S.FAILED, url="", body=None)
    DeliveryFactory(state=S.FAILED)  # another destination
    filters = Filters.parse({}, destination)
    shown = actions.preview(destination, filters, "retry")
    assert shown.count == 8
    changed = actions.bulk(destination, filters, "retry", upto=shown.upto, user=operator)
    assert changed == shown.count
    assert destination.deliveries.filter(is_test=False, state=S.QUEUED).count() == 2 + 8
    assert destination.deliveries.get(is_test=True).state == S.FAILED
    event = AuditEvent.objects.get(action="delivery.bulk_retry")
    assert event.changes["details"]["count"] == 8
    assert event.object_id == str(destination.uuid)


def test_a_bulk_retry_leaves_out_failures_that_arrived_after_the_preview(operator, destination):
    deliveries(destination, {S.FAILED: 3})
    filters = Filters.parse({}, destination)
    shown = actions.preview(destination, filters, "retry")
    late = DeliveryFactory(destination=destination, state=S.FAILED)
    assert actions.bulk(destination, filters, "retry", upto=shown.upto, user=operator) == 3
    late.refresh_from_db()
    assert late.state == S.FAILED


def test_a_bulk_retry_follows_the_filter(operator, destination):
    deliveries(destination, {S.FAILED: 2})
    deliveries(destination, {S.EXHAUSTED: 3})
    filters = Filters.parse({"status": "503"}, destination)
    shown = actions.preview(destination, filters, "retry")
    assert shown.count == 3
    actions.bulk(destination, filters, "retry", upto=shown.upto, user=operator)
    assert destination.deliveries.filter(state=S.FAILED).count() == 2
    assert destination.deliveries.filter(state=S.QUEUED).count() == 3


def test_bulk_cancel_drops_queued_and_retry_scheduled_ones(operator, destination):
    deliveries(destination, {S.QUEUED: 2, S.RETRY_SCHEDULED: 1, S.SENDING: 1, S.NEEDS_ATTENTION: 1})
    filters = Filters.parse({"state": "pending"}, destination)
    shown = actions.preview(destination, filters, "cancel")
    assert shown.count == 3
    assert actions.bulk(destination, filters, "cancel", upto=shown.upto, user=operator) == 3
    assert destination.deliveries.get(state=S.SENDING)
    assert destination.deliveries.get(state=S.NEEDS_ATTENTION)


def test_bulk_actions_need_the_operator_role(destination):
    deliveries(destination, {S.FAILED: 1})
    filters = Filters.parse({}, destination)
    shown = actions.preview(destination, filters, "retry")
    with pytest.raises(actions.ActionError):
        actions.bulk(destination, filters, "retry", upto=shown.upto, user=UserFactory(role=roles.VIEWER))
    assert destination.deliveries.get().state == S.FAILED


# Views ---------------------------------------------------------------------------------------------------------

HTMX = {"HX-Request": "true"}


def test_retry_from_the_inspector_re_renders_it_with_a_toast_and_the_row_out_of_band(operator_client):
    delivery = DeliveryFactory(state=S.FAILED)
    url = reverse("delivery_retry", args=[delivery.uuid])
    response = operator_client.post(
        url, {"row": "1"}, headers={**HTMX, "HX-Target": f"inspect-{delivery.uuid}"}
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert f'id="inspect-{delivery.uuid}"' in page
    assert f'<tr id="row-{delivery.uuid}" hx-swap-oob="true">' in page
    assert "badge-queued" in page
    toast = json.loads(response["HX-Trigger"])["messages"][0]
    assert toast["level"] == "success" and "queued again" in toast["text"]


def test_retry_without_htmx_redirects_back_to_the_delivery(operator_client):
    delivery = DeliveryFactory(state=S.FAILED)
    response = operator_client.post(reverse("delivery_retry", args=[delivery.uuid]))
    assert response.status_code == 302
    assert response["Location"] == reverse("delivery_detail", args=[delivery.uuid])
    assert Delivery.objects.get(pk=delivery.pk).state == S.QUEUED


def test_an_action_that_does_not_apply_says_why_as_an_error_toast(operator_client):
    delivery = DeliveryFactory(state=S.SUCCEEDED)
    response = operator_client.post(reverse("delivery_cancel", args=[delivery.uuid]), headers=HTMX)
    toast = json.loads(response["HX-Trigger"])["messages"][0]
    assert toast["level"] == "error"
    assert "can't be cancelled: it is “Succeeded” now" in toast["text"]


def test_viewers_can_not_act_on_deliveries(viewer_client):
    delivery = DeliveryFactory(state=S.FAILED)
    for name in ("delivery_retry", "delivery_cancel", "delivery_replay", "delivery_send_again"):
        assert viewer_client.post(reverse(name, args=[delivery.uuid])).status_code == 403
    assert Delivery.objects.get(pk=delivery.pk).state == S.FAILED


def test_an_invalid_replay_comes_back_with_the_text_kept_and_the_reason(operator_client):
    delivery = DeliveryFactory(state=S.FAILED)
    url = reverse("delivery_replay", args=[delivery.uuid])
    response = operator_client.post(url, {"body": '{"name": '}, headers=HTMX)
    page = response.content.decode()
    assert response.status_code == 200
    assert "not valid JSON" in page
    assert "{&quot;name&quot;: </textarea>" in page
    full = operator_client.post(url, {"body": '{"name": '})
    assert full.status_code == 422
    assert "not valid JSON" in full.content.decode()


def test_a_valid_replay_from_the_page_queues_it(operator_client):
    delivery = DeliveryFactory(state=S.EXHAUSTED)
    response = operator_client.post(
        reverse("delivery_replay", args=[delivery.uuid]), {"body": '{"name": "Fixed"}'}
    )
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert (delivery.state, bytes(delivery.body)) == (S.QUEUED, b'{"name":"Fixed"}')


def test_the_needs_attention_actions_through_the_views(operator_client):
    created, again = DeliveryFactory(state=S.NEEDS_ATTENTION), DeliveryFactory(state=S.NEEDS_ATTENTION)
    operator_client.post(reverse("delivery_mark_created", args=[created.uuid]), {"object_id": "po-1"})
    operator_client.post(reverse("delivery_send_again", args=[again.uuid]))
    created.refresh_from_db()
    again.refresh_from_db()
    assert (created.state, created.created_object_id) == (S.SUCCEEDED, "po-1")
    assert again.state == S.QUEUED


def test_the_bulk_view_previews_a_count_then_retries_that_many(operator_client):
    destination = DestinationFactory()
    deliveries(destination, {S.FAILED: 4, S.SUCCEEDED: 2})
    url = reverse("destination_bulk", args=[destination.uuid])
    preview = operator_client.get(url, {"action": "retry", "state": "problems"}, headers=HTMX)
    page = preview.content.decode()
    assert "Retry 4 deliveries?" in page
    assert 'name="state" value="problems"' in page
    upto = destination.deliveries.order_by("-pk").filter(state=S.FAILED).first().pk
    response = operator_client.post(
        url, {"action": "retry", "state": "problems", "upto": upto, "count": 4}, headers=HTMX
    )
    assert response.status_code == 200
    assert json.loads(response["HX-Trigger"])["messages"][0]["text"] == "Retried 4 deliveries."
    assert destination.deliveries.filter(state=S.QUEUED).count() == 4
    assert 'id="history"' in response.content.decode()


def test_the_bulk_view_says_when_nothing_in_the_view_applies(operator_client):
    destination = DestinationFactory()
    deliveries(destination, {S.SUCCEEDED: 2})
    page = operator_client.get(
        reverse("destination_bulk", args=[destination.uuid]), {"action": "retry"}
    ).content.decode()
    assert "Nothing in all deliveries can be retried" in page


def test_the_bulk_confirmation_pins_a_relative_period_to_the_times_it_previewed(operator_client):
    destination = DestinationFactory()
    deliveries(destination, {S.FAILED: 2})
    page = operator_client.get(
        reverse("destination_bulk", args=[destination.uuid]), {"action": "retry", "period": "1h"}
    ).content.decode()
    assert "Retry 2 deliveries?" in page
    assert 'name="period" value="custom"' in page
    since = re.search(r'name="since" value="([^"]+)"', page).group(1)
    assert abs((datetime.fromisoformat(since) - (timezone.now() - timedelta(hours=1))).total_seconds()) < 60
