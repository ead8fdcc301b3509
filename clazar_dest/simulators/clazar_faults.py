"""Faults for the Clazar simulator: what they look like and which call they hit.

The JSON shape is documented in `clazar_dest.simulators.clazar`. Stdlib only.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields

KINDS: tuple[str, ...] = ("latency", "error", "unauthorized", "drop", "hang", "malformed", "huge", "redirect")
# Kinds that, by default, run the request before misbehaving (the change is applied).
APPLYING_KINDS: tuple[str, ...] = ("drop", "hang", "malformed", "huge")


@dataclass
class Fault:
    kind: str
    route: str | None = None
    on_call: int = 1
    times: int = 1
    status: int | None = None
    seconds: float | None = None
    size: int | None = None
    location: str | None = None
    apply: bool | None = None
    detail: str | None = None
    seen: int = 0
    fired: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> Fault:
        if not isinstance(data, dict):
            raise ValueError("A fault must be a JSON object.")
        allowed = {f.name for f in fields(cls)} - {"seen", "fired"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"Unknown fault option(s): {', '.join(unknown)}.")
        kind = data.get("kind")
        if kind not in KINDS:
            raise ValueError(f"Fault kind must be one of: {', '.join(KINDS)}.")
        values = dict(data)
        values.setdefault("times", 0 if kind == "latency" else 1)
        fault = cls(**values)
        fault._check()
        return fault

    def _check(self) -> None:
        def whole(name: str, value: object, low: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Fault option {name} must be an integer >= {low}.")

        whole("on_call", self.on_call, 1)
        whole("times", self.times, 0)
        if self.status is not None:
            whole("status", self.status, 100)
        if self.size is not None:
            whole("size", self.size, 1)
        if self.seconds is not None and (
            isinstance(self.seconds, bool) or not isinstance(self.seconds, int | float) or self.seconds < 0
        ):
            raise ValueError("Fault option seconds must be a number >= 0.")
        if self.route is not None and not isinstance(self.route, str):
            raise ValueError("Fault option route must be a string.")
        if self.apply is not None and not isinstance(self.apply, bool):
            raise ValueError("Fault option apply must be true or false.")

    @property
    def applies(self) -> bool:
        """Whether the request is carried out before the fault shows."""
        return self.kind in APPLYING_KINDS if self.apply is None else self.apply

    def matches(self, key: str, method: str, path: str, template: str, authenticates: bool) -> bool:
        if self.route is None:
            # Without a route, faults hit every API call except the token call.
            return not authenticates
        route = self.route.strip()
        if route == key:
            return True
        want_method, _, want_path = route.rpartition(" ")
        if want_method and want_method.upper() != method:
            return False
        return want_path in (path, template)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Faults:
    """A thread-safe list of faults; `fire` counts a call and returns the faults that hit it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def set(self, items: list[dict], append: bool = False) -> list[dict]:
        parsed = [Fault.from_dict(item) for item in items]
        with self._lock:
            self._faults = [*self._faults, *parsed] if append else parsed
            return [f.to_dict() for f in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults = []

    def list(self) -> list[dict]:
        with self._lock:
            return [f.to_dict() for f in self._faults]

    def fire(self, key: str, method: str, path: str, template: str, authenticates: bool) -> list[Fault]:
        hits: list[Fault] = []
        with self._lock:
            for fault in self._faults:
                if not fault.matches(key, method, path, template, authenticates):
                    continue
                if fault.times and fault.fired >= fault.times:
                    continue
                fault.seen += 1
                if fault.seen >= fault.on_call:
                    fault.fired += 1
                    hits.append(fault)
        return hits
