"""The webhook source: Standard Webhooks signatures, replays, rotation, limits, and the secret shown once."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from standardwebhooks import Webhook

from flows import nexsets
from flows.ingest.signatures import SignatureError, new_secret, verify
from flows.models import Nexset, Record
from tests.factories import DestinationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook():
    """A webhook Nexset and its secret."""
    return nexsets.create_webhook("Orders feed", AnonymousUser())


def headers(
    secret: str, body: bytes, *, msg_id: str | None = None, at: float | None = None
) -> dict[str, str]:
    """Signed with the standardwebhooks library itself, as a sender would."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = datetime.fromtimestamp(int(at if at is not None else time.time()), tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, stamp, body.decode()),
    }


def send(nexset: Nexset, body: bytes, head: dict[str, str]):
    return Client().post(
        reverse("hook", args=[nexset.code]), data=body, content_type="application/json", headers=head
    )


def test_a_signed_object_is_stored_and_answered_202_with_the_count(hook):
    nexset, secret = hook
    body = b'{"id": 7, "name": "Acme", "amount": 10.5}'
    response = send(nexset, body, headers(secret, body, msg_id="msg_1"))
    assert response.status_code == 202
    assert response.json() == {"stored": 1, "received": 1, "duplicate": False}
    record = Record.objects.get(nexset=nexset)
    assert (record.seq, record.source_ref, record.data) == (
        1,
        "msg_1:0",
        {"id": 7, "name": "Acme", "amount": 10.5},
    )
    nexset.refresh_from_db()
    assert nexset.record_count == 1 and nexset.schema["amount"]["type"] == "number"


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (b'[{"a": 1}, {"a": 2}, {"a": 3}]', 3),
        (b'{"a": 1}\n{"a": 2}\n', 2),
    ],
)
def test_an_array_or_ndjson_body_stores_every_record(hook, body, count):
    nexset, secret = hook
    response = send(nexset, body, headers(secret, body))
    assert response.status_code == 202 and response.json()["stored"] == count
    assert list(Record.objects.filter(nexset=nexset).values_list("seq", flat=True)) == list(
        range(1, count + 1)
    )


def test_a_replayed_webhook_id_is_stored_once(hook):
    nexset, secret = hook
    body = b'[{"a": 1}, {"a": 2}]'
    first = send(nexset, body, headers(secret, body, msg_id="msg_replay"))
    again = send(nexset, body, headers(secret, body, msg_id="msg_replay"))
    assert first.json()["stored"] == 2
    assert again.status_code == 202 and again.json() == {"stored": 0, "received": 2, "duplicate": True}
    assert Record.objects.filter(nexset=nexset).count() == 2
    nexset.refresh_from_db()
    assert nexset.record_count == 2 and nexset.last_seq == 2


def test_an_expired_or_future_timestamp_is_refused(hook, settings):
    nexset, secret = hook
    body = b'{"a": 1}'
    old = send(nexset, body, headers(secret, body, at=time.time() - settings.WEBHOOK_TOLERANCE_SECONDS - 60))
    assert old.status_code == 401
    assert "seconds old; the tolerance is 300 seconds" in old.json()["error"]
    future = send(nexset, body, headers(secret, body, at=time.time() + 3600))
    assert future.status_code == 401 and "in the future" in future.json()["error"]
    assert not Record.objects.exists()


def test_the_tolerance_is_a_setting(hook, settings):
    settings.WEBHOOK_TOLERANCE_SECONDS = 3600
    nexset, secret = hook
    body = b'{"a": 1}'
    response = send(nexset, body, headers(secret, body, at=time.time() - 1800))
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: h.pop("webhook-signature"), "Missing header: webhook-signature."),
        (lambda h: h.clear(), "Missing headers: webhook-id, webhook-timestamp, webhook-signature."),
        (lambda h: h.update({"webhook-signature": "v1,AAAA"}), "No signature matches"),
        (lambda h: h.update({"webhook-signature": "v2,xyz junk"}), "holds no v1 signature"),
        (lambda h: h.update({"webhook-timestamp": "yesterday"}), "must be a Unix time in whole seconds"),
        (lambda h: h.update({"webhook-id": "other"}), "No signature matches"),
    ],
)
def test_a_bad_signature_is_refused_401_with_the_reason(hook, change, message):
    nexset, secret = hook
    body = b'{"a": 1}'
    head = headers(secret, body)
    change(head)
    response = send(nexset, body, head)
    assert response.status_code == 401
    assert message in response.json()["error"]
    assert not Record.objects.exists()


