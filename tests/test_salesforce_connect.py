"""Connecting one Salesforce org through the OAuth web server flow (flows/salesforce/connection.py),
against the Salesforce simulator over sockets."""

from __future__ import annotations

import threading
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from django.test import Client
from django.urls import reverse

from clazar_dest.salesforce.client import SalesforceClient
from flows.models import AuditEvent, Nexset, SalesforceConnection, SalesforcePending
from flows.salesforce import connection
from tests.factories import UserFactory
from tests.sf_helpers import callback, connect, sf_nexset, start, use_simulator

pytestmark = pytest.mark.django_db

OTHER_ORG = "00D000000000002AAA"


@pytest.fixture
def sim(settings, sf_sim):
    use_simulator(settings, sf_sim)
    return sf_sim


def nothing_stored() -> bool:
    return not SalesforceConnection.objects.exists() and not SalesforcePending.objects.exists()


def test_the_page_lists_the_prerequisites_and_the_exact_callback_url(admin_client, sim):
    page = admin_client.get(reverse("salesforce")).content.decode()
    assert "not</em> API-only" in page
    assert "http://testserver/salesforce/callback/" in page
    assert "Connect to Salesforce" in page


def test_connect_asks_for_pkce_state_and_the_two_scopes(admin_client, sim):
    query = parse_qs(urlsplit(start(admin_client)).query)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) >= 43
    assert query["scope"] == ["api refresh_token"]
    assert query["redirect_uri"] == ["http://testserver/salesforce/callback/"]
    assert query["state"][0]


def test_connecting_shows_the_green_check_with_the_org_and_user(admin_client, sim):
    response = connect(admin_client, sim)
    assert response.status_code == 302
    row = SalesforceConnection.objects.get()
    assert row.org_name == "Acme Inc." and row.username == "integration@acme.example"
    assert row.instance_url == sim.url
    page = admin_client.get(reverse("salesforce")).content.decode()
    assert "✔" in page and "Connected to <strong>Acme Inc.</strong>" in page
    assert "Disconnect" in page
    assert row.access_token.reveal() not in page and row.refresh_token.reveal() not in page
    assert AuditEvent.objects.filter(action="salesforce.connect").exists()


def test_denied_consent_shows_a_clear_page_and_stores_nothing(admin_client, sim):
    response = callback(admin_client, sim.deny(start(admin_client)))
    assert response.status_code == 400
    assert "Access was denied" in response.content.decode()
    assert nothing_stored()


def test_a_callback_without_state_is_refused(admin_client, sim):
    url = sim.approve(start(admin_client))
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items() if k != "state"}
    response = admin_client.get(f"{parts.path}?{urlencode(query)}")
    assert response.status_code == 400
    assert nothing_stored()


def test_a_callback_with_a_wrong_state_is_refused(admin_client, sim):
    url = sim.approve(start(admin_client))
    response = admin_client.get(url.replace("state=", "state=x"))
    assert response.status_code == 400
    assert nothing_stored()


def test_a_replayed_callback_is_refused_and_stores_nothing_more(admin_client, sim):
    url = sim.approve(start(admin_client))
    assert callback(admin_client, url).status_code == 302
    SalesforceConnection.objects.all().delete()
    assert callback(admin_client, url).status_code == 400
    assert nothing_stored()


def test_a_callback_in_another_session_is_refused(admin_client, sim):
    url = sim.approve(start(admin_client))
    other = Client()
    other.force_login(UserFactory(role="Admin"), backend="django.contrib.auth.backends.ModelBackend")
    assert callback(other, url).status_code == 400
    assert nothing_stored()


def test_a_lost_pkce_verifier_is_refused(admin_client, sim):
    url = sim.approve(start(admin_client))
    session = admin_client.session
    flow = session[connection.SESSION_KEY]
    del flow["verifier"]
    session[connection.SESSION_KEY] = flow
    session.save()
    response = callback(admin_client, url)
    assert response.status_code == 400
    assert "PKCE" in response.content.decode()
    assert nothing_stored()


def test_a_tampered_instance_url_is_refused_and_the_token_revoked(admin_client, sim):
    sim.configure(tamper_instance_url="https://evil.example.com")
    response = callback(admin_client, sim.approve(start(admin_client)))
    assert response.status_code == 400
    assert "evil.example.com" in response.content.decode()
    assert nothing_stored()
    assert sim.requests_log(path="/services/oauth2/revoke")


def test_reconnecting_the_same_org_keeps_the_nexset_settings(admin_client, sim):
    connect(admin_client, sim)
    nexset = sf_nexset(mapping={"fields": {}})
    before = nexset.source
    connect(admin_client, sim)
    nexset.refresh_from_db()
    assert nexset.source == before
    assert SalesforceConnection.objects.count() == 1
    assert AuditEvent.objects.filter(action="salesforce.reconnect").exists()


