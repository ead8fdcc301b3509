import pytest
from django.urls import reverse

from flows.models import Credential
from tests.factories import CredentialFactory, DestinationFactory, NexsetFactory

pytestmark = pytest.mark.django_db


def test_an_empty_dashboard_tells_an_admin_to_add_a_credential_first(admin_client):
    page = admin_client.get(reverse("dashboard")).content.decode()
    assert "No destinations yet" in page
    assert "add a credential" in page


def test_an_empty_dashboard_then_points_at_nexsets(viewer_client):
    CredentialFactory()
    page = viewer_client.get(reverse("dashboard")).content.decode()
    assert "upload a file or create a webhook" in page


def test_the_dashboard_lists_destinations_with_their_endpoint_and_flags_rejected_credentials(viewer_client):
    DestinationFactory(name="Offers to AWS", nexset=NexsetFactory(name="Q4 offers"))
    CredentialFactory(name="Old key", status=Credential.Status.REJECTED, last_error="Clazar rejected it.")
    page = viewer_client.get(reverse("dashboard")).content.decode()
    assert "Offers to AWS" in page
    assert "Create Private Offer" in page
    assert "Q4 offers" in page
    assert "Clazar rejects the credential <strong>Old key</strong>: Clazar rejected it." in page


def test_healthz_answers_without_login(client):
    response = client.get(reverse("healthz"))
    assert response.status_code == 200
    assert response.content == b"ok"
