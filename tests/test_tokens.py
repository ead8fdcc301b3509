"""flows.tokens and flows.sending against the Clazar simulator over sockets, with threads hitting the
database the way workers do. Runs on SQLite (file lock) and on PostgreSQL (row lock)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from clazar_dest.clazar import transport
from clazar_dest.clazar.auth import AuthError
from clazar_dest.clazar.spec import RequestSpec
from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, ClazarSimulator
from flows import sending, tokens
from flows.models import Credential
from flows.outcomes import classify
from tests.factories import CredentialFactory

LISTING = {"name": "Data Platform", "cloud": "aws"}
THREADS = 20

threaded = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sim(clazar_sim: ClazarSimulator, settings) -> ClazarSimulator:
    settings.CLAZAR_API_BASES = ["https://api.clazar.io", clazar_sim.url]
    settings.CLAZAR_CONNECT_TIMEOUT = 2
    settings.CLAZAR_READ_TIMEOUT = 3
    settings.CLAZAR_DEADLINE = 4
    yield clazar_sim
    transport.close_sessions()


@pytest.fixture
def credential(sim: ClazarSimulator) -> Credential:
    return CredentialFactory(
        api_base=sim.url, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET
    )


def auth_calls(sim: ClazarSimulator) -> int:
    return len(sim.requests_log(path="/authenticate/"))


def create(sim: ClazarSimulator, **body) -> RequestSpec:
    data = json.dumps({**LISTING, **body}).encode()
    return RequestSpec("POST", f"{sim.url}/listings/", data, (1,), endpoint="create_listing")


def in_threads(count: int, work: Callable[[int], object]) -> list[object]:
    """Run work(i) in `count` threads released together; each closes its own database connection."""
    gate = threading.Barrier(count)

    def run(number: int) -> object:
        try:
            gate.wait(timeout=10)
            return work(number)
        finally:
            connection.close()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


# -- caching and expiry --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_token_is_fetched_once_and_then_reused(sim, credential):
    sim.configure(expires_in=600)
    first = tokens.get_token(credential.pk)
    assert tokens.get_token(credential.pk) == first
    assert auth_calls(sim) == 1
    credential.refresh_from_db()
    assert credential.access_token.reveal() == first
    assert credential.status == Credential.Status.OK
    expected = timezone.now() + timedelta(seconds=600)
    assert abs((credential.token_expires_at - expected).total_seconds()) < 5


@pytest.mark.django_db
def test_a_token_inside_the_margin_is_refreshed_and_the_margin_follows_the_lifetime(sim, credential):
    sim.configure(expires_in=20)  # margin: 10% of 20 s = 2 s, not 60 s
    first = tokens.get_token(credential.pk)
    assert tokens.get_token(credential.pk) == first
    assert auth_calls(sim) == 1
    now = timezone.now()
    Credential.objects.filter(pk=credential.pk).update(
        token_expires_at=now + timedelta(seconds=1), checked_at=now - timedelta(seconds=19)
    )
    assert tokens.get_token(credential.pk) != first
    assert auth_calls(sim) == 2


def test_the_margin_is_a_minute_or_a_tenth_of_the_lifetime():
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert tokens.margin(now + timedelta(hours=24), now) == timedelta(seconds=60)
    assert tokens.margin(now + timedelta(seconds=30), now) == timedelta(seconds=3)
    assert tokens.margin(now + timedelta(seconds=30), None) == timedelta(seconds=60)


@threaded
def test_twenty_threads_after_expiry_cause_exactly_one_token_request(sim, credential):
    tokens.get_token(credential.pk)
    Credential.objects.filter(pk=credential.pk).update(token_expires_at=timezone.now() - timedelta(seconds=1))
    sim.add_fault("latency", route="authenticate", seconds=0.2)  # keep the first refresher busy
    got = in_threads(THREADS, lambda _: tokens.get_token(credential.pk))
    assert auth_calls(sim) == 2
    assert len(set(got)) == 1


@threaded
def test_token_expiry_mid_run_with_twenty_senders_refreshes_once(sim, credential):
    tokens.get_token(credential.pk)
    sent = []
    lock = threading.Lock()

    def sender(number: int) -> list[transport.AttemptResult]:
        results = []
        for round_ in range(5):
            results.append(
                sending.send_for_credential(
                    create(sim, name=f"L{number}-{round_}"), credential.pk, idempotency_key=None
                )
            )
            with lock:
                sent.append(1)
                if len(sent) == 40:
                    sim.expire_tokens()  # Clazar drops every token it gave out, mid-run
        return results

    results = [r for batch in in_threads(THREADS, sender) for r in batch]
    assert [r.status for r in results] == [201] * THREADS * 5
    assert any(r.refreshed for r in results)
    assert auth_calls(sim) == 2  # the first token, and exactly one refresh after the expiry
    assert len(sim.objects("listings")) == THREADS * 5
    assert len(sim.requests_log(path="/listings/", method="POST")) == THREADS * 5 + sum(
        r.refreshed for r in results
    )


@threaded
def test_concurrent_401s_for_the_same_token_cause_one_refresh(sim, credential):
    old = tokens.get_token(credential.pk)

    def refused(_: int) -> str:
        tokens.invalidate(credential.pk, old)
        return tokens.get_token(credential.pk)

    got = in_threads(THREADS, refused)
    assert len(set(got)) == 1 and got[0] != old
    assert auth_calls(sim) == 2


@pytest.mark.django_db
def test_invalidate_keeps_a_token_that_was_already_replaced(sim, credential):
    old = tokens.get_token(credential.pk)
    assert tokens.invalidate(credential.pk, old) is True
    new = tokens.get_token(credential.pk)
    assert tokens.invalidate(credential.pk, old) is False
    assert tokens.get_token(credential.pk) == new
    assert auth_calls(sim) == 2


# -- 401 while sending ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_401_once_is_recovered_with_one_refresh_and_one_resend(sim, credential):
    tokens.get_token(credential.pk)
    sim.add_fault("unauthorized", route="create_listing")
    result = sending.send_for_credential(create(sim), credential.pk, idempotency_key="d-1")
    assert (result.status, result.refreshed) == (201, True)
    assert "a new one was fetched" in result.notes[0]
    assert auth_calls(sim) == 2
    assert len(sim.objects("listings")) == 1
    posts = sim.requests_log(path="/listings/", method="POST")
    assert [p["status"] for p in posts] == [401, 201]
    assert all(p["headers"]["idempotency-key"] == "d-1" for p in posts)


@pytest.mark.django_db
def test_a_401_that_persists_after_a_refresh_is_permanent(sim, credential):
    sim.add_fault("unauthorized", route="create_listing", times=2)
    result = sending.send_for_credential(create(sim), credential.pk, idempotency_key=None)
    assert (result.status, result.refreshed) == (401, True)
    outcome = classify(
        method="POST",
        creates_or_publishes=True,
        error_kind=result.error_kind,
        status=result.status,
        headers=result.headers,
        body_json=result.json,
        attempt=1,
        now=timezone.now(),
        refreshed=result.refreshed,
    )
    assert outcome.action == "permanent"
    assert outcome.message.startswith("Clazar rejected the client ID or secret")
    assert auth_calls(sim) == 2


# -- failures ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_wrong_secret_marks_the_credential_rejected_without_logging_the_secret(sim, caplog):
    caplog.set_level(logging.DEBUG)
    credential = CredentialFactory(
        api_base=sim.url, client_id=DEFAULT_CLIENT_ID, client_secret="wrong-s3cret-xyz"
    )
    with pytest.raises(AuthError) as failure:
        tokens.get_token(credential.pk)
    assert failure.value.kind == "rejected"
    credential.refresh_from_db()
    assert credential.status == Credential.Status.REJECTED
    assert credential.last_error.startswith("Clazar rejected the client ID or secret (HTTP 401")
    result = sending.send_for_credential(create(sim), credential.pk, idempotency_key=None)
    assert (result.error_kind, result.sent, result.status) == ("auth_rejected", False, None)
    assert "wrong-s3cret-xyz" not in caplog.text
    assert "wrong-s3cret-xyz" not in credential.last_error
    assert sim.requests_log(path="/listings/") == []


@threaded
def test_twenty_threads_with_a_wrong_secret_ask_clazar_once(sim):
    credential = CredentialFactory(api_base=sim.url, client_id=DEFAULT_CLIENT_ID, client_secret="wrong")
    sim.add_fault("latency", route="authenticate", seconds=0.3)

    def attempt(_: int) -> str:
        try:
            tokens.get_token(credential.pk)
        except AuthError as exc:
            return exc.kind
        return "ok"

    assert in_threads(THREADS, attempt) == ["rejected"] * THREADS
    assert auth_calls(sim) == 1


@pytest.mark.django_db
def test_an_unreachable_token_endpoint_keeps_a_token_that_is_still_valid(sim, credential):
    old = tokens.get_token(credential.pk)
    now = timezone.now()
    Credential.objects.filter(pk=credential.pk).update(
        token_expires_at=now + timedelta(seconds=30), checked_at=now - timedelta(hours=1)
    )
    sim.add_fault("error", route="authenticate", status=503)
    assert tokens.get_token(credential.pk) == old
    credential.refresh_from_db()
    assert credential.status == Credential.Status.OK
    assert "server error (HTTP 503)" in credential.last_error


@pytest.mark.django_db
def test_a_token_endpoint_that_is_down_means_nothing_was_sent_and_it_retries(sim, credential):
    sim.add_fault("error", route="authenticate", status=503)
    result = sending.send_for_credential(create(sim), credential.pk, idempotency_key=None)
    assert (result.error_kind, result.sent) == ("auth_unavailable", False)
    outcome = classify(
        method="POST",
        creates_or_publishes=True,
        error_kind=result.error_kind,
        status=None,
        headers={},
        body_json=None,
        attempt=1,
        now=timezone.now(),
        error=result.error,
    )
    assert outcome.action == "retry"
    credential.refresh_from_db()
    assert credential.status == Credential.Status.UNVERIFIED


@pytest.mark.django_db
def test_a_url_off_the_credentials_api_base_is_never_sent(sim, credential):
    spec = RequestSpec("POST", "http://127.0.0.1:9/listings/?access_token=abc", b"{}", (1,))
    result = sending.send_for_credential(spec, credential.pk, idempotency_key=None)
    assert (result.error_kind, result.sent) == ("invalid", False)
    assert "is not on the credential's API base" in result.error
    assert "abc" not in result.error
    assert sim.requests_log() == []  # not even a token request


@pytest.mark.django_db
def test_a_credential_whose_api_base_is_no_longer_allowed_is_not_used(sim, credential, settings):
    settings.CLAZAR_API_BASES = ["https://api.clazar.io"]
    result = sending.send_for_credential(create(sim), credential.pk, idempotency_key=None)
    assert result.error_kind == "invalid"
    assert "CLAZAR_API_BASES" in result.error
    assert sim.requests_log() == []


@pytest.mark.django_db
def test_the_token_never_appears_in_logs_or_results(sim, credential, caplog):
    caplog.set_level(logging.DEBUG)
    result = sending.send_for_credential(create(sim), credential.pk, idempotency_key="d-9")
    credential.refresh_from_db()
    secret_token = credential.access_token.reveal()
    assert result.status == 201
    assert secret_token not in caplog.text
    assert secret_token not in repr(result)
    assert result.request_headers["Authorization"] == "Bearer ****"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.clazar.io/listings/", True),
        ("https://api.clazar.io:443/listings/", True),  # the default port is the same origin
        ("https://user:pw@api.clazar.io/listings/", False),  # userinfo never rides along
        ("http://api.clazar.io/listings/", False),
        ("https://api.clazar.io:8443/listings/", False),
        ("https://api.clazar.io.evil.example/listings/", False),
        ("https://[::1/listings/", False),  # unreadable
    ],
)
def test_only_urls_on_the_credentials_own_origin_may_carry_its_token(settings, url, allowed):
    settings.CLAZAR_API_BASES = ["https://api.clazar.io"]
    for _ in range(2):  # the second time from the per-URL cache: the same answer
        assert (sending.pinned(url, "https://api.clazar.io") is None) is allowed
