"""Activation preview, activate and deactivate (flows/activation.py)."""

from __future__ import annotations

import pytest

from flows import activation, delivery, records, roles
from flows.activation import ActivationError
from flows.models import AuditEvent, Credential, Destination
from tests.factories import CredentialFactory, DestinationFactory, NexsetFactory, UserFactory

pytestmark = pytest.mark.django_db

CREATE = {"mode": "template", "template": "create_private_offer"}
PUBLISH = {"mode": "template", "template": "publish_private_offer", "id_value": "{id}"}


@pytest.fixture
def user():
    return UserFactory(role=roles.OPERATOR)


def destination(config: dict, rows: int = 3, **extra) -> Destination:
    nexset = NexsetFactory()
    if rows:
        records.append(nexset.pk, [{"id": f"po-{i}", "name": f"Offer {i}"} for i in range(rows)])
    return DestinationFactory(nexset=nexset, config=config, **extra)


def test_the_preview_says_how_many_records_go_where_and_how():
    shown = activation.preview(destination(CREATE, rows=12))
    assert (shown.count, shown.label, shown.method, shown.host) == (
        12,
        "Create Private Offer",
        "POST",
        "api.clazar.io",
    )
    assert shown.irreversible is False and shown.confirm_word == ""
    assert shown.problems == [] and shown.ready
    assert shown.sentence == "12 records will be sent with Create Private Offer (POST) to api.clazar.io"


def test_the_preview_counts_only_records_past_the_cursor():
    assert activation.preview(destination(CREATE, rows=5, cursor=3)).count == 2


def test_irreversible_templates_ask_for_the_count_as_confirmation():
    shown = activation.preview(destination(PUBLISH, rows=4))
    assert shown.irreversible and shown.confirm_word == "4" and shown.label == "Publish Private Offer"


def test_the_preview_lists_what_blocks_activation():
    dest = destination({"mode": "template", "template": "update_private_offer"}, rows=0)
    Credential.objects.filter(pk=dest.credential_id).update(status="rejected", last_error="Invalid client.")
    shown = activation.preview(Destination.objects.get(pk=dest.pk))
    assert any("Private Offer ID" in p for p in shown.problems)
    assert any("rejected" in p and "Invalid client." in p for p in shown.problems)
    assert shown.notes and "no records" in shown.notes[0]
    assert not shown.ready


def test_activate_sets_the_destination_active_audits_and_wakes_the_engine(
    user, django_capture_on_commit_callbacks
):
    dest = destination(CREATE)
    with django_capture_on_commit_callbacks() as callbacks:
        activation.activate(dest.pk, user=user)
    dest.refresh_from_db()
    assert dest.status == Destination.Status.ACTIVE and dest.activated_at is not None
    event = AuditEvent.objects.get(action="destination.activate")
    assert event.actor == user and event.object_id == str(dest.uuid)
    assert event.changes["status"] == {"before": "draft", "after": "active"}
    assert event.changes["details"]["records"] == 3
    assert len(callbacks) == 1


def test_activate_refuses_an_invalid_config_and_says_why(user):
    dest = destination({"mode": "template", "template": "nope"})
    with pytest.raises(ActivationError, match="not in the catalog"):
        activation.activate(dest.pk, user=user)
    assert Destination.objects.get(pk=dest.pk).status == Destination.Status.DRAFT


def test_activate_refuses_an_irreversible_template_without_the_typed_count(user):
    dest = destination(PUBLISH, rows=2)
    with pytest.raises(ActivationError, match="Type 2"):
        activation.activate(dest.pk, user=user, confirm="yes")
    activation.activate(dest.pk, user=user, confirm=" 2 ")
    assert Destination.objects.get(pk=dest.pk).status == Destination.Status.ACTIVE


def test_activating_an_auto_paused_destination_resumes_it_and_clears_the_reason(user):
    dest = destination(
        CREATE, status=Destination.Status.AUTO_PAUSED, paused_reason="Auto-paused: 503", failures=9
    )
    activation.activate(dest.pk, user=user)
    dest.refresh_from_db()
    assert (dest.status, dest.paused_reason, dest.failures) == (Destination.Status.ACTIVE, "", 0)


def test_deactivate_pauses_audits_and_the_engine_sends_nothing_more(user):
    dest = destination(CREATE)
    activation.activate(dest.pk, user=user)
    delivery.plan(dest.pk)
    activation.deactivate(dest.pk, user=user)
    dest.refresh_from_db()
    assert dest.status == Destination.Status.PAUSED and user.username in dest.paused_reason
    assert AuditEvent.objects.filter(action="destination.deactivate", actor=user).exists()
    assert delivery.process_due(dest.pk, threads=0).get("claimed") is None
    assert dest.deliveries.filter(state="queued").count() == 3


def test_activate_and_deactivate_are_no_ops_when_already_there(user):
    dest = destination(CREATE, status=Destination.Status.ACTIVE)
    activation.activate(dest.pk, user=user)
    draft = destination(CREATE)
    activation.deactivate(draft.pk, user=user)
    assert not AuditEvent.objects.exists()
    assert Destination.objects.get(pk=draft.pk).status == Destination.Status.DRAFT


def test_a_credential_whose_api_base_is_no_longer_allowed_blocks_activation(user, settings):
    settings.CLAZAR_API_BASES = ["https://api.clazar.io"]
    dest = destination(CREATE, credential=CredentialFactory(api_base="https://elsewhere.example"))
    with pytest.raises(ActivationError):
        activation.activate(dest.pk, user=user)
