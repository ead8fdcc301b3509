from __future__ import annotations

import pytest
from django.test import Client, override_settings

from flows import roles
from tests.factories import UserFactory

pytest_plugins = ["tests.fixtures_sim", "tests.fixtures_procs"]


@pytest.fixture(autouse=True, scope="session")
def _test_transport():
    """Tests talk plain HTTP on loopback and serve the static source files (production serves hashed
    names from collectstatic behind TLS). Session-wide, so the live server's middleware sees it too."""
    from django.conf import settings

    plain = override_settings(
        SECURE_SSL_REDIRECT=False,
        SESSION_COOKIE_SECURE=False,
        CSRF_COOKIE_SECURE=False,
        SECURE_HSTS_SECONDS=0,
        STORAGES={
            **settings.STORAGES,
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        },
    )
    plain.enable()
    yield
    plain.disable()


@pytest.fixture
def make_client(db):
    """A logged-in test client for a user of the given role (None: a user without a role)."""

    def make(role: str | None) -> Client:
        user = UserFactory(role=role)
        client = Client()
        client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        client.user = user
        return client

    return make


@pytest.fixture
def admin_client(make_client) -> Client:
    return make_client(roles.ADMIN)


@pytest.fixture
def operator_client(make_client) -> Client:
    return make_client(roles.OPERATOR)


@pytest.fixture
def viewer_client(make_client) -> Client:
    return make_client(roles.VIEWER)
