"""The shared request budget (flows/ratelimit.py): the GCRA arithmetic, and both backends (the database
always; Redis when REDIS_URL is set)."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from hypothesis import given
from hypothesis import strategies as st

from flows import ratelimit
from flows.models import RateBudget
from tests.factories import CredentialFactory


def test_pace_keeps_a_margin_under_the_limit_with_a_small_burst():
    interval, tau = ratelimit.pace(600, use_percent=97)
    assert interval == pytest.approx(60 / 582)
    assert tau == pytest.approx(4 * interval)  # a burst of 5
    assert ratelimit.pace(120, use_percent=97)[1] == 0  # a burst of 1


def test_step_grants_a_burst_then_one_per_interval():
    tat, granted, wait = ratelimit.step(0.0, 100.0, 1.0, 2.0, want=10)
    assert (tat, granted, wait) == (103.0, 3, 0.0)
    tat, granted, wait = ratelimit.step(tat, 100.0, 1.0, 2.0, want=1)
    assert granted == 0 and wait == pytest.approx(1.0)
    tat, granted, _ = ratelimit.step(tat, 101.0, 1.0, 2.0, want=5)
    assert granted == 1 and tat == 104.0


@given(
    per_minute=st.integers(min_value=1, max_value=5000),
    gaps=st.lists(st.floats(min_value=0, max_value=3), min_size=1, max_size=300),
    wants=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=300),
)
def test_no_sixty_second_window_ever_gets_more_than_the_limit(per_minute, gaps, wants):
    interval, tau = ratelimit.pace(per_minute, use_percent=97)
    tat, now, grants = 0.0, 1000.0, []
    for gap, want in zip(gaps, wants, strict=False):
        now += gap
        tat, granted, _ = ratelimit.step(tat, now, interval, tau, want)
        grants += [now] * granted
    for i, start in enumerate(grants):
        in_window = sum(1 for t in grants[i:] if t < start + 60)
        assert in_window <= per_minute


@pytest.fixture(params=["database", "redis"])
def backend(request, settings, db):
    if request.param == "redis":
        if not django_settings.REDIS_URL:
            pytest.skip("REDIS_URL is not set")
    else:
        settings.REDIS_URL = None
    return request.param


def test_a_credential_gets_its_burst_then_must_wait(backend):
    credential = CredentialFactory(rate_limit=600)
    first = ratelimit.take(credential, 50)
    assert first.count == 5
    again = ratelimit.take(credential, 1)
    assert again.count == 0 and 0 < again.wait <= 0.11
    if backend == "database":
        assert RateBudget.objects.get(pk=credential.pk).tat > 0


def test_requests_given_back_can_be_taken_again(backend):
    credential = CredentialFactory(rate_limit=600)
    assert ratelimit.take(credential, 5).count == 5
    ratelimit.refund(credential, 2)
    assert ratelimit.take(credential, 5).count == 2


def test_a_hold_stops_the_credential_for_that_long(backend):
    credential = CredentialFactory(rate_limit=100_000)
    ratelimit.hold(credential, 30)
    grant = ratelimit.take(credential, 1)
    assert grant.count == 0 and 29 < grant.wait <= 30.1
    assert ratelimit.wait_for(credential, timeout=0.05) is False


def test_two_credentials_have_separate_budgets(backend):
    one, two = CredentialFactory(rate_limit=60), CredentialFactory(rate_limit=60)
    assert ratelimit.take(one, 1).count == 1
    assert ratelimit.take(two, 1).count == 1
    assert ratelimit.take(one, 1).count == 0
