"""The mapping as the page saves it: ``Rule`` and ``Mapping``, their JSON (``from_json`` says everything
that is wrong as ``MappingInvalid``; ``to_json`` writes every key) and the checks ``compile_mapping``
shares (``_analyse``), which compile each expression once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clazar_dest.salesforce.mapping.expressions import _compile, _Expr, _Refused
from clazar_dest.salesforce.mapping.targets import BY_NAME, TARGETS, Target, _coerce
from clazar_dest.salesforce.mapping.values import _Fail, _show
from clazar_dest.salesforce.soql import field_path

SOURCES = ("field", "constant", "expression")
MAX_EXPRESSION = 500
MAX_CONSTANT = 10_000
MAX_VALUES = 500  # value map entries per rule
MAX_VALUE_TEXT = 1_000  # characters of a value map key or value
MAX_CUSTOM = 50
CUSTOM_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class MappingInvalid(ValueError):
    """The mapping can't be used; ``errors`` maps a target name (or "custom_properties.<name>", or "" for
    the mapping as a whole) to messages that say what is wrong and what is expected."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{key or 'mapping'}: {' '.join(msgs)}" for key, msgs in errors.items()))


# ---------------------------------------------------------------------------------------------------------
# The mapping


@dataclass(frozen=True)
class Rule:
    """Where one target's value comes from. ``value`` is a field path, a constant or an expression,
    depending on ``source``. A fallback is used when this rule gives nothing; it has no fallback itself."""

    source: str
    value: str
    fallback: Rule | None = None
    values: dict[str, str] = field(default_factory=dict)
    values_default: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "value": self.value,
            "fallback": self.fallback.to_json() if self.fallback is not None else None,
            "values": dict(self.values),
            "values_default": self.values_default,
        }


@dataclass(frozen=True)
class Mapping:
    """A rule per Clazar target (``TARGETS`` names) plus operator-named custom properties."""

    fields: dict[str, Rule]
    custom_properties: dict[str, Rule] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> Mapping:
        """The mapping in ``data`` (as ``to_json`` writes it); MappingInvalid with every problem otherwise.
        Optional rule keys (fallback, values, values_default) may be left out."""
        errors: dict[str, list[str]] = {}

        def add(key: str, *messages: str) -> None:
            errors.setdefault(key, []).extend(messages)

        if not isinstance(data, dict):
            raise MappingInvalid(
                {"": ["A field mapping must be an object with fields and custom_properties."]}
            )
        unknown = [str(k) for k in data if k not in ("fields", "custom_properties")]
        if unknown:
            add(
                "", f"Unknown mapping keys {', '.join(map(repr, unknown))}; use fields and custom_properties."
            )
        raw_fields = data.get("fields")
        if raw_fields is None:
            raw_fields = {}
        if not isinstance(raw_fields, dict):
            add("fields", "fields must be an object from Clazar field name to rule.")
            raw_fields = {}
        raw_custom = data.get("custom_properties")
        if raw_custom is None:
            raw_custom = {}
        if not isinstance(raw_custom, dict):
            add("custom_properties", "custom_properties must be an object from property name to rule.")
            raw_custom = {}
        fields: dict[str, Rule] = {}
        for name, raw in raw_fields.items():
            if name not in BY_NAME:
                add(str(name), _unknown_target(str(name)))
                continue
            rule = _read_rule(raw, lambda *m, n=name: add(n, *m))
            if rule is not None:
                fields[name] = rule
        custom: dict[str, Rule] = {}
        for name, raw in raw_custom.items():
            key = f"custom_properties.{name}"
            rule = _read_rule(raw, lambda *m, k=key: add(k, *m))
            if rule is not None:
                custom[str(name)] = rule
        mapping = cls(fields, custom)
        for key, messages in _analyse(mapping, given=set(raw_fields))[0].items():
            add(key, *messages)
        if errors:
            raise MappingInvalid(_ordered(errors))
        return mapping

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": {name: rule.to_json() for name, rule in self.fields.items()},
            "custom_properties": {name: rule.to_json() for name, rule in self.custom_properties.items()},
        }


