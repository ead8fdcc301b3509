"""The credentials page, through the real views, against the Clazar simulator over a socket."""

from __future__ import annotations

import logging
import socket

import pytest
from django.urls import reverse

from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from flows.models import AuditEvent, Credential
from tests.factories import CredentialFactory, DestinationFactory

CANARY = "canary-secret-7f3a9c"


@pytest.fixture
def sim_allowed(settings, clazar_sim):
    settings.CLAZAR_API_BASES = ["https://api.clazar.io", clazar_sim.url]
    clazar_sim.add_client(DEFAULT_CLIENT_ID + "-canary", CANARY)
    return clazar_sim


def form(sim_url: str, **extra: object) -> dict:
    data = {"name": "Production", "api_base": sim_url, "client_id": DEFAULT_CLIENT_ID, "rate_limit": 120}
    data.update(extra)
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.django_db
def test_a_canary_secret_never_appears_in_a_page_or_a_log(admin_client, sim_allowed, caplog):
    caplog.set_level(logging.DEBUG)
    data = form(sim_allowed.url, client_id=DEFAULT_CLIENT_ID + "-canary", client_secret=CANARY, test="1")
    response = admin_client.post(reverse("credential_new"), data, follow=True)
    assert "works" in response.content.decode()
    credential = Credential.objects.get(name="Production")
    pages = [
        response,
        admin_client.get(reverse("credential_list")),
        admin_client.get(reverse("credential_edit", args=[credential.uuid])),
        admin_client.get(reverse("audit_list")),
        admin_client.get(reverse("dashboard")),
        admin_client.post(reverse("credential_test", args=[credential.uuid]), follow=True),
    ]
    for page in pages:
        assert CANARY not in page.content.decode()
    token = credential.access_token.reveal()
    for page in pages:
        assert token not in page.content.decode()
    assert CANARY not in caplog.text
    assert token not in caplog.text
    assert CANARY not in str(list(AuditEvent.objects.values_list("changes", flat=True)))
    assert credential.client_secret.reveal() == CANARY


@pytest.mark.django_db
def test_saving_and_testing_fetches_and_caches_a_token(admin_client, sim_allowed):
    response = admin_client.post(
        reverse("credential_new"),
        form(sim_allowed.url, client_secret=DEFAULT_CLIENT_SECRET, test="1"),
        follow=True,
    )
    assert "“Production” works: Clazar issued a token valid for" in response.content.decode()
    credential = Credential.objects.get(name="Production")
    assert credential.status == Credential.Status.OK
    assert credential.access_token
    assert credential.token_expires_at is not None
    assert [r["path"] for r in sim_allowed.requests_log()] == ["/authenticate/"]


@pytest.mark.django_db
def test_a_wrong_secret_is_reported_as_rejected(admin_client, sim_allowed):
    response = admin_client.post(
        reverse("credential_new"), form(sim_allowed.url, client_secret="wrong", test="1"), follow=True
    )
    text = response.content.decode()
    assert "Clazar rejected the client ID or secret (HTTP 401: Invalid client credentials.)" in text
    assert Credential.objects.get(name="Production").status == Credential.Status.REJECTED


@pytest.mark.django_db
def test_an_unreachable_host_is_named_and_does_not_mark_the_credential_rejected(admin_client, settings):
    base = f"http://127.0.0.1:{free_port()}"
    settings.CLAZAR_API_BASES = [base]
    credential = CredentialFactory(api_base=base)
    response = admin_client.post(reverse("credential_test", args=[credential.uuid]), follow=True)
    assert (
        f"Could not reach 127.0.0.1:{base.rsplit(':', 1)[1]} (connection refused)"
        in response.content.decode()
    )
    credential.refresh_from_db()
    assert credential.status == Credential.Status.UNVERIFIED


@pytest.mark.django_db
def test_a_slow_token_endpoint_is_reported_as_a_timeout(admin_client, sim_allowed, settings):
    settings.CLAZAR_READ_TIMEOUT = 1
    sim_allowed.add_fault("hang", route="authenticate", seconds=3)
    credential = CredentialFactory(api_base=sim_allowed.url, client_id=DEFAULT_CLIENT_ID)
    response = admin_client.post(reverse("credential_test", args=[credential.uuid]), follow=True)
    assert "did not answer within 1 s" in response.content.decode()


@pytest.mark.django_db
def test_the_htmx_test_button_swaps_in_the_status_fragment(admin_client, sim_allowed):
    credential = CredentialFactory(
        api_base=sim_allowed.url, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET
    )
    response = admin_client.post(
        reverse("credential_test", args=[credential.uuid]), headers={"HX-Request": "true"}
    )
    text = response.content.decode()
    assert response.status_code == 200
    assert text.lstrip().startswith('<div id="credential-status">')
    assert "<html" not in text
    assert "Clazar issued a token valid for" in text


@pytest.mark.django_db
def test_a_blank_secret_on_edit_keeps_the_stored_one(admin_client, sim_allowed):
    credential = CredentialFactory(api_base=sim_allowed.url, client_secret="keep-this")
    old_name = credential.name
    response = admin_client.post(
        reverse("credential_edit", args=[credential.uuid]),
        form(sim_allowed.url, name="Renamed", client_id=credential.client_id, client_secret=""),
    )
    assert response.status_code == 302
    credential.refresh_from_db()
    assert credential.name == "Renamed"
    assert credential.client_secret.reveal() == "keep-this"
    event = AuditEvent.objects.get(action="credential.update")
    assert event.changes["name"] == {"before": old_name, "after": "Renamed"}
    assert "client_secret" not in event.changes


@pytest.mark.django_db
def test_a_new_credential_needs_a_secret_and_an_allowed_api_base(admin_client):
    response = admin_client.post(reverse("credential_new"), form("https://evil.example", client_secret=""))
    text = response.content.decode()
    assert "This field is required." in text
    assert "Select a valid choice" in text
    assert not Credential.objects.exists()


@pytest.mark.django_db
def test_a_credential_in_use_cannot_be_deleted_and_names_its_destinations(admin_client):
    destination = DestinationFactory(name="Offers to AWS")
    url = reverse("credential_delete", args=[destination.credential.uuid])
    page = admin_client.get(url).content.decode()
    assert "Offers to AWS" in page
    admin_client.post(url)
    assert Credential.objects.filter(pk=destination.credential.pk).exists()


@pytest.mark.django_db
def test_deleting_an_unused_credential_is_audited(admin_client):
    credential = CredentialFactory(name="Old account")
    response = admin_client.post(reverse("credential_delete", args=[credential.uuid]), follow=True)
    assert "Deleted “Old account”." in response.content.decode()
    assert not Credential.objects.filter(pk=credential.pk).exists()
    event = AuditEvent.objects.get(action="credential.delete")
    assert event.changes["client_secret"] == {"before": "********", "after": None}
