import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from flows import roles
from flows.models import AuditEvent
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db
User = get_user_model()


def can_log_in(username: str, password: str) -> bool:
    response = Client().post(reverse("login"), {"username": username, "password": password})
    return response.status_code == 302


def test_an_admin_adds_an_operator_who_can_then_log_in(admin_client):
    response = admin_client.post(
        reverse("user_new"),
        {
            "username": "olga",
            "email": "olga@example.com",
            "role": roles.OPERATOR,
            "password": "river-stone-lamp-42",
        },
        follow=True,
    )
    assert "Created olga as Operator." in response.content.decode()
    olga = User.objects.get(username="olga")
    assert roles.role_of(olga) == roles.OPERATOR
    assert can_log_in("olga", "river-stone-lamp-42")
    event = AuditEvent.objects.get(action="user.create")
    assert event.changes["role"]["after"] == roles.OPERATOR
    assert "river-stone" not in str(event.changes)


def test_a_weak_initial_password_is_refused_with_the_reason(admin_client):
    response = admin_client.post(
        reverse("user_new"), {"username": "bob", "role": roles.VIEWER, "password": "123"}
    )
    assert "This password is too short." in response.content.decode()
    assert not User.objects.filter(username="bob").exists()


def test_an_admin_changes_a_role_and_deactivates_a_user(admin_client):
    viewer = UserFactory(role=roles.VIEWER)
    admin_client.post(
        reverse("user_edit", args=[viewer.pk]), {"email": "", "role": roles.OPERATOR, "is_active": "on"}
    )
    viewer.refresh_from_db()
    assert roles.role_of(viewer) == roles.OPERATOR
    admin_client.post(reverse("user_edit", args=[viewer.pk]), {"email": "", "role": roles.OPERATOR})
    viewer.refresh_from_db()
    assert not viewer.is_active
    assert not can_log_in(viewer.username, PASSWORD)


def test_an_admin_cannot_demote_or_deactivate_themselves(admin_client):
    me = admin_client.user
    response = admin_client.post(
        reverse("user_edit", args=[me.pk]), {"email": "", "role": roles.VIEWER, "is_active": "on"}
    )
    assert "You cannot remove your own Admin role" in response.content.decode()
    assert roles.role_of(User.objects.get(pk=me.pk)) == roles.ADMIN


def test_the_last_active_admin_stays_an_admin(make_client):
    first = make_client(roles.ADMIN)
    second = make_client(roles.ADMIN)
    response = second.post(
        reverse("user_edit", args=[first.user.pk]), {"email": "", "role": roles.VIEWER, "is_active": "on"}
    )
    assert response.status_code == 302
    response = first.post(
        reverse("user_edit", args=[second.user.pk]), {"email": "", "role": roles.VIEWER, "is_active": "on"}
    )
    assert response.status_code == 403  # first is a Viewer now
    assert roles.role_of(User.objects.get(pk=second.user.pk)) == roles.ADMIN


def test_a_user_without_a_role_can_change_their_password_but_see_nothing_else(make_client):
    client = make_client(None)
    assert client.get(reverse("dashboard")).status_code == 403
    response = client.post(
        reverse("profile"),
        {
            "old_password": PASSWORD,
            "new_password1": "a-new-long-passphrase",
            "new_password2": "a-new-long-passphrase",
        },
        follow=True,
    )
    assert "Your password was changed." in response.content.decode()
    assert client.get(reverse("profile")).status_code == 200, "still logged in after the change"
    assert User.objects.get(pk=client.user.pk).check_password("a-new-long-passphrase")
