import io
import logging

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from flows.models import Credential
from flows.secrets import MASK, Secret
from tests.factories import CredentialFactory


def raw_column(credential: Credential, column: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM flows_credential WHERE id = %s", [credential.pk])
        return cursor.fetchone()[0]


def test_a_secret_prints_as_a_mask_everywhere():
    secret = Secret("hunter2-canary")
    assert str(secret) == MASK
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in f"{secret} {secret!r}"
    assert secret.reveal() == "hunter2-canary"


@pytest.mark.django_db
def test_secrets_are_stored_encrypted_and_read_back():
    credential = CredentialFactory(client_secret="plain-canary-value")
    stored = raw_column(credential, "client_secret")
    assert "plain-canary-value" not in stored
    assert Credential.objects.get(pk=credential.pk).client_secret.reveal() == "plain-canary-value"


@pytest.mark.django_db
def test_an_unset_secret_reads_back_as_none():
    credential = CredentialFactory()
    assert Credential.objects.get(pk=credential.pk).access_token is None


@pytest.mark.django_db
def test_rotation_re_encrypts_with_the_first_key_so_the_old_key_can_go(settings):
    old = settings.FIELD_ENCRYPTION_KEYS[0]
    credential = CredentialFactory(client_secret="rotate-me")
    Credential.objects.filter(pk=credential.pk).update(access_token="cached-token")
    new = Fernet.generate_key().decode()
    with override_settings(FIELD_ENCRYPTION_KEYS=[new, old]):
        call_command("rotate_secrets", stdout=io.StringIO())
    with override_settings(FIELD_ENCRYPTION_KEYS=[new]):
        fresh = Credential.objects.get(pk=credential.pk)
        assert fresh.client_secret.reveal() == "rotate-me"
        assert fresh.access_token.reveal() == "cached-token"
    assert Fernet(new.encode()).decrypt(raw_column(credential, "client_secret").encode()) == b"rotate-me"


@pytest.mark.django_db
def test_rotation_without_the_old_key_fails_clearly_and_changes_nothing():
    credential = CredentialFactory(client_secret="keep-me")
    before = raw_column(credential, "client_secret")
    with (
        override_settings(FIELD_ENCRYPTION_KEYS=[Fernet.generate_key().decode()]),
        pytest.raises(CommandError, match="cannot be decrypted"),
    ):
        call_command("rotate_secrets")
    assert raw_column(credential, "client_secret") == before


def test_the_log_filter_masks_bearer_tokens_and_secret_fields(caplog):
    from flows.logfilters import redact

    text = redact('Authorization: Bearer abc.def.ghi {"client_secret": "canary-42"} password=pw1')
    assert "abc.def.ghi" not in text
    assert "canary-42" not in text
    assert "pw1" not in text
    logger = logging.getLogger("tests.redact")
    logger.addFilter(__import__("flows.logfilters", fromlist=["RedactSecrets"]).RedactSecrets())
    with caplog.at_level(logging.INFO, logger="tests.redact"):
        logger.info("token %s", "Bearer zzz-canary")
    assert "zzz-canary" not in caplog.text


def test_the_debug_error_page_shows_secrets_masked(rf, settings):
    import sys

    from django.views.debug import technical_500_response

    settings.DEBUG = True

    def failing(secret: Secret) -> None:
        token = secret  # noqa: F841 (a local the error page lists)
        raise RuntimeError("boom")

    def error_page(secret: Secret) -> str:
        # Only this frame and failing()'s are in the traceback: their locals hold the Secret, no plain text.
        try:
            failing(secret)
        except RuntimeError:
            return technical_500_response(rf.get("/"), *sys.exc_info()).content.decode()
        return ""

    canary = "-".join(["debug", "page", "canary"])  # never a literal: the page quotes source lines
    page = error_page(Secret(canary))
    assert "boom" in page
    assert canary not in page
    assert MASK in page
