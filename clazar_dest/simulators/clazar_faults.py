"""Faults for the Clazar simulator: what they look like and which call they hit.

The JSON shape is documented in `clazar_dest.simulators.clazar`. Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass

from clazar_dest.simulators.base import FaultList, FaultOptions

KINDS: tuple[str, ...] = ("latency", "error", "unauthorized", "drop", "hang", "malformed", "huge", "redirect")
# Kinds that, by default, run the request before misbehaving (the change is applied).
APPLYING_KINDS: tuple[str, ...] = ("drop", "hang", "malformed", "huge")


@dataclass
class Fault(FaultOptions):
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
        cls.check_names(data)
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


class Faults(FaultList[Fault]):
    """A thread-safe list of faults; `fire` counts a call and returns the faults that hit it."""

    fault_type = Fault

    def fire(self, key: str, method: str, path: str, template: str, authenticates: bool) -> list[Fault]:
        return self._fire(lambda fault: fault.matches(key, method, path, template, authenticates))
