"""Send one request for a credential: pin the URL, get the shared token, send, and on a 401 refresh the
token once and send once more (DESIGN.md 6.4 and 6.5). Written once as a coroutine (``send_with``) that
runs either blocking (``send_for_credential``: Send Test Data, lookups, the circuit breaker's probe) or on a
deliver run's event loop (``OnLoop``).

Re-sending after a 401 is safe even for a create or a publish: Clazar checks the token before it does
anything. Everything else (what the answer means, whether to retry) is ``flows.outcomes.classify``'s job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from django.conf import settings

from clazar_dest.clazar import transport
from clazar_dest.clazar.auth import AuthError
from clazar_dest.clazar.spec import RequestSpec
from clazar_dest.clazar.transport import AttemptResult
from flows import tokens

if TYPE_CHECKING:
    from flows.delivery.batch import GroupCommit
    from flows.models import Credential

T = TypeVar("T")

log = logging.getLogger(__name__)

REFRESH_NOTE = (
    "Clazar refused the cached token (HTTP 401); a new one was fetched and the request sent once more."
)
# Token failures that will not pass by themselves: say so instead of retrying for a day.
LASTING_AUTH_KINDS = ("rejected", "redirect")


class Blocking:
    """How a send's steps are carried out in the calling thread: database work and the request block.
    A send is written once, as a coroutine taking one of these (``send_with``, and ``flows.delivery.send``'s
    ``deliver_with``); ``drive`` runs it with this one, where nothing it awaits ever suspends."""

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Database work (and anything else that blocks)."""
        return fn(*args)

    async def write(self, commit: GroupCommit[Any, T], item: Any) -> T:
        """A write through one of the deliver run's group commits."""
        return commit.submit(item)

    def done_sending(self) -> None:
        """The send's requests are over (only its writes are left)."""

    async def send(
        self, spec: RequestSpec, token: str, credential: Credential, idempotency_key: str | None
    ) -> AttemptResult:
        return transport.send(
            spec,
            token,
            session=tokens.session(credential),
            idempotency_key=idempotency_key,
            **_timeouts(),
        )


class Slot:
    """A send's places in a deliver run, each given back once: among the sends under way (``admitted``:
    from before its attempt is opened until its requests are over) and among the requests in flight
    (``requests``: taken just before its first request goes out, ``requesting``). A send may so open its
    attempt while the run's requests are all in flight, and its request goes out as soon as one ends.
    ``released`` is told when they are given back before the send ended (``done_sending``)."""

    __slots__ = ("admitted", "released", "requests", "semaphore")

    def __init__(
        self, admitted: asyncio.Semaphore, requests: asyncio.Semaphore, released: Callable[[], None]
    ) -> None:
        self.semaphore: asyncio.Semaphore | None = admitted
        self.admitted = admitted
        self.requests = requests
        self.released = released

    async def requesting(self) -> None:
        """Wait for a place among the requests in flight (once per send: a resend after a 401 keeps it)."""
        if self.semaphore is self.admitted:
            await self.requests.acquire()
            self.semaphore = self.requests

    def release(self) -> None:
        if self.semaphore is self.requests:
            self.requests.release()
            self.semaphore = self.admitted
        if self.semaphore is not None:
            self.admitted.release()
            self.semaphore = None

    def done_sending(self) -> None:
        if self.semaphore is not None:
            self.release()
            self.released()


# The slot of the send running in this task (each asyncio task has its own context).
SLOT: contextvars.ContextVar[Slot | None] = contextvars.ContextVar("send_slot", default=None)


class OnLoop(Blocking):
    """The same steps on an event loop (a deliver run's): requests with ``transport.asend`` on the run's
    own kept-alive connections; database work handed to threads (``offload`` returns a
    ``concurrent.futures.Future``), as the ORM must not block the loop. A send holds its ``Slot`` until
    ``done_sending``: its outcome and response writes then let the next request go out; its place among
    the requests in flight it takes only when its request is about to go out."""

    def __init__(self, offload: Callable[..., concurrent.futures.Future], pool_size: int) -> None:
        self._offload = offload
        self.session = transport.AsyncSession(pool_size)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._offload(fn, *args))

    async def write(self, commit: GroupCommit[Any, T], item: Any) -> T:
        return await commit.asubmit(item)

    def done_sending(self) -> None:
        slot = SLOT.get()
        if slot is not None:
            slot.done_sending()

    async def send(
        self, spec: RequestSpec, token: str, credential: Credential, idempotency_key: str | None
    ) -> AttemptResult:
        slot = SLOT.get()
        if slot is not None:
            await slot.requesting()
        return await transport.asend(
            spec, token, session=self.session, idempotency_key=idempotency_key, **_timeouts()
        )


