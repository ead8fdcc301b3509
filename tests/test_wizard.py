"""The destination wizard through its real views: start, live preview fragment, Done, test sends against
the simulator over a socket."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from flows import records
from flows.models import AuditEvent, Credential, Delivery, Destination
from tests.factories import CredentialFactory, DestinationFactory, NexsetFactory

pytestmark = pytest.mark.django_db

OFFERS = [
    {
        "id": f"po-{i}",
        "name": f"Offer {i}",
        "listing": "lst-1",
        "buyer": f"12345678900{i}",
        "price": "10.50",
        "notes": {"internal": "x"},
    }
    for i in range(1, 6)
]


@pytest.fixture
def destination(settings, clazar_sim):
    settings.CLAZAR_API_BASES = ["https://api.clazar.io", clazar_sim.url]
    nexset = NexsetFactory(name="Offers")
    records.append(nexset.pk, OFFERS)
    nexset.refresh_from_db()
    credential = CredentialFactory(
        api_base=clazar_sim.url, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET
    )
    return DestinationFactory(nexset=nexset, credential=credential, config={})


def wizard(**overrides: object) -> dict:
    data = {
        "name": "Offers to Clazar",
        "mode": "template",
        "template": "create_private_offer",
        "id_value": "",
        "method": "POST",
        "content_format": "json",
        "url": "",
        "headers": "",
        "exclude_other": "",
        "batch_size": "100",
        "batch_algorithm": "property",
        "property_name": "records",
        "other_props": "",
        "code": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def preview(client, destination, **overrides) -> str:
    response = client.post(
        reverse("destination_preview", args=[destination.uuid]),
        wizard(**overrides),
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    return response.content.decode()


def test_start_creates_a_draft_and_opens_the_settings(operator_client):
    nexset, credential = NexsetFactory(name="Q4"), CredentialFactory(name="Prod")
    response = operator_client.post(
        reverse("destination_new"), {"nexset": nexset.uuid, "credential": credential.uuid}
    )
    destination = Destination.objects.get()
    assert response["Location"] == reverse("destination_edit", args=[destination.uuid])
    assert destination.status == Destination.Status.DRAFT
    assert destination.nexset == nexset and destination.credential == credential


def test_each_template_previews_its_method_and_path(operator_client, destination):
    base = destination.credential.api_base
    expected = {
        "create_listing": ("POST", "/listings/"),
        "update_listing": ("PUT", "/listings/po-1/"),
        "create_opportunity": ("POST", "/opportunities/"),
        "update_opportunity": ("PUT", "/opportunities/po-1/"),
        "create_private_offer": ("POST", "/private_offers/"),
        "update_private_offer": ("PUT", "/private_offers/po-1/"),
        "publish_private_offer": ("POST", "/private_offers/po-1/publish/"),
        "delete_private_offer": ("DELETE", "/private_offers/po-1/"),
    }
    for key, (method, path) in expected.items():
        page = preview(operator_client, destination, template=key, id_value="{id}")
        assert f'<code class="method">{method}</code> <code class="url">{base}{path}</code>' in page, key


def test_a_missing_id_shows_the_field_error_instead_of_samples(operator_client, destination):
    page = preview(operator_client, destination, template="update_private_offer", id_value="")
    assert "Fix these to see the samples" in page
    assert "Update Private Offer needs a Private Offer ID" in page


def test_a_record_without_the_id_attribute_is_shown_as_not_sent(operator_client, destination):
    page = preview(operator_client, destination, template="update_listing", id_value="{listing_id}")
    assert "Not sent" in page
    assert "listing_id" in page


def test_excluding_attributes_removes_them_from_the_sample_body(operator_client, destination):
    page = preview(operator_client, destination, exclude=["price"], exclude_other="notes.internal")
    assert "&quot;price&quot;" not in page
    assert "&quot;internal&quot;" not in page
    assert "&quot;buyer&quot;" in page


def test_batching_in_a_property_shows_batched_bodies(operator_client, destination):
    page = preview(
        operator_client,
        destination,
        batch_enabled="on",
        batch_size="2",
        property_name="offers",
        other_props='{"source": "crm"}',
    )
    assert page.count('class="sample"') == 3
    assert "&quot;offers&quot;: [" in page
    assert "&quot;source&quot;: &quot;crm&quot;" in page
    assert "records 1, 2" in page


def test_batching_with_code_reports_template_errors_with_the_line(operator_client, destination):
    page = preview(
        operator_client,
        destination,
        batch_enabled="on",
        batch_algorithm="code",
        code='{\n "a": {{ recordz|tojson }}\n}',
    )
    assert "line 2" in page
    good = preview(
        operator_client,
        destination,
        batch_enabled="on",
        batch_algorithm="code",
        code='{"items": {{ records|tojson }}}',
    )
    assert "&quot;items&quot;: [" in good


def test_advanced_urls_must_stay_on_the_credential_api_base(operator_client, destination):
    page = preview(
        operator_client,
        destination,
        mode="advanced",
        method="PUT",
        url="https://evil.example/private_offers/{id}/",
    )
    assert (
        "must be on the credential&#x27;s API base" in page or "must be on the credential's API base" in page
    )
    ok = preview(
        operator_client,
        destination,
        mode="advanced",
        method="PATCH",
        url=destination.credential.api_base + "/private_offers/{id}/",
        headers="X-Trace:abc",
    )
    assert f"{destination.credential.api_base}/private_offers/po-1/" in ok
    assert "X-Trace: abc" in ok


def test_done_saves_the_config_as_a_draft_and_sends_nothing(operator_client, destination, clazar_sim):
    response = operator_client.post(
        reverse("destination_edit", args=[destination.uuid]),
        wizard(template="publish_private_offer", id_value="{id}"),
    )
    assert response.status_code == 302
    destination.refresh_from_db()
    assert destination.config["template"] == "publish_private_offer"
    assert destination.config["id_value"] == "{id}"
    assert destination.status == Destination.Status.DRAFT
    assert destination.name == "Offers to Clazar"
    assert clazar_sim.requests_log() == []
    assert AuditEvent.objects.filter(action="destination.update").exists()


def test_done_with_errors_keeps_what_was_typed_and_names_the_field(operator_client, destination):
    response = operator_client.post(
        reverse("destination_edit", args=[destination.uuid]),
        wizard(mode="advanced", url="ftp://x", name="Keep me"),
    )
    page = response.content.decode()
    assert response.status_code == 422
    assert 'value="Keep me"' in page
    assert "The URL must use https" in page or "must use https" in page


def test_an_active_destination_must_be_paused_before_editing(operator_client, destination):
    Destination.objects.filter(pk=destination.pk).update(status=Destination.Status.ACTIVE)
    response = operator_client.get(reverse("destination_edit", args=[destination.uuid]), follow=True)
    assert "Deactivate this destination before changing it" in response.content.decode()


def send(client, destination, index=0, **extra) -> str:
    data = wizard(**{k: v for k, v in extra.items() if k not in ("body", "confirm")})
    data["index"] = str(index)
    for key in ("body", "confirm"):
        if key in extra:
            data[key] = extra[key]
    response = client.post(
        reverse("destination_test_send", args=[destination.uuid]), data, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    return response.content.decode()


def test_send_test_data_sends_the_exact_edited_body_and_shows_the_new_id(
    operator_client, destination, clazar_sim
):
    body = json.dumps({"name": "Edited offer", "listing": "lst-9", "buyer": "999999999999"})
    page = send(operator_client, destination, body=body)
    assert "HTTP 201" in page
    created = clazar_sim.requests_log(path="/private_offers/")
    assert len(created) == 1
    assert created[0]["json"] == {"name": "Edited offer", "listing": "lst-9", "buyer": "999999999999"}
    delivery = Delivery.objects.get(is_test=True)
    assert delivery.state == Delivery.State.SUCCEEDED
    assert delivery.created_object_id and delivery.created_object_id in page
    assert delivery.attempt_rows.get().status_code == 201
    assert AuditEvent.objects.filter(action="destination.test_send").exists()


def test_a_rejected_test_send_shows_clazar_field_message(operator_client, destination):
    page = send(operator_client, destination, body=json.dumps({"name": "No buyer"}))
    assert "HTTP 400" in page
    assert "This field is required." in page
    assert Delivery.objects.get(is_test=True).state == Delivery.State.FAILED


def test_invalid_json_in_the_edited_body_is_refused_before_sending(operator_client, destination, clazar_sim):
    page = send(operator_client, destination, body='{"name": ')
    assert "The edited body is not valid JSON" in page
    assert clazar_sim.requests_log() == []


@pytest.mark.parametrize("template", ["publish_private_offer", "delete_private_offer"])
def test_irreversible_test_sends_need_the_typed_target_id(operator_client, destination, clazar_sim, template):
    page = send(operator_client, destination, template=template, id_value="{id}", confirm="wrong")
    assert "type the target ID po-1 to confirm" in page
    assert clazar_sim.requests_log() == []
    assert not Delivery.objects.exists()
    page = send(operator_client, destination, template=template, id_value="{id}", confirm="po-1")
    assert "HTTP 404" in page  # the simulator has no offer po-1: it was sent
    assert (
        len(
            clazar_sim.requests_log(
                path="/private_offers/po-1/" + ("publish/" if "publish" in template else "")
            )
        )
        == 1
    )


def test_viewers_cannot_preview_or_send(viewer_client, destination):
    assert (
        viewer_client.post(reverse("destination_preview", args=[destination.uuid]), wizard()).status_code
        == 403
    )
    assert (
        viewer_client.post(reverse("destination_test_send", args=[destination.uuid]), wizard()).status_code
        == 403
    )


def test_clone_makes_a_draft_copy(operator_client, destination):
    Destination.objects.filter(pk=destination.pk).update(
        config={"mode": "template", "template": "create_listing"}, status="active"
    )
    response = operator_client.post(reverse("destination_clone", args=[destination.uuid]))
    clone = Destination.objects.exclude(pk=destination.pk).get()
    assert clone.status == Destination.Status.DRAFT
    assert clone.config["template"] == "create_listing"
    assert clone.name.endswith("(copy)")
    assert response["Location"] == reverse("destination_edit", args=[clone.uuid])


FIELD_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "{id}", "{", "}", "0", "-1", "99999", "on", '{"a":1}', "\r\n", "\x00"]),
)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.dictionaries(
        st.sampled_from([*sorted(wizard()), "batch_enabled", "exclude", "response_webhook"]),
        FIELD_VALUES,
        max_size=12,
    )
)
def test_no_wizard_input_makes_a_server_error(operator_client, destination, data):
    response = operator_client.post(reverse("destination_preview", args=[destination.uuid]), data)
    assert response.status_code == 200
    response = operator_client.post(reverse("destination_edit", args=[destination.uuid]), data)
    assert response.status_code in (302, 422)
    Destination.objects.filter(pk=destination.pk).update(status="draft")


def test_an_admin_adds_a_credential_inline_and_it_comes_back_selected(admin_client, settings):
    nexset = NexsetFactory()
    response = admin_client.post(
        reverse("destination_new_credential"),
        {
            "nexset": str(nexset.uuid),
            "cred-name": "Inline",
            "cred-api_base": "https://api.clazar.io",
            "cred-client_id": "abc",
            "cred-client_secret": "s3cret-inline",
            "cred-rate_limit": "120",
        },
        headers={"HX-Request": "true"},
    )
    page = response.content.decode()
    credential = Credential.objects.get(name="Inline")
    assert f'<option value="{credential.uuid}" selected>' in page
    assert "s3cret-inline" not in page
    assert "Added “Inline”" in json.loads(response["HX-Trigger"])["messages"][0]["text"]


def test_an_inline_credential_with_errors_says_which_field(admin_client):
    response = admin_client.post(
        reverse("destination_new_credential"),
        {"cred-name": "", "cred-api_base": "https://evil.example"},
        headers={"HX-Request": "true"},
    )
    page = response.content.decode()
    assert "This field is required." in page
    assert "Select a valid choice" in page
    assert not Credential.objects.exists()
