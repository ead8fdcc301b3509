"""Multi-model writes and the operations behind buttons (HackSoft style: views call these)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from clazar_dest.clazar.auth import AuthError, fetch_token
from flows.models import Credential

log = logging.getLogger(__name__)

# Refresh this long before Clazar says the token expires.
TOKEN_MARGIN = timedelta(seconds=60)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str
    kind: str = ""


def check_credential(credential_id: int) -> CheckResult:
    """Fetch a token with the stored client id and secret; record the verdict and cache the token."""
    credential = Credential.objects.get(pk=credential_id)
    secret = credential.client_secret
    if not secret:
        return _store_verdict(
            credential_id, CheckResult(False, "No client secret is stored: edit the credential.")
        )
    try:
        token = fetch_token(
            credential.api_base,
            credential.client_id,
            secret.reveal(),
            connect_timeout=settings.CLAZAR_CONNECT_TIMEOUT,
            read_timeout=settings.CLAZAR_READ_TIMEOUT,
        )
    except AuthError as exc:
        log.warning("credential %s check failed (%s): %s", credential.uuid, exc.kind, exc.message)
        return _store_verdict(credential_id, CheckResult(False, exc.message, exc.kind))
    expires_at = timezone.now() + timedelta(seconds=token.expires_in)
    with transaction.atomic():
        Credential.objects.filter(pk=credential_id).update(
            access_token=token.access_token,
            token_expires_at=expires_at,
        )
    minutes = token.expires_in // 60
    lifetime = f"{minutes} minutes" if minutes else f"{token.expires_in} seconds"
    log.info("credential %s check ok", credential.uuid)
    return _store_verdict(credential_id, CheckResult(True, f"Clazar issued a token valid for {lifetime}."))


def _store_verdict(credential_id: int, result: CheckResult) -> CheckResult:
    status = Credential.Status.OK if result.ok else Credential.Status.REJECTED
    if not result.ok and result.kind in ("unreachable", "timeout", "server_error"):
        status = Credential.Status.UNVERIFIED  # the credential itself may be fine
    Credential.objects.filter(pk=credential_id).update(
        status=status, last_error="" if result.ok else result.message, checked_at=timezone.now()
    )
    return result
