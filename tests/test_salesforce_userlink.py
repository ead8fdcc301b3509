"""Each person's own Salesforce link from the profile page (flows/salesforce/userlink.py,
flows/views/sfuser.py), against the Salesforce simulator over sockets."""

from __future__ import annotations

import threading

import pytest
import requests
from django.db import connection as db
from django.test import Client
from django.urls import reverse

from flows.models import AuditEvent, SalesforceUserLink
from flows.salesforce import connection, userlink
from tests.sf_helpers import callback, connect, use_simulator

pytestmark = pytest.mark.django_db

OTHER_ORG = "00D000000000002AAA"
REP = {"user_id": "005000000000002AAA", "username": "rep@acme.example", "display_name": "Sales Rep"}


@pytest.fixture
def sim(settings, sf_sim):
    use_simulator(settings, sf_sim)
    return sf_sim


@pytest.fixture
def org(admin_client, sim):
    """The org connected by an Admin (as the integration user)."""
    connect(admin_client, sim)
    return connection.current()


def start_link(client: Client) -> str:
    response = client.post(reverse("profile_salesforce_connect"))
    assert response.status_code == 302, response.content[:500]
    return response["Location"]


def link(client: Client, sim, as_user: dict | None = None):
    """Link the client's user to the simulator's user (``as_user`` changes who signs in)."""
    if as_user:
        sim.configure(**as_user)
    return callback(client, sim.approve(start_link(client)))


def rest_status(sim, token: str) -> int:
    return requests.get(
        f"{sim.url}/services/data/v62.0/sobjects/", headers={"Authorization": f"Bearer {token}"}
    ).status_code


def test_the_profile_asks_for_an_org_connection_before_offering_a_link(viewer_client, sim):
    page = viewer_client.get(reverse("profile")).content.decode()
    assert "Salesforce is not connected yet" in page
    assert "Connect my Salesforce user" not in page
    response = viewer_client.post(reverse("profile_salesforce_connect"), follow=True)
    assert "an Admin connects the org" in response.content.decode()
    assert connection.SESSION_KEY not in viewer_client.session


def test_the_profile_offers_to_connect_once_the_org_is_connected(viewer_client, org):
    page = viewer_client.get(reverse("profile")).content.decode()
    assert "Connect my Salesforce user" in page and "Acme Inc." in page


def test_linking_shows_the_green_check_with_the_salesforce_username(viewer_client, org, sim):
    response = link(viewer_client, sim, REP)
    assert response.status_code == 302 and response["Location"] == reverse("profile")
    row = SalesforceUserLink.objects.get(user=viewer_client.user)
    assert (row.username, row.sf_user_id, row.org_id) == ("rep@acme.example", REP["user_id"], org.org_id)
    assert row.instance_url == sim.url
    page = viewer_client.get(reverse("profile")).content.decode()
    assert "✔" in page and "Linked as <strong>rep@acme.example</strong>" in page
    assert "Disconnect" in page and "Connect my Salesforce user" not in page
    assert row.access_token.reveal() not in page and row.refresh_token.reveal() not in page
    event = AuditEvent.objects.get(action="salesforce.user_link")
    assert event.actor == viewer_client.user
    assert event.changes["details"]["salesforce_user"] == "rep@acme.example"
    assert row.refresh_token.reveal() not in str(event.changes)


def test_linking_does_not_touch_the_org_connection(viewer_client, org, sim):
    link(viewer_client, sim, REP)
    after = connection.current()
    assert (after.username, after.access_token.reveal()) == (org.username, org.access_token.reveal())


def test_linking_again_replaces_the_link_and_revokes_the_old_grant(
    viewer_client, org, sim, django_capture_on_commit_callbacks
):
    link(viewer_client, sim, REP)
    old = SalesforceUserLink.objects.get().access_token.reveal()
    with django_capture_on_commit_callbacks(execute=True):  # the old grant is revoked after commit
        link(viewer_client, sim)
    assert SalesforceUserLink.objects.count() == 1
    assert SalesforceUserLink.objects.get().access_token.reveal() != old
    assert rest_status(sim, old) == 401


def test_linking_a_user_of_another_org_is_refused_and_stores_nothing(viewer_client, org, sim):
    sim.configure(org_id=OTHER_ORG, org_name="Globex", **REP)
    sim.clear_log()
    response = callback(viewer_client, sim.approve(start_link(viewer_client)))
    assert response.status_code == 400
    page = response.content.decode()
    assert "You signed in to Globex (00D000000000002AAA) as rep@acme.example" in page
    assert f"but the app is connected to Acme Inc. ({org.org_id})" in page
    assert not SalesforceUserLink.objects.exists()
    assert sim.requests_log(path="/services/oauth2/revoke")[0]["status"] == 200
    assert connection.current().org_id == org.org_id
    assert AuditEvent.objects.filter(action="salesforce.user_link_failed").exists()


