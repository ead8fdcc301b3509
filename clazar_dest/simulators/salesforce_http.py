"""Requests and replies of the Salesforce simulator, without sockets (see `clazar_dest.simulators.salesforce`).

Stdlib only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

NOT_FOUND = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    raw: bytes
    base_url: str

    def form(self) -> dict[str, str]:
        """The form body (x-www-form-urlencoded), over the query string's parameters."""
        try:
            body = dict(parse_qsl(self.raw.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            body = {}
        return {**self.query, **body}


@dataclass
class Reply:
    status: int
    body: Any = None  # JSON-able; None sends no body
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # a pre-rendered body (HTML pages)
    content_type: str = "application/json;charset=UTF-8"
    drop: bool = False  # close the connection without answering
    fault: str | None = None

    def render(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return b"" if self.body is None else json.dumps(self.body).encode()


def rest_error(status: int, code: str, message: str, **extra: Any) -> Reply:
    return Reply(status, [{"message": message, "errorCode": code, **extra}])


def oauth_error(error: str, description: str, status: int = 400) -> Reply:
    return Reply(status, {"error": error, "error_description": description})
