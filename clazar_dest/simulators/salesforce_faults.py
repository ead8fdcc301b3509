"""Faults for the Salesforce simulator: the routes they can hit, what they look like, which call they hit
and the error body a faulted call answers with.

The JSON shape is documented in `clazar_dest.simulators.salesforce`. Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clazar_dest.simulators.base import FaultList, FaultOptions

ROUTE_KEYS = (
    "authorize",  # the consent page and the decision posted from it
    "token",  # POST /services/oauth2/token, grant_type=authorization_code (or anything but refresh_token)
    "refresh",  # POST /services/oauth2/token, grant_type=refresh_token
    "revoke",
    "identity",
    "userinfo",
    "versions",  # GET /services/data/ (no token needed)
    "resources",  # GET /services/data/vNN.N/
    "describe_global",
    "describe",
    "retrieve",  # GET sobjects/<Name>/<Id>
    "query",
    "query_more",
    "update",
)
OAUTH_ROUTES = frozenset({"authorize", "token", "refresh", "revoke"})
FAULT_KINDS = ("latency", "error", "unauthorized", "drop", "hang")


@dataclass
class Fault(FaultOptions):
    kind: str
    route: str | None = None
    on_call: int = 1
    times: int = 1
    status: int | None = None
    seconds: float | None = None
    error_code: str | None = None
    message: str | None = None
    apply: bool | None = None  # drop/hang: carry the request out first (default true)
    seen: int = 0
    fired: int = 0

    @classmethod
    def from_dict(cls, data: Any) -> Fault:
        cls.check_names(data)
        if data.get("kind") not in FAULT_KINDS:
            raise ValueError(
                f"Fault kind must be one of: {', '.join(FAULT_KINDS)}; got {data.get('kind')!r}."
            )
        if data.get("route") is not None and data["route"] not in ROUTE_KEYS:
            raise ValueError(f"Unknown fault route {data['route']!r}; use one of: {', '.join(ROUTE_KEYS)}.")
        fault = cls(**data)
        for name, low in (("on_call", 1), ("times", 0), ("status", 100)):
            value = getattr(fault, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"Fault option {name} must be a whole number >= {low}, not {value!r}.")
        seconds = fault.seconds
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0
        ):
            raise ValueError(f"Fault option seconds must be a number >= 0, not {seconds!r}.")
        if fault.apply is not None and not isinstance(fault.apply, bool):
            raise ValueError("Fault option apply must be true or false.")
        return fault


class Faults(FaultList[Fault]):
    """A thread-safe list of faults; `fire` counts a call of a route and returns the faults that hit it."""

    fault_type = Fault

    def fire(self, route: str) -> list[Fault]:
        return self._fire(lambda fault: fault.route in (None, route))


def _fault_body(route: str, status: int, code: str | None, message: str | None) -> Any:
    if route in OAUTH_ROUTES:
        error = code or (
            "server_error"
            if status == 500
            else "temporarily_unavailable"
            if status >= 500
            else "invalid_request"
        )
        return {"error": error, "error_description": message or "Simulated failure."}
    default = {
        401: ("INVALID_SESSION_ID", "Session expired or invalid"),
        403: ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
        404: ("NOT_FOUND", "The requested resource does not exist"),
        429: ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
        500: (
            "UNKNOWN_EXCEPTION",
            "An unexpected error occurred. Please include this ErrorId if you contact support: 1234567890-12345 (-1234567890)",
        ),
    }.get(status, ("SERVER_UNAVAILABLE", "Server temporarily unavailable. Please try again later."))
    return [{"message": message or default[1], "errorCode": code or default[0]}]
