import pytest
from django.test import Client
from django.urls import reverse

from flows import roles
from tests.factories import PASSWORD, UserFactory


@pytest.mark.django_db
def test_a_user_logs_in_and_lands_on_the_dashboard():
    user = UserFactory(role=roles.VIEWER)
    response = Client().post(reverse("login"), {"username": user.username, "password": PASSWORD}, follow=True)
    assert response.status_code == 200
    assert b"Dashboard" in response.content


@pytest.mark.django_db
def test_a_wrong_password_says_so_without_saying_which_part_was_wrong():
    user = UserFactory(role=roles.VIEWER)
    response = Client().post(reverse("login"), {"username": user.username, "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


@pytest.mark.django_db
def test_login_locks_after_repeated_failures_even_with_the_right_password(settings):
    user = UserFactory(role=roles.VIEWER)
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post(reverse("login"), {"username": user.username, "password": "wrong"})
    response = client.post(reverse("login"), {"username": user.username, "password": PASSWORD})
    assert response.status_code == 429
    assert b"Too many failed log-ins" in response.content
    other = UserFactory(role=roles.VIEWER)
    ok = client.post(reverse("login"), {"username": other.username, "password": PASSWORD})
    assert ok.status_code == 302, "another account from the same address is not locked"


@pytest.mark.django_db
def test_logout_ends_the_session():
    user = UserFactory(role=roles.VIEWER)
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    client.post(reverse("logout"))
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
