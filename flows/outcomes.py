"""What to do after one attempt (DESIGN.md 6.6 and 6.7). Pure: no ORM, no network, no clock of its own.

The rule that matters most: a create or publish is never sent again blindly. When the request may have
reached Clazar and we don't know what Clazar did, the answer is ``unknown`` (the engine reconciles by a
lookup, or asks a person), never ``retry``.

| what happened                                   | PUT / PATCH / DELETE (idempotent) | create, publish, other POST |
| ----------------------------------------------- | --------------------------------- | --------------------------- |
| 2xx (even with an unreadable body)              | done                              | done (id from the body, else from a 201's Location; else None and the message says so) |
| nothing sent: ``connect``, ``auth_unavailable`` | retry                             | retry                       |
| 429 (Retry-After honoured), 408                 | retry                             | retry                       |
| 5xx, ``sent_then_failed``, ``read_timeout``, ``deadline`` with no status | retry    | unknown                     |
| 404 on a DELETE after the first attempt         | done (already deleted)            | -                           |
| 400 / 422                                       | permanent, Clazar's field messages flattened                    |
| 401                                             | refresh_token; permanent once a fresh token was refused too    |
| 403, 404, other 4xx                             | permanent with Clazar's detail                                  |
| 3xx (``redirect``)                              | permanent, naming the Location (redirects are never followed)   |
| ``invalid``, ``auth_rejected`` (nothing sent)   | permanent                                                       |

A retry past ``MAX_ATTEMPTS`` becomes ``exhausted``. Delays are exponential with full jitter: after attempt
n, uniform(0, min(STEP_CAP, BASE * 2**(n-1))), at least FLOOR, and at least Retry-After when Clazar sends
one (clamped to [RETRY_AFTER_MIN, RETRY_AFTER_MAX]). The per-step ceilings add up to about a day
(``SCHEDULE_SECONDS``); with full jitter the expected total is about half that.

Server-side failures (5xx, no answer, unreachable) count for the circuit breaker; answers about the
request itself (4xx, 429, redirects) never do.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

ACTIONS = ("done", "retry", "unknown", "permanent", "refresh_token", "exhausted")

BASE = 2.0  # seconds: the first delay's ceiling
STEP_CAP = 3600.0  # no single wait is longer than an hour (unless Retry-After says so, up to the clamp)
FLOOR = 1.0
RETRY_AFTER_MIN = 1.0
RETRY_AFTER_MAX = 3600.0
MAX_ATTEMPTS = 35
SCHEDULE_SECONDS = sum(min(STEP_CAP, BASE * 2 ** (n - 1)) for n in range(1, MAX_ATTEMPTS))  # ~24 h

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
NOT_SENT = frozenset({"connect", "auth_unavailable"})
MAX_MESSAGE = 2000


class Rng(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class Outcome:
    action: str  # one of ACTIONS
    retry_at: datetime | None  # set for "retry" only
    message: str  # for people: what happened and what happens next
    created_id: str | None = None  # the id Clazar gave the object, from a 2xx answer
    counts_for_breaker: bool = False


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds or an HTTP-date (a past date gives 0).
    Anything else (negative, fractional garbage, an unparsable date) gives None."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now.tzinfo else now.replace(tzinfo=UTC)
    return max(0.0, (when - current).total_seconds())


def backoff(attempt: int, rng: Rng = random) -> float:  # type: ignore[assignment]
    """Full jitter: uniform(0, ceiling) where the ceiling doubles per attempt up to STEP_CAP; >= FLOOR."""
    ceiling = min(STEP_CAP, BASE * 2 ** min(max(attempt, 1) - 1, 40))
    return max(FLOOR, min(ceiling, rng.uniform(0.0, ceiling)))


def classify(
    *,
    method: str,
    creates_or_publishes: bool,
    error_kind: str | None,
    status: int | None,
    headers: Mapping[str, str],
    body_json: Any,
    attempt: int,
    now: datetime,
    rng: Rng = random,  # type: ignore[assignment]
    refreshed: bool = False,
    target_id: str | None = None,
    resource_label: str | None = None,
    error: str = "",
) -> Outcome:
    """Decide what to do after attempt number ``attempt`` (1 for the first) of one request.

    ``creates_or_publishes``: the endpoint creates or publishes (from the catalog); any POST is treated
    the same way, since a POST is not safe to repeat. ``refreshed``: the token was already refreshed after
    a 401 for this attempt. ``target_id``/``resource_label`` name the object in 404 messages ("Private
    offer 3f2..."). ``error`` is the transport's message, used when nothing was answered.
    """
    verb = method.upper()
    unsafe = creates_or_publishes or verb not in IDEMPOTENT
    ctx = _Ctx(attempt=attempt, now=now, rng=rng, headers=headers)

    if error_kind == "invalid":
        return _permanent(error or "The request could not be sent as it was built.")
    if error_kind == "auth_rejected":
        return _permanent(error or "Clazar rejected the client ID or secret. Check the credential.")
    if error_kind in NOT_SENT:
        what = error or "Could not reach Clazar."
        if error_kind == "auth_unavailable":
            what = f"Could not get an access token from Clazar: {error or 'no answer.'} Nothing was sent."
        return ctx.retry(what, breaker=True)
    if status is None:
        reason = error or "The connection failed after the request was sent; Clazar may have received it."
        if unsafe:
            return _unknown(reason)
        return ctx.retry(reason, breaker=True)
    if error_kind == "redirect" or 300 <= status < 400:
        where = _location(headers)
        return _permanent(
            f"Clazar answered with a redirect to {where or 'an unnamed address'} (HTTP {status}); "
            "redirects are never followed. Check the credential's API base."
        )
    if 200 <= status < 300:
        return _done(status, error_kind, body_json, headers, verb, creates_or_publishes)
    detail = _detail(body_json)  # Clazar's words, for the answers that are not a success
    return _by_status(status, detail, verb, unsafe, ctx, refreshed, target_id, resource_label, attempt)


def _by_status(
    status: int,
    detail: str,
    verb: str,
    unsafe: bool,
    ctx: _Ctx,
    refreshed: bool,
    target_id: str | None,
    label: str | None,
    attempt: int,
) -> Outcome:
    said = f"HTTP {_phrase(status)}" + (f": {detail}" if detail else "")
    if status == 401:
        if refreshed:
            return _permanent(
                f"Clazar rejected the client ID or secret: it refused even a freshly issued token ({said}). "
                "Check the credential's client ID, secret and permissions."
            )
        return Outcome(
            "refresh_token",
            None,
            f"Clazar did not accept the access token ({said}); fetching a new token and trying once more.",
        )
    if status == 429:
        return ctx.retry(f"Clazar is rate limiting this credential ({said}).", breaker=False)
    if status == 408:
        return ctx.retry(f"Clazar timed out waiting for the request ({said}); nothing was applied.", True)
    if status == 404 and verb == "DELETE" and attempt > 1:
        name = f"{label or 'The object'} {target_id}" if target_id else (label or "The object")
        return Outcome(
            "done",
            None,
            f"{name} is already gone from Clazar (HTTP 404 on a repeated delete): an earlier attempt "
            "deleted it.",
        )
    if status in (400, 422):
        return _permanent(
            f"Clazar rejected the record: {detail}"
            if detail
            else f"Clazar rejected the record (HTTP {_phrase(status)}) without saying why."
        )
    if status == 403:
        why = detail or f"HTTP {_phrase(status)}"
        return _permanent(f"Clazar refused: {_sentence(why)} Check the credential's permissions.")
    if status == 404:
        if target_id:
            return _permanent(
                f"{label or 'The object'} {target_id} was not found in Clazar. Check the ID"
                + (" (or the record attribute it comes from)." if label else ".")
            )
        return _permanent(f"Clazar found nothing at this address ({said}). Check the URL and its ID.")
    if 400 <= status < 500:
        return _permanent(f"Clazar refused the request ({said}).")
    if 500 <= status < 600:
        reason = f"Clazar had a server error ({said})."
        return _unknown(reason) if unsafe else ctx.retry(reason, breaker=True)
    return _permanent(f"Clazar gave an unexpected answer ({said}).")


@dataclass(frozen=True)
class _Ctx:
    attempt: int
    now: datetime
    rng: Rng
    headers: Mapping[str, str]

    def retry(self, reason: str, breaker: bool) -> Outcome:
        reason = _sentence(reason)
        if self.attempt >= MAX_ATTEMPTS:
            return Outcome(
                "exhausted",
                None,
                _cap(
                    f"Gave up after {self.attempt} attempts (about a day of retries). The last one: {reason}"
                ),
                counts_for_breaker=breaker,
            )
        delay = backoff(self.attempt, self.rng)
        asked = retry_after_seconds(_header(self.headers, "Retry-After"), self.now)
        if asked is not None:
            delay = max(delay, min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, asked)))
        return Outcome(
            "retry",
            self.now + timedelta(seconds=delay),
            _cap(f"{reason} Retrying in {_wait(delay)}."),
            counts_for_breaker=breaker,
        )


def _done(
    status: int, error_kind: str | None, body: Any, headers: Mapping[str, str], verb: str, creates: bool
) -> Outcome:
    created = None
    if isinstance(body, dict) and isinstance(body.get("id"), str | int) and not isinstance(body["id"], bool):
        created = str(body["id"]) or None
    if created is None and status == 201:
        created = _id_from_location(_header(headers, "Location"))
    said = f"HTTP {_phrase(status)}"
    if created:
        return Outcome("done", None, f"Clazar accepted it ({said}); the object's id is {created}.", created)
    unreadable = error_kind in ("too_large", "malformed", "sent_then_failed", "read_timeout", "deadline")
    if creates and verb == "POST" and (unreadable or status == 201):
        why = "could not be read" if unreadable else "has no id"
        return Outcome(
            "done",
            None,
            f"Clazar accepted it ({said}), but its answer {why}, so the new object's id is not known. "
            "Find it in Clazar; do not send the record again.",
        )
    if unreadable:
        return Outcome("done", None, f"Clazar accepted it ({said}); its answer could not be read in full.")
    return Outcome("done", None, f"Clazar accepted it ({said}).")


def _unknown(reason: str) -> Outcome:
    return Outcome(
        "unknown",
        None,
        _cap(
            f"Outcome unknown: {_sentence(reason)} It is not sent again automatically, as that could do it "
            "twice. Check in Clazar: if it took effect, record the object's id; otherwise send it again."
        ),
        counts_for_breaker=True,
    )


def _permanent(message: str) -> Outcome:
    return Outcome("permanent", None, _cap(message or "Clazar refused the request."))


# -- reading Clazar's answers ---------------------------------------------------------------------------


def flatten(errors: Any, prefix: str = "") -> list[str]:
    """DRF-style errors as "field: message" lines: nested objects as dotted paths, list items as [i];
    "detail" and "non_field_errors" carry no field name."""
    if isinstance(errors, dict):
        lines: list[str] = []
        for key, value in errors.items():
            name = "" if key in ("detail", "non_field_errors") else str(key)
            lines += flatten(value, f"{prefix}.{name}" if prefix and name else prefix or name)
        return lines
    if isinstance(errors, list):
        if all(not isinstance(item, dict | list) for item in errors):
            text = " ".join(str(item).strip() for item in errors if item not in (None, ""))
            return [f"{prefix}: {text}" if prefix else text] if text else []
        lines = []
        for index, item in enumerate(errors):
            lines += flatten(item, f"{prefix}[{index}]")
        return lines
    if errors is None or str(errors).strip() == "":
        return []
    return [f"{prefix}: {errors}" if prefix else str(errors).strip()]


def _detail(body: Any) -> str:
    if isinstance(body, str):
        return body.strip()[:500]
    return "; ".join(flatten(body))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _location(headers: Mapping[str, str]) -> str:
    """The Location without userinfo, query or fragment (they may hold secrets)."""
    value = _header(headers, "Location") or ""
    try:
        parts = urlsplit(value)
    except ValueError:
        return ""
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _id_from_location(value: str | None) -> str | None:
    if not value:
        return None
    try:
        path = urlsplit(value).path
    except ValueError:
        return None
    segments = [s for s in path.split("/") if s]
    return segments[-1] if len(segments) >= 2 else None


def _phrase(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _wait(seconds: float) -> str:
    whole = max(1, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{round(whole / 60)} min"
    hours, minutes = divmod(round(whole / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _cap(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"
