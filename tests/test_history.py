"""A destination's delivery history: filters, keyset pages, the attempt inspector and the CSV export
(flows/history.py, flows/views/history.py). Runs on SQLite and, with DATABASE_URL, on PostgreSQL."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone

from flows import history
from flows.models import Attempt, AuditEvent, Delivery
from tests.deliveries import DeliveryFactory, deliveries
from tests.factories import DestinationFactory, NexsetFactory

pytestmark = pytest.mark.django_db
S = Delivery.State
HTMX = {"HX-Request": "true"}


@pytest.fixture
def destination():
    nexset = NexsetFactory(name="Offers")  # the schema follows the records the tests add
    return DestinationFactory(name="Offers to Clazar", nexset=nexset, status="active")


def shown(page: str) -> list[str]:
    """The delivery uuids in the history table, top to bottom."""
    return re.findall(r'<tr id="row-([0-9a-f-]{36})"', page)


def uuids(rows: list[Delivery]) -> list[str]:
    return [str(d.uuid) for d in rows]


def test_the_history_lists_non_test_deliveries_newest_first(viewer_client, destination):
    made = deliveries(destination, {S.SUCCEEDED: 2, S.FAILED: 1})
    test = DeliveryFactory(destination=destination, state=S.SUCCEEDED, is_test=True)
    DeliveryFactory(state=S.FAILED)  # another destination
    url = reverse("destination_history", args=[destination.uuid])
    page = viewer_client.get(url).content.decode()
    assert shown(page) == uuids(made[::-1])
    assert "buyer: This field is required." in page
    tests = viewer_client.get(url, {"tests": "1"}).content.decode()
    assert shown(tests) == [str(test.uuid)]


def test_keyset_pages_go_older_and_back_newer_without_gaps_or_repeats(
    viewer_client, destination, monkeypatch
):
    monkeypatch.setattr(history, "PAGE_SIZE", 4)
    made = uuids(deliveries(destination, {S.SUCCEEDED: 10})[::-1])
    url = reverse("destination_history", args=[destination.uuid])
    first = viewer_client.get(url).content.decode()
    assert shown(first) == made[:4]
    assert "Newer" not in first
    older = re.search(r'href="[^"]*\?before=(\d+)"', first).group(1)
    second = viewer_client.get(url, {"before": older}).content.decode()
    assert shown(second) == made[4:8]
    third = viewer_client.get(url, {"before": re.search(r"\?before=(\d+)", second).group(1)}).content.decode()
    assert shown(third) == made[8:]
    assert "Older" not in third
    newer = re.search(r'href="[^"]*\?after=(\d+)"', third).group(1)
    back = viewer_client.get(url, {"after": newer}).content.decode()
    assert shown(back) == made[4:8]


def test_pages_keep_the_filter_in_their_links(viewer_client, destination, monkeypatch):
    monkeypatch.setattr(history, "PAGE_SIZE", 2)
    deliveries(destination, {S.FAILED: 5, S.SUCCEEDED: 3})
    url = reverse("destination_history", args=[destination.uuid])
    page = viewer_client.get(url, {"state": "failed"}).content.decode()
    link = re.search(r'href="([^"]*before=\d+[^"]*)"', page).group(1).replace("&amp;", "&")
    assert "state=failed" in link
    assert len(shown(viewer_client.get(link).content.decode())) == 2


def test_the_htmx_request_gets_only_the_history_fragment(viewer_client, destination):
    deliveries(destination, {S.SUCCEEDED: 1})
    response = viewer_client.get(
        reverse("destination_history", args=[destination.uuid]), headers={**HTMX, "HX-Target": "history"}
    )
    page = response.content.decode()
    assert page.lstrip().startswith('<div id="history">')
    assert "<html" not in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"state": "failed"}, ["failed"]),
        ({"state": "problems"}, ["failed", "exhausted", "needs_attention"]),
        ({"state": "pending"}, ["queued", "retry_scheduled"]),
        ({"status": "503"}, ["exhausted"]),
        ({"status": "none"}, ["queued", "needs_attention"]),
    ],
)
def test_state_and_status_filters(viewer_client, destination, query, expected):
    made = deliveries(
        destination,
        {
            S.SUCCEEDED: 1,
            S.FAILED: 1,
            S.EXHAUSTED: 1,
            S.NEEDS_ATTENTION: 1,
            S.QUEUED: 1,
            S.RETRY_SCHEDULED: 1,
        },
    )
    page = viewer_client.get(reverse("destination_history", args=[destination.uuid]), query).content.decode()
    assert sorted(shown(page)) == sorted(str(d.uuid) for d in made if d.state in expected)


def test_the_time_range_filter_uses_when_deliveries_finished(viewer_client, destination):
    old, recent = deliveries(destination, {S.SUCCEEDED: 2})
    Delivery.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(hours=3))
    url = reverse("destination_history", args=[destination.uuid])
    assert shown(viewer_client.get(url, {"period": "1h"}).content.decode()) == [str(recent.uuid)]
    since = (timezone.now() - timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M")
    until = (timezone.now() - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    page = viewer_client.get(url, {"period": "custom", "since": since, "until": until}).content.decode()
    assert shown(page) == [str(old.uuid)]


@pytest.mark.parametrize(
    ("typed", "match"),
    [("buyer=111122223333", 0), ("price=19.5", 1), ("rush=true", 2), ("name=Acme annual", 0)],
)
def test_the_record_filter_matches_a_field_of_the_deliveries_records(
    viewer_client, destination, typed, match
):
    made = [
        DeliveryFactory(destination=destination, data={"name": "Acme annual", "buyer": "111122223333"}),
        DeliveryFactory(destination=destination, data={"name": "Globex", "buyer": "9", "price": 19.5}),
        DeliveryFactory(destination=destination, data={"name": "Initech", "buyer": "8", "rush": True}),
    ]
    page = viewer_client.get(
        reverse("destination_history", args=[destination.uuid]), {"record": typed}
    ).content.decode()
    assert shown(page) == [str(made[match].uuid)]


def test_a_record_filter_matching_many_records_still_finds_their_deliveries(
    viewer_client, destination, monkeypatch
):
    monkeypatch.setattr(history, "MATCH_LIMIT", 1)
    made = [DeliveryFactory(destination=destination, data={"name": "Same", "buyer": "1"}) for _ in range(3)]
    DeliveryFactory(destination=destination, data={"name": "Other", "buyer": "2"})
    page = viewer_client.get(
        reverse("destination_history", args=[destination.uuid]), {"record": "name=Same"}
    ).content.decode()
    assert shown(page) == uuids(made[::-1])


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"record": "colour=red"}, "the records have no field “colour”"),
        ({"record": "buyer"}, "write field=value"),
        ({"status": "abc"}, "type an HTTP status"),
        ({"period": "custom", "since": "yesterday"}, "use dates such as"),
    ],
)
def test_a_filter_that_can_not_be_understood_says_how_to_write_it(viewer_client, destination, query, message):
    page = viewer_client.get(reverse("destination_history", args=[destination.uuid]), query).content.decode()
    assert message in page


def test_empty_states_say_what_to_do_next(viewer_client, operator_client):
    destination = DestinationFactory(status="draft")
    url = reverse("destination_history", args=[destination.uuid])
    assert "Deliveries appear here once an Operator activates" in viewer_client.get(url).content.decode()
    assert "Activate this destination</a>" in operator_client.get(url).content.decode()
    assert "No deliveries match" in viewer_client.get(url, {"state": "failed"}).content.decode()


# The attempt inspector -----------------------------------------------------------------------------------------


@pytest.fixture
def secretive():
    delivery = DeliveryFactory(state=S.FAILED)
    Attempt.objects.filter(delivery=delivery).update(
        url="https://api.clazar.io/private_offers/?token=tok-123&page=2",
        request_headers={
            "Authorization": "Bearer eyJhbGciOi.secret-part.sig",
            "X-Api-Key": "k-987",
            "Idempotency-Key": "idem-1",
        },
        response_headers={"Set-Cookie": "session=cookie-456", "Content-Type": "application/json"},
        response_body='{"detail": "Invalid", "access_token": "leaked-789", "id": "x"}',
    )
    return delivery


def test_the_inspector_shows_request_and_response_with_secrets_masked(viewer_client, secretive):
    page = viewer_client.get(reverse("delivery_detail", args=[secretive.uuid])).content.decode()
    for secret in ("tok-123", "secret-part", "k-987", "cookie-456", "leaked-789"):
        assert secret not in page
    assert "Authorization: Bearer ****" in page
    assert "token=****" in page
    assert "idem-1" in page  # not a secret: shown so it can be matched with Clazar's logs
    assert "HTTP 400" in page
    assert "300 ms" in page
    assert "&quot;detail&quot;: &quot;Invalid&quot;" in page


def test_the_inspector_opens_inline_as_a_table_row_under_its_delivery(viewer_client, secretive):
    response = viewer_client.get(
        reverse("delivery_detail", args=[secretive.uuid]),
        headers={**HTMX, "HX-Target": f"row-{secretive.uuid}"},
    )
    page = response.content.decode()
    assert page.lstrip().startswith('<tr class="inspect-row"><td colspan="8">')
    assert "Open as a page" in page
    assert "<html" not in page


def test_viewers_see_no_action_buttons_and_operators_see_the_ones_that_apply(viewer_client, operator_client):
    failed = DeliveryFactory(state=S.FAILED)
    attention = DeliveryFactory(state=S.NEEDS_ATTENTION)
    url = reverse("delivery_detail", args=[failed.uuid])
    assert "Retry</button>" not in viewer_client.get(url).content.decode()
    page = operator_client.get(url).content.decode()
    assert "Retry</button>" in page
    assert "Replay with this body" in page
    assert "Cancel delivery" not in page
    decide = operator_client.get(reverse("delivery_detail", args=[attention.uuid])).content.decode()
    assert "Mark as created" in decide
    assert "Send again" in decide
    assert "Cancel delivery" in decide
    assert "Retry</button>" not in decide


# CSV export -----------------------------------------------------------------------------------------------------


def read_csv(response) -> list[list[str]]:
    assert isinstance(response, StreamingHttpResponse)
    text = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(text)))


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_the_csv_export_defuses_cells_a_spreadsheet_would_run(viewer_client, destination, start):
    DeliveryFactory(destination=destination, state=S.FAILED, last_error=f'{start}HYPERLINK("http://x")')
    response = viewer_client.get(reverse("destination_history_csv", args=[destination.uuid]))
    rows = read_csv(response)
    error = rows[1][rows[0].index("last_error")]
    assert error == f'\'{start}HYPERLINK("http://x")'


def test_the_csv_export_streams_the_filtered_history_with_its_records(viewer_client, destination):
    made = deliveries(destination, {S.SUCCEEDED: 2, S.FAILED: 1})
    response = viewer_client.get(
        reverse("destination_history_csv", args=[destination.uuid]), {"state": "succeeded"}
    )
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert 'attachment; filename="offers-to-clazar-history-' in response["Content-Disposition"]
    rows = read_csv(response)
    assert rows[0] == list(history.CSV_HEADER)
    assert [r[0] for r in rows[1:]] == [str(made[1].uuid), str(made[0].uuid)]
    assert rows[1][rows[0].index("http_status")] == "201"
    assert rows[1][rows[0].index("records")] == str(made[1].records.get().seq)
    assert AuditEvent.objects.filter(action="destination.export", object_id=str(destination.uuid)).exists()


def test_the_csv_export_reads_in_chunks(viewer_client, destination, monkeypatch):
    monkeypatch.setattr(history, "EXPORT_CHUNK", 2)
    deliveries(destination, {S.SUCCEEDED: 5})
    rows = read_csv(viewer_client.get(reverse("destination_history_csv", args=[destination.uuid])))
    assert len(rows) == 6
    assert len({r[0] for r in rows[1:]}) == 5


def test_the_replay_editor_shows_the_body_as_it_will_be_sent_unmasked(operator_client):
    delivery = DeliveryFactory(state=S.FAILED, data={"name": "Acme", "api_key_hint": "visible"})
    page = operator_client.get(reverse("delivery_detail", args=[delivery.uuid])).content.decode()
    editor = page[page.index("<textarea") : page.index("</textarea>")]
    assert "&quot;api_key_hint&quot;: &quot;visible&quot;" in editor
