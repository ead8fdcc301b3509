"""The Clazar access token, shared by every worker through the Credential row (DESIGN.md 6.4).

``get_token`` hands out the cached token while it stays valid for more than a margin, and otherwise
refreshes it so that one refresh happens per expiry however many threads and processes ask at once: the
first one takes a lock, fetches and stores the token; the others wait for the lock, read the row again and
use the new token.

- PostgreSQL: ``SELECT ... FOR UPDATE`` on the credential row, held across the token call (it only blocks
  writers of that one row, and the call is bounded by the Clazar timeouts).
- SQLite has no row locks. Holding a write transaction across a network call would block every writer of
  the whole database for that long (the IMMEDIATE mode takes the database lock at BEGIN), so the refresh is
  serialized with an exclusive file lock next to the database instead (SQLite means one machine, so a local
  file lock covers every process), and the row is read and written in short statements.

``invalidate`` (after a 401) clears the token only if it is still the one that failed, so a burst of 401s
from many senders causes one refresh. Failures are recorded on the credential (``last_error``, and
``status=rejected`` when Clazar refused the client ID or secret); secrets and tokens are never logged.

The margin is min(60 s, 10% of the token's lifetime). The row keeps no issue time, so the lifetime is
read as ``token_expires_at - checked_at``: every successful token fetch sets ``checked_at`` (the
Credential docstring already has every token fetch set the status), which keeps short-lived tokens from
being refreshed on every call.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from clazar_dest.clazar import transport
from clazar_dest.clazar.auth import AuthError, Token, fetch_token
from flows.locks import file_lock
from flows.models import Credential

log = logging.getLogger(__name__)

MARGIN = timedelta(seconds=60)
MARGIN_SHARE = 0.1
# A token this close to its expiry is still handed out when a refresh failed for a passing reason.
LAST_RESORT = timedelta(seconds=5)


def get_token(credential_id: int) -> str:
    """A valid access token for the credential, fetched from Clazar only when the cached one is (nearly)
    expired. Raises AuthError (kind as in ``clazar_dest.clazar.auth``) when none can be had."""
    started = timezone.now()
    credential = Credential.objects.only("id", "access_token", "token_expires_at", "checked_at").get(
        pk=credential_id
    )
    token = _usable(credential, started)
    if token is not None:
        return token
    return _refresh(credential_id, started)


class CredentialView:
    """What a send needs of a credential (API base and token), read from its row once and shared by the
    sends of a deliver run, whose loop calls ``refresh`` every half second: a send costs no query while
    the token stays good. A token refresh (``token``) and ``drop`` (after a 401) read the row again; an
    edit of the credential reaches the run at its next ``refresh``."""

    FIELDS = ("id", "uuid", "api_base", "access_token", "token_expires_at", "checked_at")

    def __init__(self, credential_id: int) -> None:
        self.credential_id = credential_id
        self._row: Credential | None = None
        self._lock = threading.Lock()

    def row(self) -> Credential:
        with self._lock:
            if self._row is None:
                self._row = Credential.objects.only(*self.FIELDS).get(pk=self.credential_id)
            return self._row

    def cached(self) -> Credential | None:
        """The row as read, without reading it (None when it must be read)."""
        with self._lock:
            return self._row

    def cached_token(self) -> str | None:
        """The token of the row as read while it stays usable, without any query (None otherwise: then
        ``token`` reads the row or fetches a new one)."""
        row = self.cached()
        return None if row is None else _usable(row, timezone.now())

    def refresh(self) -> None:
        """Read the row again."""
        row = Credential.objects.only(*self.FIELDS).get(pk=self.credential_id)
        with self._lock:
            self._row = row

    def ready(self) -> None:
        """Make sure a usable token is at hand (fetching one when not: in the caller, the run's loop,
        rather than in each sending thread); a failure is left for the sends to report."""
        with contextlib.suppress(AuthError):
            self.token()

    def token(self) -> str:
        """As ``get_token``, from the row already read while its token stays usable."""
        started = timezone.now()
        token = _usable(self.row(), started)
        if token is not None:
            return token
        token = _refresh(self.credential_id, started)
        self.drop()
        return token

    def drop(self) -> None:
        with self._lock:
            self._row = None


def invalidate(credential_id: int, token: str) -> bool:
    """Forget the cached token after Clazar refused it (401), unless it was already replaced. Returns
    whether it was cleared."""
    with transaction.atomic():  # a row lock on PostgreSQL; the database write lock on SQLite (IMMEDIATE)
        row = Credential.objects.select_for_update().only("id", "access_token").get(pk=credential_id)
        cached = row.access_token
        if cached is None or not hmac.compare_digest(cached.reveal().encode(), token.encode()):
            return False
        Credential.objects.filter(pk=credential_id).update(access_token="", token_expires_at=None)
    log.info("credential %s: Clazar refused the cached access token; cleared it", credential_id)
    return True


def margin(expires_at: datetime, issued_at: datetime | None) -> timedelta:
    """How long before expiry a token stops being handed out: min(60 s, 10% of its lifetime)."""
    if issued_at is None or issued_at >= expires_at:
        return MARGIN
    return min(MARGIN, (expires_at - issued_at) * MARGIN_SHARE)


def _usable(credential: Credential, now: datetime) -> str | None:
    token, expires_at = credential.access_token, credential.token_expires_at
    if not token or expires_at is None:
        return None
    if expires_at - margin(expires_at, credential.checked_at) <= now:
        return None
    return token.reveal()


def _refresh(credential_id: int, started: datetime) -> str:
    with _exclusive(credential_id) as credential:
        now = timezone.now()
        token = _usable(credential, now)
        if token is not None:
            return token  # another worker refreshed it while we waited for the lock
        if credential.checked_at and credential.checked_at >= started and credential.last_error:
            # Another worker tried while we waited, and failed: don't ask Clazar again at once.
            kind = "rejected" if credential.status == Credential.Status.REJECTED else "unreachable"
            failure = AuthError(kind, credential.last_error)
        else:
            fetched = _fetch(credential)
            if isinstance(fetched, Token):
                _store(credential_id, fetched, now)
                log.info("credential %s: new access token, valid %s s", credential.uuid, fetched.expires_in)
                return fetched.access_token
            failure = fetched
            _store_failure(credential_id, failure, timezone.now())  # after the call: waiters see it
            log.warning("credential %s: token fetch failed (%s): %s", credential.uuid, failure.kind, failure)
        old, expires_at = credential.access_token, credential.token_expires_at
        if failure.kind != "rejected" and old and expires_at and expires_at - LAST_RESORT > now:
            return old.reveal()  # still valid for a moment; the next call tries to refresh again
    raise failure


def _fetch(credential: Credential) -> Token | AuthError:
    secret = credential.client_secret
    if not secret:
        return AuthError("rejected", "No client secret is stored: edit the credential.")
    try:
        return fetch_token(
            credential.api_base,
            credential.client_id,
            secret.reveal(),
            session=session(credential),
            connect_timeout=settings.CLAZAR_CONNECT_TIMEOUT,
            read_timeout=settings.CLAZAR_READ_TIMEOUT,
        )
    except AuthError as exc:
        return exc


def session(credential: Credential) -> transport.Session:
    """The credential's keep-alive session in this process for blocking sends (Send Test Data, lookups,
    the breaker's probe; a deliver run's own sends keep their connections on its event loop)."""
    return transport.session_for(str(credential.uuid), pool_size=settings.DELIVERY_THREADS)


def _store(credential_id: int, token: Token, now: datetime) -> None:
    Credential.objects.filter(pk=credential_id).update(
        access_token=token.access_token,
        token_expires_at=now + timedelta(seconds=token.expires_in),
        checked_at=now,
        status=Credential.Status.OK,
        last_error="",
    )


def _store_failure(credential_id: int, failure: AuthError, now: datetime) -> None:
    changes: dict[str, object] = {"last_error": failure.message, "checked_at": now}
    if failure.kind == "rejected":
        changes["status"] = Credential.Status.REJECTED
    Credential.objects.filter(pk=credential_id).update(**changes)


@contextmanager
def _exclusive(credential_id: int) -> Iterator[Credential]:
    """The credential row, read while holding the refresh lock (see the module docstring)."""
    if connection.features.has_select_for_update:
        with transaction.atomic():
            yield Credential.objects.select_for_update().get(pk=credential_id)
    else:
        with _file_lock(credential_id):
            yield Credential.objects.get(pk=credential_id)


def _file_lock(credential_id: int) -> AbstractContextManager[None]:
    wait = settings.CLAZAR_CONNECT_TIMEOUT + settings.CLAZAR_READ_TIMEOUT + 10
    return file_lock(
        f"clazar-token-{credential_id}",
        wait=wait,
        on_timeout=lambda: AuthError(
            "timeout", f"Another worker has been fetching a Clazar token for over {wait} s; try again."
        ),
    )