def test_a_denied_consent_stores_no_link(viewer_client, org, sim):
    response = callback(viewer_client, sim.deny(start_link(viewer_client)))
    assert response.status_code == 400
    assert "Deny" in response.content.decode()
    assert not SalesforceUserLink.objects.exists()


def test_a_person_without_a_role_cannot_start_a_link(make_client, org):
    client = make_client(None)
    assert client.post(reverse("profile_salesforce_connect")).status_code == 403
    assert connection.SESSION_KEY not in client.session


def test_disconnecting_revokes_the_token_and_deletes_the_link(viewer_client, org, sim):
    link(viewer_client, sim, REP)
    token = SalesforceUserLink.objects.get().access_token.reveal()
    response = viewer_client.post(reverse("profile_salesforce_disconnect"), follow=True)
    page = response.content.decode()
    assert "Disconnected rep@acme.example: the token was revoked at Salesforce" in page
    assert "Connect my Salesforce user" in page
    assert not SalesforceUserLink.objects.exists()
    assert rest_status(sim, token) == 401
    event = AuditEvent.objects.get(action="salesforce.user_unlink")
    assert event.changes["details"] == {"salesforce_user": "rep@acme.example", "revoke_error": ""}


def test_disconnect_deletes_the_link_even_when_the_revoke_fails_and_says_so(viewer_client, org, sim):
    link(viewer_client, sim, REP)
    sim.add_fault("error", route="revoke", status=500, times=0)
    response = viewer_client.post(reverse("profile_salesforce_disconnect"), follow=True)
    page = response.content.decode()
    assert "Disconnected rep@acme.example" in page and "did not confirm the revoke" in page
    assert not SalesforceUserLink.objects.exists()
    event = AuditEvent.objects.get(action="salesforce.user_unlink")
    assert "server error" in event.changes["details"]["revoke_error"]


def test_each_person_unlinks_only_their_own_link(viewer_client, operator_client, org, sim):
    link(viewer_client, sim, REP)
    operator_client.post(reverse("profile_salesforce_disconnect"))
    assert SalesforceUserLink.objects.filter(user=viewer_client.user).exists()


def test_an_expired_user_token_is_refreshed_and_the_rotated_refresh_token_kept(viewer_client, org, sim):
    link(viewer_client, sim, REP)
    old = SalesforceUserLink.objects.get()
    sim.expire_access_tokens()
    _, client = userlink.client(viewer_client.user.pk)
    assert client.describe_global()
    new = SalesforceUserLink.objects.get()
    assert new.access_token.reveal() != old.access_token.reveal()
    assert new.refresh_token.reveal() != old.refresh_token.reveal()
    assert connection.current().access_token.reveal() == org.access_token.reveal()  # the org's is untouched


@pytest.mark.django_db(transaction=True)
def test_two_workers_refreshing_one_link_at_once_refresh_once(settings, sf_sim, make_client):
    use_simulator(settings, sf_sim)
    admin = make_client("Admin")
    connect(admin, sf_sim)
    link(admin, sf_sim, REP)
    sf_sim.expire_access_tokens()
    sf_sim.clear_log()
    clients = [userlink.client(admin.user.pk)[1] for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clients))

    def work(client) -> None:
        try:
            barrier.wait()
            client.describe_global()
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    refreshes = [e for e in sf_sim.requests_log(path="/services/oauth2/token") if e.get("status") == 200]
    assert len(refreshes) == 1


def test_a_refused_refresh_token_says_to_connect_again(viewer_client, org, sim):
    link(viewer_client, sim, REP)
    row = SalesforceUserLink.objects.get()
    requests.post(f"{sim.url}/services/oauth2/revoke", data={"token": row.refresh_token.reveal()})
    _, client = userlink.client(viewer_client.user.pk)
    with pytest.raises(userlink.NotLinked, match=r"rep@acme\.example.*connect again on their profile page"):
        client.describe_global()


def test_a_link_of_another_org_than_the_connected_one_is_not_used(viewer_client, org, sim):
    link(viewer_client, sim, REP)
    SalesforceUserLink.objects.update(org_id=OTHER_ORG)
    with pytest.raises(userlink.NotLinked, match="another org"):
        userlink.client(viewer_client.user.pk)
    page = viewer_client.get(reverse("profile")).content.decode()
    assert "This link is for another Salesforce org" in page