def _ordered(errors: dict[str, list[str]]) -> dict[str, list[str]]:
    """Errors in page order: the mapping as a whole, the targets, then custom properties."""
    rank = {name: i for i, name in enumerate(["", "fields", *BY_NAME, "custom_properties"])}
    return dict(sorted(errors.items(), key=lambda item: rank.get(item[0], len(rank))))


def _unknown_target(name: str) -> str:
    known = ", ".join(BY_NAME)
    return f"{name!r} is not a Clazar opportunity field; use one of {known}, or add it as a custom property."


def _read_rule(raw: Any, add: Callable[..., None], nested: bool = False) -> Rule | None:
    """The Rule in ``raw`` if its shape is right (types only; ``_analyse`` checks the contents)."""
    what = "The fallback" if nested else "The rule"
    if not isinstance(raw, dict):
        add(f'{what} must be an object such as {{"source": "field", "value": "Name"}}.')
        return None
    ok = True
    unknown = [str(k) for k in raw if k not in ("source", "value", "fallback", "values", "values_default")]
    if unknown:
        add(f"{what} has unknown keys {', '.join(map(repr, unknown))}.")
        ok = False
    source, value = raw.get("source"), raw.get("value", "")
    if source is None or source == "":
        add(f"{what} needs a source: a Salesforce field, a constant or an expression.")
        ok = False
    elif not isinstance(source, str) or source not in SOURCES:
        add(f"{what}'s source must be 'field', 'constant' or 'expression', not {_show(source)}.")
        ok = False
    if not isinstance(value, str):
        add(f"{what}'s value must be text, not {_show(value)}.")
        ok = False
    fallback = None
    raw_fallback = raw.get("fallback")
    if raw_fallback is not None:
        if nested:
            add("A fallback can't have a fallback of its own.")
            ok = False
        else:
            fallback = _read_rule(raw_fallback, add, nested=True)
            ok = ok and fallback is not None
    values = raw.get("values")
    if values is None:
        values = {}
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        add(f'{what}\'s value map must be an object of text to text, such as {{"Closed Won": "launched"}}.')
        ok = False
    default = raw.get("values_default")
    if default is not None and not isinstance(default, str):
        add(f"{what}'s value map default must be text or null, not {_show(default)}.")
        ok = False
    if not ok:
        return None
    return Rule(source, value, fallback, dict(values), default)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Checking and compiling


def _analyse(
    mapping: Mapping, given: set[str] | None = None
) -> tuple[dict[str, list[str]], dict[str, _Expr]]:
    """Every problem with ``mapping`` and its expressions compiled (by source text). ``given``: the targets
    the JSON had a rule for (an unreadable one is reported where it was read, not as missing)."""
    errors: dict[str, list[str]] = {}
    compiled: dict[str, _Expr] = {}
    fields = mapping.fields if isinstance(mapping.fields, dict) else {}
    custom = mapping.custom_properties if isinstance(mapping.custom_properties, dict) else {}
    for target in TARGETS:
        if target.required and fields.get(target.name) is None and target.name not in (given or ()):
            errors.setdefault(target.name, []).append(
                f"Clazar needs a {target.label.lower()}: choose a Salesforce field, a constant or an expression."
            )
    for name, rule in fields.items():
        target = BY_NAME.get(name)
        if target is None:
            errors.setdefault(str(name), []).append(_unknown_target(str(name)))
            continue
        problems = _check_rule(rule, target, compiled)
        if problems:
            errors.setdefault(name, []).extend(problems)
    if len(custom) > MAX_CUSTOM:
        errors.setdefault("custom_properties", []).append(
            f"There are {len(custom)} custom properties; at most {MAX_CUSTOM} are allowed."
        )
    for name, rule in custom.items():
        problems = []
        if not isinstance(name, str) or not CUSTOM_NAME.fullmatch(name):
            problems.append(
                f"{_show(name)} can't be a custom property name: start with a lower-case letter and use "
                "lower-case letters, digits and _ (at most 64 characters), e.g. sf_opportunity_id."
            )
        problems += _check_rule(rule, None, compiled)
        if problems:
            errors.setdefault(f"custom_properties.{name}", []).extend(problems)
    return errors, compiled