def test_a_body_signed_with_another_secret_or_changed_is_refused(hook):
    nexset, secret = hook
    body = b'{"a": 1}'
    assert send(nexset, body, headers(new_secret(), body)).status_code == 401
    assert send(nexset, b'{"a": 2}', headers(secret, body)).status_code == 401


def test_one_good_signature_among_several_is_enough(hook):
    nexset, secret = hook
    body = b'{"a": 1}'
    head = headers(secret, body)
    head["webhook-signature"] = f"v1,{'A' * 44} {head['webhook-signature']} v1a,ignored"
    assert send(nexset, body, head).status_code == 202


def test_after_rotation_the_old_secret_works_during_the_grace_period_only(hook):
    nexset, old = hook
    new, until = nexsets.rotate_secret(nexset.pk)
    nexset.refresh_from_db()
    assert until > timezone.now() + timedelta(hours=23)
    body = b'{"a": 1}'
    assert send(nexset, body, headers(new, body)).status_code == 202
    assert send(nexset, body, headers(old, body)).status_code == 202
    Nexset.objects.filter(pk=nexset.pk).update(webhook_old_secret_until=timezone.now() - timedelta(seconds=1))
    expired = send(nexset, body, headers(old, body))
    assert expired.status_code == 401 and "check the webhook secret" in expired.json()["error"]
    assert send(nexset, body, headers(new, body)).status_code == 202


def test_rotating_twice_drops_the_first_secret(hook):
    nexset, first = hook
    second, _ = nexsets.rotate_secret(nexset.pk)
    third, _ = nexsets.rotate_secret(nexset.pk)
    body = b'{"a": 1}'
    assert send(nexset, body, headers(first, body)).status_code == 401
    assert send(nexset, body, headers(second, body)).status_code == 202
    assert send(nexset, body, headers(third, body)).status_code == 202


def test_an_oversized_body_is_refused_413(hook, settings):
    settings.WEBHOOK_MAX_BYTES = 1024
    nexset, secret = hook
    body = json.dumps({"a": "x" * 2000}).encode()
    response = send(nexset, body, headers(secret, body))
    assert response.status_code == 413
    assert "larger than 1,024 bytes (WEBHOOK_MAX_BYTES)" in response.json()["error"]
    assert not Record.objects.exists()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "The body is empty"),
        (b"[1, 2]", "Record 1 is a JSON number, not an object"),
        (b'{"a": NaN}', "NaN or Infinity"),
        (b'[{"a": 1}, {"a": ', "The body is not valid JSON"),
        (b'{"a": 1}\n{"b": oops}\n', "Line 2 is not valid JSON"),
        (b"\xff\xfe", "The body is not UTF-8 text."),
        (b'"just a string"', "must be a JSON object, an array of objects, or NDJSON"),
    ],
)
def test_a_bad_body_is_refused_400_with_the_reason_and_nothing_is_stored(hook, body, reason):
    nexset, secret = hook
    head = headers(secret, body) if body != b"\xff\xfe" else headers(secret, b"")
    response = send(nexset, body, head)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert not Record.objects.exists()


def test_a_partly_bad_array_stores_nothing(hook):
    nexset, secret = hook
    body = b'[{"a": 1}, {"a": 2}, "three"]'
    response = send(nexset, body, headers(secret, body))
    assert response.status_code == 400 and "Record 3" in response.json()["error"]
    assert not Record.objects.exists()


def test_unknown_urls_and_other_kinds_of_nexset_answer_404(hook):
    _nexset, secret = hook
    upload = Nexset.objects.create(name="file", kind=Nexset.Kind.UPLOAD)
    body = b'{"a": 1}'
    for code in (uuid.uuid4(), upload.code, "not-a-uuid"):
        response = Client().post(
            f"/hooks/{code}/", data=body, content_type="application/json", headers=headers(secret, body)
        )
        assert response.status_code == 404
        assert "No webhook has this URL" in response.json()["error"]


def test_the_hook_only_takes_post(hook):
    nexset, _ = hook
    assert Client().get(reverse("hook", args=[nexset.code])).status_code == 405