BLOCKING = Blocking()


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a send written as a coroutine with ``Blocking`` steps: it finishes without suspending."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a blocking send awaited something that did not finish at once")


def send_for_credential(
    spec: RequestSpec,
    credential_id: int,
    *,
    idempotency_key: str | None,
    view: tokens.CredentialView | None = None,
) -> AttemptResult:
    """Send ``spec`` with the credential's token. Never raises for Clazar's answers or network failures;
    when no token can be had, nothing is sent and ``error_kind`` is ``auth_rejected`` (the credential is
    refused: permanent) or ``auth_unavailable`` (try again later). A request to any other origin than the
    credential's API base is never sent (``invalid``): the token must not leave for another host.
    ``view``: a credential view shared by the sends of one deliver run (read once otherwise)."""
    return drive(send_with(BLOCKING, spec, credential_id, idempotency_key=idempotency_key, view=view))


async def send_with(
    way: Blocking,
    spec: RequestSpec,
    credential_id: int,
    *,
    idempotency_key: str | None,
    view: tokens.CredentialView | None = None,
) -> AttemptResult:
    """``send_for_credential`` with its steps carried out ``way``."""
    view = view or tokens.CredentialView(credential_id)
    credential = view.cached() or await way.call(view.row)
    problem = pinned(spec.url, credential.api_base)
    if problem:
        return _not_sent(spec, "invalid", f"Not sent: {problem}")
    try:
        token = view.cached_token() or await way.call(view.token)
    except AuthError as exc:
        return _not_sent(spec, _auth_kind(exc), exc.message)
    result = await way.send(spec, token, credential, idempotency_key)
    if result.status != 401:
        return result

    await way.call(tokens.invalidate, credential_id, token)
    view.drop()
    log.info(
        "credential %s: 401 from Clazar for %s %s; refreshing the token",
        credential.uuid,
        spec.method,
        result.url,
    )
    try:
        token = await way.call(view.token)
    except AuthError as exc:
        return replace(_not_sent(spec, _auth_kind(exc), exc.message), refreshed=True, notes=(REFRESH_NOTE,))
    again = await way.send(spec, token, credential, idempotency_key)
    return replace(again, refreshed=True, notes=(*again.notes, REFRESH_NOTE))


def pinned(url: str, api_base: str) -> str | None:
    """Why ``url`` may not be sent with this credential's token, or None when it is on its API base (same
    scheme, host and port) and that base is still an allowed one."""
    allowed = [base.rstrip("/") for base in settings.CLAZAR_API_BASES]
    if api_base.rstrip("/") not in allowed:
        return (
            f"the credential's API base {api_base} is no longer in CLAZAR_API_BASES; "
            "edit the credential or the setting."
        )
    target = _origin(url)
    if target is None or target != _origin(api_base):
        return f"{transport.sanitize_url(url)} is not on the credential's API base {api_base}."
    return None


@functools.lru_cache(maxsize=4096)
def _origin(url: str) -> tuple[str, str | None, int | None] | None:
    """(scheme, host, port) of a URL without userinfo; None for one with userinfo or unreadable (worked
    out once per URL: every send checks its URL)."""
    try:
        parts = urlsplit(url)
        if parts.username or parts.password:
            return None
        return (parts.scheme, parts.hostname, _port(parts.scheme, parts.port))
    except ValueError:
        return None


def _port(scheme: str, port: int | None) -> int | None:
    return port or {"http": 80, "https": 443}.get(scheme)


def _timeouts() -> dict[str, float]:
    return {
        "connect_timeout": settings.CLAZAR_CONNECT_TIMEOUT,
        "read_timeout": settings.CLAZAR_READ_TIMEOUT,
        "deadline": settings.CLAZAR_DEADLINE,
    }


def _auth_kind(exc: AuthError) -> str:
    return "auth_rejected" if exc.kind in LASTING_AUTH_KINDS else "auth_unavailable"


def _not_sent(spec: RequestSpec, kind: str, message: str) -> AttemptResult:
    return AttemptResult(
        method=spec.method.upper(),
        url=transport.sanitize_url(spec.url),
        status=None,
        headers={},
        body="",
        truncated=False,
        json=None,
        duration_ms=0,
        error_kind=kind,
        error=message,
        request_headers={},
        sent_at=datetime.now(UTC),
    )
