"""The public webhook endpoint: POST /hooks/<code>/ signed with the Standard Webhooks scheme.

Answers JSON: 202 {"stored": n} (0 for a webhook-id already stored), 401 bad signature, 400 bad body,
413 too large, 404 unknown URL, 503 when the database is busy (embedded SQLite; senders retry). Nothing
is stored for a rejected request. Logs name the Nexset and the webhook-id, never a header value.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import OperationalError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from flows import nexsets
from flows.ingest.errors import IngestError
from flows.ingest.jsonfile import parse_body
from flows.ingest.signatures import SignatureError, verify

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@login_not_required
@csrf_exempt
@require_POST
def hook(request: HttpRequest, code: str) -> JsonResponse:
    nexset = nexsets.webhook_by_code(code)
    if nexset is None:
        return _error(404, "No webhook has this URL. Check it against the Nexset page.")
    limit = settings.WEBHOOK_MAX_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return _error(400, "Content-Length is not a number.")
    body = request.read(limit + 1) if declared <= limit else b""
    if declared > limit or len(body) > limit:
        return _error(413, f"The body is larger than {limit:,} bytes (WEBHOOK_MAX_BYTES).")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return _error(400, "The body is not UTF-8 text.")
    try:
        msg_id = verify(
            body,
            request.headers,
            nexsets.valid_secrets(nexset),
            tolerance=settings.WEBHOOK_TOLERANCE_SECONDS,
            now=time.time(),
        )
    except SignatureError as exc:
        log.info("webhook nexset %s rejected: %s", nexset.pk, exc)
        return _error(401, str(exc))
    try:
        rows = parse_body(body, max_records=settings.WEBHOOK_MAX_RECORDS)
    except IngestError as exc:
        log.info("webhook nexset %s message %s refused: %s", nexset.pk, msg_id, exc)
        return _error(400, str(exc))
    try:
        stored = nexsets.receive(nexset.pk, msg_id, rows)
    except OperationalError:
        log.warning("webhook nexset %s message %s: database busy", nexset.pk, msg_id, exc_info=True)
        response = _error(503, "The database is busy; send the message again shortly.")
        response["Retry-After"] = "5"
        return response
    log.info("webhook nexset %s message %s: %s of %s records stored", nexset.pk, msg_id, stored, len(rows))
    return JsonResponse({"stored": stored, "received": len(rows), "duplicate": stored == 0}, status=202)
