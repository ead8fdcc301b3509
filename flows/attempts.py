"""Attempt rows: written as ``sending`` (and committed) before the socket opens, completed afterwards, so a
crash mid-request leaves a visible trace instead of nothing (DESIGN.md 6.5)."""

from __future__ import annotations

from django.utils import timezone

from clazar_dest.clazar.spec import RequestSpec
from clazar_dest.clazar.transport import AttemptResult, sanitize_url
from flows.bulk import insert_many
from flows.models import Attempt, Delivery
from flows.outcomes import Outcome

BODY_CAP = 20_000

OUTCOME_OF = {
    "done": Attempt.Outcome.SUCCEEDED,
    "retry": Attempt.Outcome.RETRY,
    "refresh_token": Attempt.Outcome.RETRY,
    "unknown": Attempt.Outcome.UNKNOWN,
    "permanent": Attempt.Outcome.FAILED,
    "exhausted": Attempt.Outcome.FAILED,
}


def _text(body: bytes | None) -> str:
    if body is None:
        return ""
    text = body[:BODY_CAP].decode("utf-8", "replace")
    return text + ("…" if len(body) > BODY_CAP else "")


def new_attempt(delivery: Delivery, spec: RequestSpec, number: int) -> Attempt:
    """The attempt row about to be sent, not saved yet."""
    return Attempt(
        delivery=delivery,
        number=number,
        started_at=timezone.now(),
        method=spec.method,
        url=sanitize_url(spec.url)[:2000],
        request_headers={name: value for name, value in spec.headers},
        request_body=_text(spec.body),
    )


def open_attempts(attempts: list[Attempt]) -> list[Attempt]:
    """Insert (and commit) attempts before anything is sent, in one statement; each gets its id."""
    insert_many(Attempt, attempts)
    return attempts


def closing(result: AttemptResult, outcome: Outcome) -> dict[str, object]:
    """The attempt's fields once Clazar answered (or why nothing was) and what that means."""
    return {
        "finished_at": timezone.now(),
        "request_headers": dict(result.request_headers),
        "status_code": result.status,
        "response_headers": dict(result.headers),
        "response_body": result.body[:BODY_CAP],
        "duration_ms": result.duration_ms,
        "outcome": OUTCOME_OF.get(outcome.action, Attempt.Outcome.FAILED),
        "error": " ".join(filter(None, [result.error, *result.notes]))[:5000],
    }


def close_attempt(attempt: Attempt, result: AttemptResult, outcome: Outcome) -> Attempt:
    """Complete the attempt with what Clazar answered (or why nothing was) and what that means."""
    values = closing(result, outcome)
    for name, value in values.items():
        setattr(attempt, name, value)
    attempt.save(update_fields=list(values))
    return attempt