def _check_rule(
    rule: Any, target: Target | None, compiled: dict[str, _Expr], nested: bool = False
) -> list[str]:
    what = "The fallback" if nested else "The rule"
    if not isinstance(rule, Rule):
        return [f"{what} must be a Rule, not {type(rule).__name__}."]
    problems: list[str] = []
    value = rule.value
    if not isinstance(value, str):
        return [f"{what}'s value must be text, not {_show(value)}."]
    if rule.source == "field":
        if not value.strip():
            problems.append(f"{what} reads a Salesforce field: choose one, e.g. Name or Account.Name.")
        else:
            try:
                field_path(value)
            except ValueError as exc:
                problems.append(f"{what}: {exc}")
    elif rule.source == "constant":
        if not value.strip():
            problems.append(f"{what} is a constant: type the value, or choose another source.")
        elif len(value) > MAX_CONSTANT:
            problems.append(f"{what}'s constant is {len(value):,} characters; at most {MAX_CONSTANT:,}.")
        elif target is not None and not rule.values and rule.values_default is None:
            problem = _coerce_problem(value, target)
            if problem:
                problems.append(f"{what}'s constant {problem}.")
    elif rule.source == "expression":
        if not value.strip():
            problems.append(f"{what} is an expression: write one, e.g. CloseDate or today + 15 days.")
        elif len(value) > MAX_EXPRESSION:
            problems.append(
                f"{what}'s expression is {len(value):,} characters; at most {MAX_EXPRESSION} are allowed."
            )
        elif value not in compiled:
            try:
                compiled[value] = _compile(value)
            except _Refused as exc:
                problems.append(f"{what}'s expression {exc}.")
    else:
        problems.append(
            f"{what}'s source must be 'field', 'constant' or 'expression', not {_show(rule.source)}."
        )
    problems += _check_values(rule, target, what)
    if rule.fallback is not None:
        if nested:
            problems.append("A fallback can't have a fallback of its own.")
        else:
            problems += _check_rule(rule.fallback, target, compiled, nested=True)
    return problems


def _check_values(rule: Rule, target: Target | None, what: str) -> list[str]:
    values, default = rule.values, rule.values_default
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in values.items()
    ):
        return [f'{what}\'s value map must be text to text, such as {{"Closed Won": "launched"}}.']
    if default is not None and not isinstance(default, str):
        return [f"{what}'s value map default must be text or None, not {_show(default)}."]
    problems = []
    if len(values) > MAX_VALUES:
        problems.append(f"{what}'s value map has {len(values)} entries; at most {MAX_VALUES} are allowed.")
    long = [k for k, v in values.items() if len(k) > MAX_VALUE_TEXT or len(v) > MAX_VALUE_TEXT]
    if long or (default is not None and len(default) > MAX_VALUE_TEXT):
        problems.append(f"{what}'s value map entries are limited to {MAX_VALUE_TEXT:,} characters each.")
    if target is not None and not problems:
        for key, out in values.items():
            problem = _coerce_problem(out, target) if out.strip() else None
            if problem:
                problems.append(f"{what}'s value map turns {_show(key)} into {_show(out)}, which {problem}.")
        problem = _coerce_problem(default, target) if default and default.strip() else None
        if problem:
            problems.append(f"{what}'s value map default {problem}.")
    return problems


def _coerce_problem(value: str, target: Target) -> str | None:
    """Why ``value`` can't be the target's value ("is not ..."), or None."""
    try:
        _coerce(value, target, "")
    except _Fail as exc:
        return exc.reason
    return None
