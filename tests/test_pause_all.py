"""An Admin's "Pause all deliveries" (DESIGN.md section 10)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from flows.models import AuditEvent, Destination
from tests.factories import DestinationFactory

pytestmark = pytest.mark.django_db


def test_the_confirmation_lists_what_will_pause(admin_client):
    DestinationFactory(name="Offers", status="active")
    DestinationFactory(name="Drafty", status="draft")
    page = admin_client.get(reverse("deliveries_pause_all")).content.decode()
    assert "Offers" in page and "Drafty" not in page
    assert "Pause 1 destination" in page


def test_pause_all_pauses_active_and_auto_paused_destinations_and_audits(admin_client):
    active = DestinationFactory(name="A", status="active")
    auto = DestinationFactory(name="B", status="auto_paused", paused_reason="Clazar answered 503 five times")
    draft = DestinationFactory(name="C", status="draft")
    response = admin_client.post(reverse("deliveries_pause_all"), follow=True)
    assert "Paused 2 destinations: A, B" in response.content.decode()
    assert Destination.objects.get(pk=active.pk).status == "paused"
    assert Destination.objects.get(pk=auto.pk).status == "paused"
    assert Destination.objects.get(pk=draft.pk).status == "draft"
    assert AuditEvent.objects.filter(action="deliveries.pause_all").exists()
    assert AuditEvent.objects.filter(action="destination.deactivate").count() == 2


def test_the_dashboard_offers_pause_all_to_admins_only(admin_client, operator_client):
    DestinationFactory(status="active")
    assert "Pause all deliveries" in admin_client.get(reverse("dashboard")).content.decode()
    assert "Pause all deliveries" not in operator_client.get(reverse("dashboard")).content.decode()
