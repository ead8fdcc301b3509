"""Applying a checked mapping: ``compile_mapping`` builds a ``Compiled`` whose ``apply`` turns one
Salesforce record into a ``Result`` (the Clazar record and its field errors) without raising; ``preview``
maps a few records and ``source_fields`` lists the Salesforce fields the mapping reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from clazar_dest.salesforce.mapping.expressions import _evaluate, _Expr, _names, _parse, _Refused, _shorthand
from clazar_dest.salesforce.mapping.rules import Mapping, MappingInvalid, Rule, _analyse, _ordered
from clazar_dest.salesforce.mapping.targets import TARGETS, Target, _coerce, _plain
from clazar_dest.salesforce.mapping.values import _empty, _Fail, _key, _lookup, _show
from clazar_dest.salesforce.soql import field_path


@dataclass(frozen=True)
class FieldError:
    """``target`` is a target name or "custom_properties.<name>"; ``message`` does not repeat it."""

    target: str
    message: str

    def __str__(self) -> str:
        return f"{self.target}: {self.message}"


@dataclass(frozen=True)
class Result:
    """The Clazar record (only the targets that produced a value) and what went wrong."""

    data: dict[str, Any]
    errors: list[FieldError]

    @property
    def ok(self) -> bool:
        return not self.errors


_NOTHING = object()
_PLAIN_EMPTY = ("the expression gave nothing", "the constant is empty")


@dataclass(frozen=True, eq=False)
class _Step:
    """One rule, ready to run."""

    source: str
    text: str
    path: tuple[str, ...]
    expr: _Expr | None
    values: dict[str, str]
    folded: dict[str, str]
    default: str | None

    @classmethod
    def build(cls, rule: Rule, compiled: dict[str, _Expr]) -> _Step:
        folded: dict[str, str] = {}
        for key, out in rule.values.items():
            folded.setdefault(key.strip().casefold(), out)
        return cls(
            source=rule.source,
            text=rule.value,
            path=tuple(rule.value.split(".")) if rule.source == "field" else (),
            expr=compiled.get(rule.value) if rule.source == "expression" else None,
            values=rule.values,
            folded=folded,
            default=rule.values_default,
        )

    def run(self, record: dict[str, Any], helpers: dict[str, Any]) -> tuple[Any, str]:
        """(value, why it is empty when it is)."""
        if self.source == "field":
            value = _lookup(record, self.path)
            what, why = f"Salesforce field {self.text}", f"Salesforce field {self.text} is empty"
        elif self.source == "constant":
            value, what, why = self.text, "the constant", "the constant is empty"
        else:
            assert self.expr is not None
            value = _evaluate(self.expr, record, helpers)
            what, why = "the expression", "the expression gave nothing"
        if _empty(value) or not (self.values or self.default is not None):
            return value, why
        mapped = self._map(value)
        if _empty(mapped):
            return None, f"{what} is {_show(value)}, which the value map turns into nothing"
        return mapped, why

    def _map(self, value: Any) -> Any:
        key = _key(value)
        if key is not None:
            if key in self.values:
                return self.values[key]
            folded = self.folded.get(key.strip().casefold())
            if folded is not None:
                return folded
        return value if self.default is None else self.default


@dataclass(frozen=True, eq=False)
class _Plan:
    name: str
    target: Target | None
    step: _Step
    fallback: _Step | None

    def value(self, record: dict[str, Any], helpers: dict[str, Any]) -> Any:
        value, why = self.step.run(record, helpers)
        if _empty(value):
            if self.fallback is None:
                if self.target is not None and self.target.required:
                    raise _Fail(
                        f"{why}; Clazar needs a {self.target.label.lower()}: add a fallback (a constant or "
                        "an expression)"
                    )
                return _NOTHING
            value, fallback_why = self.fallback.run(record, helpers)
            if _empty(value):
                detail = "" if fallback_why in _PLAIN_EMPTY else f" ({fallback_why})"
                raise _Fail(f"{why} and the fallback gave nothing{detail}")
        if self.target is None:
            return _plain(value)
        return _coerce(value, self.target, self.step.text if self.step.source == "field" else "")


@dataclass(frozen=True, eq=False)
class Compiled:
    """A mapping ready to apply to many records; build it with ``compile_mapping``."""

    mapping: Mapping
    plans: tuple[_Plan, ...]
    custom: tuple[_Plan, ...]

    def apply(self, record: Any, *, today: date, now: datetime | None = None) -> Result:
        """The Clazar record for one Salesforce record; never raises for a bad record or expression.
        ``now`` defaults to midnight UTC of ``today``."""
        if not isinstance(record, dict):
            return Result(
                {}, [FieldError("record", f"is {_show(record)}, not an object of Salesforce fields")]
            )
        if isinstance(today, datetime):
            today = today.date()
        helpers = {"today": today, "now": now or datetime.combine(today, time(), tzinfo=UTC)}
        data: dict[str, Any] = {}
        errors: list[FieldError] = []
        for plan in self.plans:
            try:
                value = plan.value(record, helpers)
            except _Fail as exc:
                errors.append(FieldError(plan.name, exc.message))
                continue
            if value is not _NOTHING:
                data[plan.name] = value
        custom: dict[str, Any] = {}
        for plan in self.custom:
            try:
                value = plan.value(record, helpers)
            except _Fail as exc:
                errors.append(FieldError(f"custom_properties.{plan.name}", exc.message))
                continue
            if value is not _NOTHING:
                custom[plan.name] = value
        if custom:
            data["custom_properties"] = custom
        return Result(data, errors)


def compile_mapping(mapping: Mapping) -> Compiled:
    """Check the mapping (MappingInvalid, as ``from_json``) and compile its expressions, once."""
    errors, compiled = _analyse(mapping)
    if errors:
        raise MappingInvalid(_ordered(errors))

    def plan(name: str, target: Target | None, rule: Rule) -> _Plan:
        fallback = _Step.build(rule.fallback, compiled) if rule.fallback is not None else None
        return _Plan(name, target, _Step.build(rule, compiled), fallback)

    plans = tuple(plan(t.name, t, mapping.fields[t.name]) for t in TARGETS if t.name in mapping.fields)
    custom = tuple(plan(name, None, rule) for name, rule in mapping.custom_properties.items())
    return Compiled(mapping, plans, custom)


def preview(mapping: Mapping, records: Iterable[Any], *, today: date) -> list[Result]:
    """``apply`` over ``records`` (compiling once)."""
    compiled = compile_mapping(mapping)
    return [compiled.apply(record, today=today) for record in records]


def source_fields(mapping: Mapping) -> list[str]:
    """Every Salesforce field path the mapping reads (fields and names in expressions), sorted, each once
    (ignoring case, as SOQL rejects a field selected twice)."""
    found: list[str] = []
    rules = [*mapping.fields.values(), *mapping.custom_properties.values()]
    for rule in rules + [r.fallback for r in rules if r.fallback is not None]:
        if rule.source == "field":
            found.append(rule.value)
        elif rule.source == "expression":
            try:
                found += _names(_parse(_shorthand(rule.value)))
            except _Refused:
                continue
    out: dict[str, str] = {}
    for name in sorted(found):
        try:
            field_path(name)
        except ValueError:
            continue
        out.setdefault(name.casefold(), name)
    return list(out.values())