def test_another_org_waits_for_confirmation_that_names_what_is_deleted(admin_client, sim):
    connect(admin_client, sim)
    nexset = sf_nexset()
    sim.configure(org_id=OTHER_ORG, org_name="Globex")
    connect(admin_client, sim)
    nexset.refresh_from_db()
    assert nexset.source["object"] == "Opportunity"  # nothing deleted before confirming
    assert SalesforceConnection.objects.get().org_name == "Acme Inc."
    page = admin_client.get(reverse("salesforce")).content.decode()
    assert "Globex" in page and "deletes the settings of 1 Salesforce Nexset" in page

    admin_client.post(reverse("salesforce_switch"), {"action": "confirm"})
    nexset.refresh_from_db()
    assert nexset.source == {}
    assert SalesforceConnection.objects.get().org_id == OTHER_ORG
    assert not SalesforcePending.objects.exists()


def test_cancelling_an_org_switch_keeps_everything(admin_client, sim):
    connect(admin_client, sim)
    nexset = sf_nexset()
    sim.configure(org_id=OTHER_ORG, org_name="Globex")
    connect(admin_client, sim)
    admin_client.post(reverse("salesforce_switch"), {"action": "cancel"})
    nexset.refresh_from_db()
    assert nexset.source["object"] == "Opportunity"
    assert SalesforceConnection.objects.get().org_name == "Acme Inc."
    assert not SalesforcePending.objects.exists()


def test_disconnect_revokes_and_deletes(admin_client, sim):
    connect(admin_client, sim)
    token = SalesforceConnection.objects.get().access_token.reveal()
    assert admin_client.get(reverse("salesforce_disconnect")).status_code == 200
    response = admin_client.post(reverse("salesforce_disconnect"), follow=True)
    assert "revoked at Salesforce" in response.content.decode()
    assert not SalesforceConnection.objects.exists()
    answer = requests.get(
        f"{sim.url}/services/data/v62.0/sobjects/", headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 401


def test_disconnect_deletes_even_when_the_revoke_fails_and_says_so(admin_client, sim):
    connect(admin_client, sim)
    sim.add_fault("error", route="revoke", status=500, times=0)
    response = admin_client.post(reverse("salesforce_disconnect"), follow=True)
    assert "did not confirm the revoke" in response.content.decode()
    assert not SalesforceConnection.objects.exists()
    assert AuditEvent.objects.filter(action="salesforce.disconnect").exists()


def test_an_expired_access_token_is_refreshed_and_the_rotated_refresh_token_kept(admin_client, sim):
    connect(admin_client, sim)
    old = SalesforceConnection.objects.get()
    sim.expire_access_tokens()
    assert connection.client().describe_global()
    new = SalesforceConnection.objects.get()
    assert new.access_token.reveal() != old.access_token.reveal()
    assert new.refresh_token.reveal() != old.refresh_token.reveal()  # the simulator rotates
    assert new.refreshed_at is not None


@pytest.mark.django_db(transaction=True)
def test_two_workers_refreshing_at_once_refresh_once_without_invalid_grant(settings, sf_sim, make_client):
    use_simulator(settings, sf_sim)
    connect(make_client("Admin"), sf_sim)
    sf_sim.expire_access_tokens()
    sf_sim.clear_log()
    failed = SalesforceConnection.objects.get().access_token.reveal()
    clients = [connection.client() for _ in range(4)]
    for c in clients:
        assert c.access_token == failed
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clients))

    def work(c: SalesforceClient) -> None:
        try:
            barrier.wait()
            c.describe_global()
        except BaseException as exc:
            errors.append(exc)
        finally:
            from django.db import connection as db

            db.close()

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    refreshes = [e for e in sf_sim.requests_log(path="/services/oauth2/token") if e.get("status") == 200]
    assert len(refreshes) == 1
    assert SalesforceConnection.objects.get().status == "ok"


def test_invalid_grant_marks_the_connection_broken_and_keeps_the_settings(admin_client, sim):
    connect(admin_client, sim)
    nexset = sf_nexset(every=15)
    row = SalesforceConnection.objects.get()
    requests.post(f"{sim.url}/services/oauth2/revoke", data={"token": row.refresh_token.reveal()})
    with pytest.raises(connection.NotConnected, match="reconnect"):
        connection.client().describe_global()
    row.refresh_from_db()
    assert row.status == "broken"
    nexset.refresh_from_db()
    assert nexset.source["every"] == 15
    page = admin_client.get(reverse("salesforce")).content.decode()
    assert "needs reconnecting" in page and "Reconnect" in page
    connect(admin_client, sim)
    row.refresh_from_db()
    assert row.status == "ok"


def test_the_permission_check_shows_what_the_user_lacks(admin_client, sim):
    connect(admin_client, sim)
    sim.configure(permissions={"Opportunity": {"read": True, "create": True, "edit": False, "delete": False}})
    page = admin_client.get(reverse("salesforce_permissions")).content.decode()
    assert "missing edit" in page
    assert "Object Settings › Opportunity" in page


def test_viewers_cannot_reach_the_salesforce_page(viewer_client, sim):
    assert viewer_client.get(reverse("salesforce")).status_code == 403
    assert Nexset.objects.count() == 0
