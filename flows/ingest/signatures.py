"""Standard Webhooks signatures (https://www.standardwebhooks.com), verified with the ``standardwebhooks``
library: HMAC-SHA256 over ``{webhook-id}.{webhook-timestamp}.{body}`` with a ``whsec_`` secret,
``webhook-signature`` holding one or more space-separated ``v1,<base64>`` values.

The library checks the timestamp against a fixed five minutes; we check it against
``WEBHOOK_TOLERANCE_SECONDS`` ourselves and let the library compute the signature, so the tolerance is a
setting. Several secrets may be valid at once (the current one and, during a rotation's grace period,
the previous one).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from standardwebhooks import Webhook

PREFIX = "whsec_"
MAX_ID = 200  # webhook-id length; source_ref (255) holds "<id>:<index>"


class SignatureError(Exception):
    """The request is not signed by a holder of the secret (answered 401, with this message)."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value a sender computes (for tests, benches and the docs)."""
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode())


def verify(
    body: bytes, headers: Mapping[str, str], valid_secrets: Iterable[str], *, tolerance: int, now: float
) -> str:
    """Check the signature headers; return the webhook-id. ``body`` must be UTF-8 (decode first)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "").strip()
    stamp = lowered.get("webhook-timestamp", "").strip()
    signature = lowered.get("webhook-signature", "").strip()
    missing = [
        name
        for name, value in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", stamp),
            ("webhook-signature", signature),
        )
        if not value
    ]
    if missing:
        raise SignatureError(f"Missing header{'s' if len(missing) > 1 else ''}: {', '.join(missing)}.")
    if len(msg_id) > MAX_ID:
        raise SignatureError(f"webhook-id is longer than {MAX_ID} characters.")
    if not stamp.isdigit() or len(stamp) > 12:
        raise SignatureError("webhook-timestamp must be a Unix time in whole seconds.")
    timestamp = int(stamp)
    skew = now - timestamp
    if abs(skew) > tolerance:
        direction = "old" if skew > 0 else "in the future"
        raise SignatureError(
            f"webhook-timestamp is {abs(int(skew)):,} seconds {direction}; the tolerance is {tolerance:,} "
            "seconds. Sign each request when sending it, and check the sender's clock."
        )
    offered = []
    for item in signature.split():
        version, _, value = item.partition(",")
        if version == "v1" and value:
            try:
                offered.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                continue
    if not offered:
        raise SignatureError("webhook-signature holds no v1 signature (expected “v1,<base64>”).")
    for secret in valid_secrets:
        expected = base64.b64decode(sign(secret, msg_id, timestamp, body).partition(",")[2])
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return msg_id
    raise SignatureError("No signature matches: check the webhook secret (it changes when rotated).")
