"""Every URL x every role. A new URL must be added to ROUTES, or the completeness test fails."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from flows import records, roles
from flows.models import Import
from tests.deliveries import DeliveryFactory
from tests.factories import CredentialFactory, DestinationFactory, NexsetFactory, UserFactory

ANON, NONE = "anonymous", "no role"
ORDER = [ANON, NONE, roles.VIEWER, roles.OPERATOR, roles.ADMIN]

# name -> (method, the object its URL names (a key of OBJECTS) or None, lowest role allowed; None = public)
ROUTES = {
    "login": ("get", None, None),
    "healthz": ("get", None, None),
    "logout": ("post", None, NONE),
    "dashboard": ("get", None, roles.VIEWER),
    "nexset_list": ("get", None, roles.VIEWER),
    "nexset_detail": ("get", "nexset", roles.VIEWER),
    "nexset_record": ("get", "record", roles.VIEWER),
    "nexset_import": ("get", "import", roles.VIEWER),
    "nexset_upload": ("get", None, roles.OPERATOR),
    "nexset_webhook_new": ("get", None, roles.OPERATOR),
    "nexset_webhook_rotate": ("post", "webhook", roles.OPERATOR),
    "nexset_delete": ("get", "nexset", roles.OPERATOR),
    "hook": ("post", "hook", None),
    "destination_list": ("get", None, roles.VIEWER),
    "destination_new": ("get", None, roles.OPERATOR),
    "destination_new_credential": ("post", None, roles.ADMIN),
    "destination_detail": ("get", "destination", roles.VIEWER),
    "destination_edit": ("get", "destination", roles.OPERATOR),
    "destination_preview": ("post", "destination", roles.OPERATOR),
    "destination_test_send": ("post", "destination", roles.OPERATOR),
    "destination_clone": ("post", "destination", roles.OPERATOR),
    "destination_activate": ("get", "destination", roles.OPERATOR),
    "destination_deactivate": ("post", "destination", roles.OPERATOR),
    "destination_history": ("get", "destination", roles.VIEWER),
    "destination_history_csv": ("get", "destination", roles.VIEWER),
    "destination_bulk": ("get", "destination", roles.OPERATOR),
    "deliveries_pause_all": ("get", None, roles.ADMIN),
    "delivery_detail": ("get", "delivery", roles.VIEWER),
    "delivery_retry": ("post", "delivery", roles.OPERATOR),
    "delivery_replay": ("post", "delivery", roles.OPERATOR),
    "delivery_cancel": ("post", "delivery", roles.OPERATOR),
    "delivery_mark_created": ("post", "delivery", roles.OPERATOR),
    "delivery_send_again": ("post", "delivery", roles.OPERATOR),
    "audit_list": ("get", None, roles.VIEWER),
    "salesforce": ("get", None, roles.ADMIN),
    "salesforce_app": ("post", None, roles.ADMIN),
    "salesforce_connect": ("post", None, roles.ADMIN),
    "salesforce_callback": ("get", None, roles.ADMIN),
    "salesforce_switch": ("post", None, roles.ADMIN),
    "salesforce_disconnect": ("get", None, roles.ADMIN),
    "salesforce_permissions": ("get", None, roles.ADMIN),
    "salesforce_nexset_new": ("get", None, roles.ADMIN),
    "salesforce_fields": ("get", None, roles.ADMIN),
    "salesforce_filter_test": ("post", None, roles.ADMIN),
    "salesforce_nexset_edit": ("get", "sfnexset", roles.ADMIN),
    "salesforce_nexset_pull": ("post", "sfnexset", roles.OPERATOR),
    "salesforce_mapping": ("get", "sfnexset", roles.ADMIN),
    "salesforce_mapping_preview": ("post", "sfnexset", roles.ADMIN),
    "salesforce_writeback": ("get", "sfnexset", roles.ADMIN),
    "credential_list": ("get", None, roles.ADMIN),
    "credential_new": ("get", None, roles.ADMIN),
    "credential_edit": ("get", "credential", roles.ADMIN),
    "credential_delete": ("get", "credential", roles.ADMIN),
    "credential_test": ("post", "credential", roles.ADMIN),
    "user_list": ("get", None, roles.ADMIN),
    "user_new": ("get", None, roles.ADMIN),
    "user_edit": ("get", "user", roles.ADMIN),
    "profile": ("get", None, NONE),
    "profile_salesforce_connect": ("post", None, roles.VIEWER),
    "profile_salesforce_disconnect": ("post", None, NONE),
}

# How to make the object a URL names: kind -> (request -> URL kwargs).
OBJECTS = {
    "credential": lambda request: {
        "uuid": CredentialFactory(api_base=request.getfixturevalue("clazar_sim").url).uuid
    },
    "user": lambda request: {"user_id": UserFactory().pk},
    "destination": lambda request: {"uuid": DestinationFactory().uuid},
    "nexset": lambda request: {"uuid": NexsetFactory().uuid},
    "webhook": lambda request: {"uuid": NexsetFactory(kind="webhook").uuid},
    "sfnexset": lambda request: {
        "uuid": NexsetFactory(kind="salesforce", source={"object": "Opportunity", "fields": ["Name"]}).uuid
    },
    "hook": lambda request: {"code": str(NexsetFactory(kind="webhook").code)},
    "record": lambda request: _record(),
    "delivery": lambda request: {"uuid": DeliveryFactory(state="failed").uuid},
    "import": lambda request: {
        "uuid": Import.objects.create(nexset=NexsetFactory(), status="succeeded").uuid
    },
}
# Public URLs that answer an unsigned request with something else than 200/302.
PUBLIC_ANSWERS = {"hook": (401,)}
# Allowed requests that answer an empty request with a clear error page rather than 200/302.
ALLOWED_ANSWERS = {"salesforce_callback": (400,), "salesforce_app": (400,)}


def _record() -> dict[str, object]:
    nexset = NexsetFactory()
    records.append(nexset.pk, [{"name": "a"}])
    return {"uuid": nexset.uuid, "seq": 1}


def all_url_names(resolver=None) -> set[str]:
    names = set()
    for entry in (resolver or get_resolver()).url_patterns:
        if isinstance(entry, URLResolver):
            names |= all_url_names(entry)
        elif isinstance(entry, URLPattern) and entry.name:
            names.add(entry.name)
    return names


def test_every_url_is_in_the_roles_matrix():
    assert all_url_names() == set(ROUTES)


def client_for(who: str) -> Client:
    client = Client()
    if who != ANON:
        user = UserFactory(role=None if who == NONE else who)
        client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("who", ORDER)
@pytest.mark.parametrize("name", sorted(ROUTES))
def test_each_role_gets_exactly_what_it_may(name, who, request):
    method, obj, lowest = ROUTES[name]
    kwargs = OBJECTS[obj](request) if obj else {}
    url = reverse(name, kwargs=kwargs)
    response = getattr(client_for(who), method)(url)
    if lowest is None:
        assert response.status_code in PUBLIC_ANSWERS.get(name, (200, 302))
        return
    if who == ANON:
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    elif ORDER.index(who) < ORDER.index(lowest):
        assert response.status_code == 403
        assert lowest in response.content.decode()
    else:
        assert response.status_code in ALLOWED_ANSWERS.get(name, (200, 302)), response.content[:300]
