"""flows.outcomes: what to do after one attempt. Pure: no database, no network."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows import outcomes
from flows.outcomes import ACTIONS, MAX_ATTEMPTS, classify, flatten, retry_after_seconds

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POSSIBLY_SENT = ("sent_then_failed", "read_timeout", "deadline")


def decide(**kwargs):
    values = {
        "method": "POST",
        "creates_or_publishes": True,
        "error_kind": None,
        "status": None,
        "headers": {},
        "body_json": None,
        "attempt": 1,
        "now": NOW,
        "rng": random.Random(7),
    }
    values.update(kwargs)
    return classify(**values)


# -- done ----------------------------------------------------------------------------------------------


def test_a_2xx_is_done_and_keeps_the_created_id():
    outcome = decide(status=201, body_json={"id": "3f2a", "name": "Data Platform"})
    assert (outcome.action, outcome.created_id, outcome.counts_for_breaker) == ("done", "3f2a", False)
    assert "3f2a" in outcome.message


def test_a_201_with_an_unreadable_body_takes_the_id_from_location():
    outcome = decide(
        status=201, error_kind="too_large", headers={"location": "https://api.clazar.io/listings/9c1e/"}
    )
    assert (outcome.action, outcome.created_id) == ("done", "9c1e")


def test_a_created_object_whose_id_cannot_be_read_is_done_and_says_the_id_is_unknown():
    outcome = decide(status=201, error_kind="malformed")
    assert outcome.action == "done"
    assert outcome.created_id is None
    assert "id is not known" in outcome.message
    assert "do not send the record again" in outcome.message


def test_a_204_delete_is_done():
    outcome = decide(method="DELETE", creates_or_publishes=False, status=204)
    assert outcome.action == "done"
    assert outcome.message == "Clazar accepted it (HTTP 204 No Content)."


# -- retry, unknown ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_a_connect_error_retries_every_method_because_nothing_was_sent(method):
    outcome = decide(method=method, error_kind="connect", error="Could not reach api.clazar.io: refused.")
    assert outcome.action == "retry"
    assert outcome.retry_at is not None and outcome.retry_at > NOW
    assert outcome.counts_for_breaker
    assert outcome.message.startswith("Could not reach api.clazar.io: refused. Retrying in ")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_a_429_retries_every_method_no_sooner_than_retry_after(method):
    outcome = decide(method=method, status=429, headers={"Retry-After": "120"}, attempt=1)
    assert outcome.action == "retry"
    assert outcome.retry_at >= NOW + timedelta(seconds=120)
    assert not outcome.counts_for_breaker
    assert "rate limiting" in outcome.message


def test_a_429_honours_an_http_date_retry_after():
    when = format_datetime(NOW + timedelta(minutes=5), usegmt=True)
    outcome = decide(status=429, headers={"retry-after": when})
    assert outcome.retry_at >= NOW + timedelta(minutes=5)


def test_a_huge_retry_after_is_clamped_to_an_hour():
    outcome = decide(status=429, headers={"Retry-After": "999999"})
    assert outcome.retry_at <= NOW + timedelta(seconds=outcomes.RETRY_AFTER_MAX)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("failure", [{"status": 503}, *({"error_kind": k} for k in POSSIBLY_SENT)])
def test_server_errors_and_lost_answers_retry_idempotent_methods(method, failure):
    outcome = decide(method=method, creates_or_publishes=False, **failure)
    assert outcome.action == "retry"
    assert outcome.counts_for_breaker


@pytest.mark.parametrize("failure", [{"status": 502}, *({"error_kind": k} for k in POSSIBLY_SENT)])
def test_it_does_not_resend_a_create_after_a_possibly_sent_failure(failure):
    outcome = decide(method="POST", creates_or_publishes=True, **failure)
    assert outcome.action == "unknown"
    assert outcome.retry_at is None
    assert "not sent again automatically" in outcome.message


def test_an_advanced_post_is_never_retried_blindly_either():
    assert decide(method="post", creates_or_publishes=False, error_kind="read_timeout").action == "unknown"


def test_a_404_on_a_repeated_delete_counts_as_already_deleted():
    outcome = decide(
        method="DELETE",
        creates_or_publishes=False,
        status=404,
        attempt=2,
        target_id="3f2a",
        resource_label="Private offer",
    )
    assert outcome.action == "done"
    assert outcome.message.startswith("Private offer 3f2a is already gone from Clazar")


def test_retries_run_out_after_the_schedule():
    outcome = decide(method="PUT", creates_or_publishes=False, status=503, attempt=MAX_ATTEMPTS)
    assert outcome.action == "exhausted"
    assert outcome.retry_at is None
    assert outcome.message.startswith(f"Gave up after {MAX_ATTEMPTS} attempts")
    assert (
        decide(method="PUT", creates_or_publishes=False, status=503, attempt=MAX_ATTEMPTS - 1).action
        == "retry"
    )


def test_the_schedule_spans_about_a_day():
    assert 20 * 3600 <= outcomes.SCHEDULE_SECONDS <= 30 * 3600


# -- permanent -----------------------------------------------------------------------------------------


def test_a_400_flattens_clazars_field_messages():
    body = {"title": ["This field is required."], "cloud": ['"mars" is not a valid choice.']}
    outcome = decide(status=400, body_json=body)
    assert outcome.action == "permanent"
    assert outcome.message == (
        'Clazar rejected the record: title: This field is required.; cloud: "mars" is not a valid choice.'
    )
    assert not outcome.counts_for_breaker


def test_a_422_with_nested_and_listed_errors_names_each_path():
    body = {"request": [{}, {"cloud": ["This field is required."]}], "non_field_errors": ["Bad batch."]}
    outcome = decide(status=422, body_json=body)
    assert (
        outcome.message == "Clazar rejected the record: request[1].cloud: This field is required.; Bad batch."
    )


def test_a_403_names_clazars_detail_and_the_credential():
    outcome = decide(status=403, body_json={"detail": "You do not have permission to perform this action."})
    assert outcome.message == (
        "Clazar refused: You do not have permission to perform this action. Check the credential's permissions."
    )


def test_a_404_names_the_object_when_its_id_is_known():
    outcome = decide(
        method="PUT",
        creates_or_publishes=False,
        status=404,
        body_json={"detail": "Not found."},
        target_id="3f2a",
        resource_label="Private offer",
    )
    assert outcome.action == "permanent"
    assert outcome.message.startswith("Private offer 3f2a was not found in Clazar.")


def test_a_401_refreshes_the_token_first_and_is_permanent_after_a_refresh():
    first = decide(status=401, body_json={"detail": "Invalid token."})
    assert first.action == "refresh_token"
    second = decide(status=401, body_json={"detail": "Invalid token."}, refreshed=True)
    assert second.action == "permanent"
    assert second.message.startswith("Clazar rejected the client ID or secret")


def test_a_redirect_is_permanent_and_names_the_location_without_its_query():
    outcome = decide(
        status=302, error_kind="redirect", headers={"Location": "https://u:p@elsewhere.example/x?token=abc"}
    )
    assert outcome.action == "permanent"
    assert outcome.message.startswith("Clazar answered with a redirect to https://elsewhere.example/x ")
    assert "redirects are never followed" in outcome.message
    assert "abc" not in outcome.message and "u:p" not in outcome.message


def test_a_rejected_credential_is_permanent_and_an_unreachable_token_endpoint_retries():
    assert decide(error_kind="auth_rejected", error="Clazar rejected the client ID.").action == "permanent"
    outcome = decide(error_kind="auth_unavailable", error="Could not reach api.clazar.io.")
    assert outcome.action == "retry"
    assert "Nothing was sent" in outcome.message


# -- Retry-After ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Sat, 01 Mar 2025 12:01:00 GMT", 60.0),
        ("Sat, 01 Mar 2025 11:00:00 GMT", 0.0),
        ("", None),
        (None, None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Mon, 99 Foo 2025", None),
        ("١٢", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(value, expected):
    assert retry_after_seconds(value, NOW) == expected


@given(st.text(max_size=40))
def test_retry_after_never_raises_and_is_never_negative(value):
    seconds = retry_after_seconds(value, NOW)
    assert seconds is None or seconds >= 0


def test_flatten_handles_plain_values():
    assert flatten({"detail": "Not found."}) == ["Not found."]
    assert flatten({"a": {"b": ["x", "y"]}}) == ["a.b: x y"]
    assert flatten(None) == []


# -- properties ----------------------------------------------------------------------------------------

methods = st.sampled_from(["POST", "PUT", "PATCH", "DELETE", "post", "put"])
kinds = st.sampled_from(
    [
        None,
        "connect",
        "invalid",
        "sent_then_failed",
        "read_timeout",
        "deadline",
        "redirect",
        "too_large",
        "malformed",
        "auth_rejected",
        "auth_unavailable",
    ]
)
statuses = st.one_of(
    st.none(), st.integers(100, 599), st.sampled_from([200, 201, 204, 400, 401, 404, 429, 503])
)
retry_afters = st.one_of(
    st.none(),
    st.integers(0, 10**7).map(str),
    st.integers(-3600, 10**6).map(lambda s: format_datetime(NOW + timedelta(seconds=s), usegmt=True)),
    st.text(max_size=12),
)
bodies = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=8), st.lists(st.text(max_size=20), max_size=3), max_size=4),
    st.fixed_dictionaries({"detail": st.text(max_size=30)}),
    st.fixed_dictionaries({"id": st.one_of(st.text(max_size=10), st.integers())}),
)


@settings(max_examples=400)
@given(
    method=methods,
    creates=st.booleans(),
    kind=kinds,
    status=statuses,
    retry_after=retry_afters,
    body=bodies,
    attempt=st.integers(1, 60),
    refreshed=st.booleans(),
    rng=st.randoms(use_true_random=False),
)
def test_every_combination_gives_a_known_action_and_a_message(
    method, creates, kind, status, retry_after, body, attempt, refreshed, rng
):
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    outcome = classify(
        method=method,
        creates_or_publishes=creates,
        error_kind=kind,
        status=None if kind in ("connect", "invalid", "auth_rejected", "auth_unavailable") else status,
        headers=headers,
        body_json=body,
        attempt=attempt,
        now=NOW,
        rng=rng,
        refreshed=refreshed,
    )
    assert outcome.action in ACTIONS
    assert outcome.message.strip()
    assert (outcome.retry_at is not None) == (outcome.action == "retry")
    if outcome.action == "permanent":
        assert not outcome.counts_for_breaker or status is None


@settings(max_examples=300)
@given(
    kind=st.sampled_from(POSSIBLY_SENT),
    status=st.one_of(st.none(), st.integers(500, 599)),
    method=methods,
    attempt=st.integers(1, 60),
    retry_after=retry_afters,
)
def test_a_create_or_publish_is_never_retried_after_a_possibly_sent_failure(
    kind, status, method, attempt, retry_after
):
    for error_kind in (kind, None) if status is not None else (kind,):
        outcome = classify(
            method=method,
            creates_or_publishes=True,
            error_kind=error_kind,
            status=status,
            headers={} if retry_after is None else {"Retry-After": retry_after},
            body_json=None,
            attempt=attempt,
            now=NOW,
        )
        assert outcome.action == "unknown"


@settings(max_examples=400)
@given(
    status=st.sampled_from([429, 503, 500, 408]),
    method=st.sampled_from(["PUT", "PATCH", "DELETE"]),
    attempt=st.integers(1, MAX_ATTEMPTS - 1),
    retry_after=st.one_of(st.none(), st.integers(0, 10**6)),
    rng=st.randoms(use_true_random=False),
)
def test_retry_delays_stay_within_bounds_and_never_come_before_retry_after(
    status, method, attempt, retry_after, rng
):
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    outcome = classify(
        method=method,
        creates_or_publishes=False,
        error_kind=None,
        status=status,
        headers=headers,
        body_json=None,
        attempt=attempt,
        now=NOW,
        rng=rng,
    )
    assert outcome.action == "retry"
    delay = (outcome.retry_at - NOW).total_seconds()
    assert outcomes.FLOOR <= delay <= max(outcomes.STEP_CAP, outcomes.RETRY_AFTER_MAX)
    assert delay <= max(outcomes.RETRY_AFTER_MAX, min(outcomes.STEP_CAP, outcomes.BASE * 2 ** (attempt - 1)))
    if retry_after is not None:
        assert delay >= min(retry_after, outcomes.RETRY_AFTER_MAX)
