"""A logging filter that masks bearer tokens and secret-looking values, a last line of defence: the code
already logs header names and sanitized URLs, never values."""

from __future__ import annotations

import logging
import re

_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1****"),
    (
        re.compile(
            r"(?i)([\"']?(?:client_secret|access_token|refresh_token|password|secret|authorization)[\"']?"
            r"\s*[:=]\s*[\"']?)[^\"'&,\s}]+"
        ),
        r"\1****",
    ),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is logged as it is
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
