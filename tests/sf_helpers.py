"""Helpers for the Salesforce tests: the connected app of a running simulator, and the consent flow
through the Django test client (the simulator plays the person clicking Allow or Deny)."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.test import Client
from django.urls import reverse

from clazar_dest.simulators.salesforce import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET
from flows.models import Nexset, SalesforceApp

OPPORTUNITY_FIELDS = ["Name", "Amount", "CloseDate", "StageName", "Account.Name"]


def use_simulator(settings, sim) -> SalesforceApp:
    settings.SALESFORCE_SIMULATOR_URL = sim.url
    app = SalesforceApp.objects.first() or SalesforceApp(consumer_key=DEFAULT_CONSUMER_KEY)
    app.consumer_secret = DEFAULT_CONSUMER_SECRET
    app.save()
    return app


def start(client: Client) -> str:
    """POST Connect; return the Salesforce authorize URL it redirects to."""
    response = client.post(reverse("salesforce_connect"))
    assert response.status_code == 302, response.content[:500]
    return response["Location"]


def callback(client: Client, url: str):
    """GET the app's callback with the query the simulator redirected to."""
    parts = urlsplit(url)
    return client.get(f"{parts.path}?{parts.query}")


def connect(client: Client, sim):
    return callback(client, sim.approve(start(client)))


def sf_nexset(**source) -> Nexset:
    data = {
        "object": "Opportunity",
        "fields": OPPORTUNITY_FIELDS,
        "filter": "",
        "every": None,
        "mapping": None,
    }
    data.update(source)
    return Nexset.objects.create(name="Opportunities", kind=Nexset.Kind.SALESFORCE, source=data)