def test_the_secret_is_encrypted_at_rest(hook):
    nexset, secret = hook
    with connection.cursor() as cursor:
        cursor.execute("SELECT webhook_secret FROM flows_nexset WHERE id = %s", [nexset.pk])
        stored = cursor.fetchone()[0]
    assert secret not in stored and stored


# The pages -----------------------------------------------------------------------------------------


def test_creating_a_webhook_shows_its_url_and_secret_once(operator_client):
    response = operator_client.post(reverse("nexset_webhook_new"), {"name": "Orders feed"})
    assert response.status_code == 200
    nexset = Nexset.objects.get()
    secret = response.context["secret"]
    assert secret.startswith("whsec_")
    page = response.content.decode()
    assert secret in page and f"/hooks/{nexset.code}/" in page
    assert "it is stored encrypted and never shown again" in page
    detail = operator_client.get(reverse("nexset_detail", args=[nexset.uuid])).content.decode()
    assert secret not in detail and f"/hooks/{nexset.code}/" in detail
    assert "Rotate secret" in detail


def test_rotating_shows_the_new_secret_once_in_place(operator_client, hook):
    nexset, old = hook
    response = operator_client.post(
        reverse("nexset_webhook_rotate", args=[nexset.uuid]), headers={"HX-Request": "true"}
    )
    fragment = response.content.decode()
    assert fragment.lstrip().startswith('<section class="card webhook" id="webhook"')
    assert "New signing secret. Copy it now" in fragment
    assert "The previous secret keeps working until" in fragment
    new = re.search(r"whsec_[A-Za-z0-9+/=]+", fragment).group(0)
    assert new != old and old not in fragment
    assert nexsets.valid_secrets(Nexset.objects.get(pk=nexset.pk)) == [new, old]


def test_a_viewer_sees_the_url_but_cannot_rotate(viewer_client, hook):
    nexset, _ = hook
    page = viewer_client.get(reverse("nexset_detail", args=[nexset.uuid])).content.decode()
    assert f"/hooks/{nexset.code}/" in page and "Rotate secret" not in page
    assert viewer_client.post(reverse("nexset_webhook_rotate", args=[nexset.uuid])).status_code == 403


# The signature check itself ------------------------------------------------------------------------


def test_verify_accepts_the_librarys_signature_and_returns_the_id():
    secret = new_secret()
    body = b'{"x": 1}'
    now = time.time()
    head = headers(secret, body, msg_id="msg_x", at=now)
    assert verify(body, head, [secret], tolerance=300, now=now) == "msg_x"
    assert verify(
        body, {k.upper(): v for k, v in head.items()}, [new_secret(), secret], tolerance=300, now=now
    )


def test_verify_refuses_an_overlong_id():
    secret = new_secret()
    body = b"{}"
    head = headers(secret, body, msg_id="m" * 201)
    with pytest.raises(SignatureError, match="longer than 200"):
        verify(body, head, [secret], tolerance=300, now=time.time())


@pytest.mark.django_db(transaction=True)
def test_concurrent_messages_get_consecutive_seqs_and_exact_counts():
    nexset, secret = nexsets.create_webhook("Busy feed", AnonymousUser())
    answers = []

    def sender(index: int) -> None:
        for n in range(8):
            body = json.dumps({"sender": index, "n": n}).encode()
            answers.append(send(nexset, body, headers(secret, body)).status_code)
        connection.close()

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers.count(202) == 32, answers
    nexset.refresh_from_db()
    assert nexset.record_count == nexset.last_seq == 32
    assert sorted(Record.objects.filter(nexset=nexset).values_list("seq", flat=True)) == list(range(1, 33))
    assert nexset.schema["n"]["count"] == 32


def test_new_records_wake_the_active_destinations_after_commit(hook, django_capture_on_commit_callbacks):
    nexset, secret = hook
    body = b'{"a": 1}'
    with django_capture_on_commit_callbacks() as idle:
        send(nexset, body, headers(secret, body))
    assert idle == [], "no active destination, no wake-up"
    DestinationFactory(nexset=nexset, status="active")
    with django_capture_on_commit_callbacks() as callbacks:
        send(nexset, b'{"a": 2}', headers(secret, b'{"a": 2}'))
    assert len(callbacks) == 1
