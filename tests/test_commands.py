"""Management commands: demo seed, first admin."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from flows import roles, services
from flows.models import Credential, Destination, Nexset, Record

pytestmark = pytest.mark.django_db


def seed(settings, sim) -> str:
    settings.CLAZAR_SIMULATOR_URL = sim.url
    settings.CLAZAR_API_BASES = ["https://api.clazar.io", sim.url]
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def test_the_demo_seed_prints_a_working_admin_login_once(settings, clazar_sim):
    first = seed(settings, clazar_sim)
    password = first.split("admin / ")[1].split()[0]
    client = Client()
    response = client.post("/login/", {"username": "admin", "password": password}, follow=True)
    assert response.redirect_chain[-1][0] == "/"
    again = seed(settings, clazar_sim)
    assert password not in again
    assert "changepassword admin" in again


def test_the_demo_seed_is_idempotent_and_its_credential_works_against_the_simulator(settings, clazar_sim):
    seed(settings, clazar_sim)
    seed(settings, clazar_sim)
    assert Credential.objects.count() == 1
    assert Nexset.objects.count() == 3
    assert Destination.objects.get().status == Destination.Status.DRAFT
    offers = Nexset.objects.get(name="Demo private offers")
    assert Record.objects.filter(nexset=offers).count() == offers.record_count == 12
    assert {"name", "listing", "buyer"} <= set(offers.schema)
    result = services.check_credential(Credential.objects.get().pk)
    assert result.ok, result.message


def test_the_demo_seed_refuses_to_run_without_a_simulator(settings):
    settings.CLAZAR_SIMULATOR_URL = None
    with pytest.raises(CommandError, match="CLAZAR_SIMULATOR_URL"):
        call_command("seed_demo")


def test_bootstrap_admin_creates_an_admin_with_a_validated_password(monkeypatch):
    monkeypatch.setenv("BOOTSTRAP_ADMIN_PASSWORD", "a-long-enough-passphrase")
    call_command("bootstrap_admin", "--username", "ops", stdout=io.StringIO())
    user = get_user_model().objects.get(username="ops")
    assert roles.role_of(user) == roles.ADMIN
    assert user.check_password("a-long-enough-passphrase")
    with pytest.raises(CommandError, match="already exists"):
        call_command("bootstrap_admin", "--username", "ops")


def test_bootstrap_admin_refuses_a_weak_password(monkeypatch):
    monkeypatch.setenv("BOOTSTRAP_ADMIN_PASSWORD", "12345")
    with pytest.raises(CommandError, match="too short"):
        call_command("bootstrap_admin", "--username", "weak")
    assert not get_user_model().objects.filter(username="weak").exists()
