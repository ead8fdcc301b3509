"""Salesforce records -> Clazar co-sell opportunity records, as an operator maps them on a page.

Pure: no Django, no ORM, no network and no clock (``today`` is passed in). The steps:

1. ``Mapping.from_json`` reads what the page saved and says everything that is wrong (``MappingInvalid``),
   keyed by target name ("title", "custom_properties.region"; "" for the mapping as a whole).
   ``to_json`` writes it back with every key present, so the round trip is exact.
2. ``compile_mapping`` checks the same things and compiles each expression once; ``Compiled.apply`` turns
   one record into a ``Result`` (the Clazar record plus field errors) and never raises for a bad record.
   A record with errors is reported and must not be sent; deciding that is the caller's job.
3. ``source_fields`` lists the Salesforce fields the mapping reads (for the SELECT); ``suggest`` drafts a
   mapping from Opportunity's describe data; ``preview`` maps a few records for the page.

How a target gets its value:

- The rule's source gives a value: a Salesforce field (dotted paths walk parent records, ``Account.Name``;
  a name matches exactly, else case-insensitively, as SOQL does), a constant, or an expression.
- A value that is not empty goes through the rule's value map: the exact key first, then one that matches
  ignoring case and surrounding spaces; with no entry, ``values_default`` (None: keep the value). Map a
  value to "" to treat it as empty.
- Empty (None, "", spaces only, [] or {}) -> the fallback rule (with its own value map, no fallback).
- Still empty: an error when the target is required or the rule has a fallback (the operator asked for a
  value); otherwise the target is left out of the record.
- The value is coerced to the target's kind (see ``TARGETS``); what can't be is an error saying what was
  expected. Custom properties take any JSON value (dates become ISO text) and go under "custom_properties".

Expressions are Jinja2 expressions (not templates) in the immutable sandbox. Variables: the record's fields
(``Amount``, ``Account.Name``; a missing or null field is empty: falsy, "" in filters, an error in
arithmetic), ``today`` and ``now`` (given to ``apply``), ``days(n)`` (a timedelta) and ``date(x)`` (a
Salesforce date or datetime as a date). Filters: lower, upper, trim, title, replace, default (d), round,
int, float. "today + 15 days" is shorthand for ``today + days(15)``. Limits: 500 characters, no names
starting with "_", no string formatting or padding, and no value longer than ``MAX_RESULT`` characters.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from jinja2 import nodes
from jinja2.environment import TemplateExpression
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.filters import FILTERS
from jinja2.parser import Parser
from jinja2.runtime import ChainableUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from clazar_dest.clazar.endpoints import CLOUDS
from clazar_dest.salesforce.soql import field_path

SOURCES = ("field", "constant", "expression")
KINDS = ("text", "choice", "date", "number", "url", "country")
STAGES = (
    "prospect",
    "qualified",
    "technical_validation",
    "business_validation",
    "committed",
    "launched",
    "closed_lost",
)
MAX_EXPRESSION = 500
MAX_CONSTANT = 10_000
MAX_RESULT = 100_000  # characters any value inside an expression (or its result) may have
MAX_VALUES = 500  # value map entries per rule
MAX_VALUE_TEXT = 1_000  # characters of a value map key or value
MAX_CUSTOM = 50
MAX_CUSTOM_SIZE = 10_000  # characters of a custom property's value (as JSON for lists and objects)
MAX_URL = 2_000
MAX_DAYS = 100_000
CUSTOM_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
HELPERS = ("today", "now", "days", "date")  # expression names that are not Salesforce fields


class MappingInvalid(ValueError):
    """The mapping can't be used; ``errors`` maps a target name (or "custom_properties.<name>", or "" for
    the mapping as a whole) to messages that say what is wrong and what is expected."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{key or 'mapping'}: {' '.join(msgs)}" for key, msgs in errors.items()))


# ---------------------------------------------------------------------------------------------------------
# Targets: the Clazar co-sell opportunity fields


@dataclass(frozen=True)
class Target:
    """A Clazar opportunity field. ``choices``: the allowed values of a "choice" target; for "text" the
    usual values, offered on the page but not enforced. ``max_length`` bounds "text" values."""

    name: str
    label: str
    kind: str
    required: bool
    help: str
    choices: tuple[str, ...] = ()
    max_length: int | None = None


TARGETS: tuple[Target, ...] = (
    Target(
        "title",
        "Title",
        "text",
        True,
        "The opportunity's name in Clazar, at most 255 characters.",
        max_length=255,
    ),
    Target(
        "cloud",
        "Cloud",
        "choice",
        True,
        "The cloud marketplace: aws, azure or gcp. Names such as Amazon Web Services, Microsoft Azure and "
        "Google Cloud are recognised; map anything else in the value map.",
        choices=CLOUDS,
    ),
    Target(
        "customer_company",
        "Customer company",
        "text",
        True,
        "The customer's company name, at most 255 characters.",
        max_length=255,
    ),
    Target(
        "customer_website",
        "Customer website",
        "url",
        False,
        "The customer's web site; a bare domain such as acme.com becomes https://acme.com.",
    ),
    Target(
        "customer_country",
        "Customer country",
        "country",
        False,
        "A 2-letter ISO country code such as US or DE; common names (United States, USA, Germany) are "
        "recognised, map others in the value map.",
    ),
    Target(
        "target_close_date",
        "Target close date",
        "date",
        False,
        "When the deal should close, sent as YYYY-MM-DD; Salesforce dates and datetimes are accepted.",
    ),
    Target(
        "stage",
        "Stage",
        "text",
        False,
        "The co-sell stage. Clazar's stages: "
        + ", ".join(STAGES)
        + ". Map Salesforce stages in the value map.",
        choices=STAGES,
        max_length=255,
    ),
    Target(
        "expected_revenue",
        "Expected revenue",
        "number",
        False,
        "The deal's expected revenue as a number (1200 or 1200.50).",
    ),
    Target(
        "description",
        "Description",
        "text",
        False,
        "Free text about the deal, at most 10,000 characters.",
        max_length=10_000,
    ),
)

BY_NAME: dict[str, Target] = {t.name: t for t in TARGETS}

_CLOUD_NAMES = {
    "aws": "aws",
    "amazon": "aws",
    "amazon web services": "aws",
    "azure": "azure",
    "microsoft azure": "azure",
    "gcp": "gcp",
    "google cloud": "gcp",
    "google cloud platform": "gcp",
}

_COUNTRY_NAMES = {
    "us": "US",
    "usa": "US",
    "united states": "US",
    "united states of america": "US",
    "america": "US",
    "uk": "GB",
    "gbr": "GB",
    "united kingdom": "GB",
    "great britain": "GB",
    "britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northern ireland": "GB",
    "germany": "DE",
    "deu": "DE",
    "deutschland": "DE",
    "france": "FR",
    "fra": "FR",
    "canada": "CA",
    "can": "CA",
    "australia": "AU",
    "aus": "AU",
    "india": "IN",
    "ind": "IN",
    "japan": "JP",
    "jpn": "JP",
    "china": "CN",
    "chn": "CN",
    "brazil": "BR",
    "brasil": "BR",
    "bra": "BR",
    "mexico": "MX",
    "méxico": "MX",
    "mex": "MX",
    "spain": "ES",
    "españa": "ES",
    "esp": "ES",
    "italy": "IT",
    "italia": "IT",
    "ita": "IT",
    "netherlands": "NL",
    "the netherlands": "NL",
    "holland": "NL",
    "nld": "NL",
    "switzerland": "CH",
    "che": "CH",
    "sweden": "SE",
    "swe": "SE",
    "norway": "NO",
    "denmark": "DK",
    "finland": "FI",
    "ireland": "IE",
    "irl": "IE",
    "israel": "IL",
    "singapore": "SG",
    "sgp": "SG",
    "south korea": "KR",
    "korea": "KR",
    "republic of korea": "KR",
    "new zealand": "NZ",
    "belgium": "BE",
    "austria": "AT",
    "poland": "PL",
    "portugal": "PT",
    "south africa": "ZA",
    "united arab emirates": "AE",
    "uae": "AE",
    "saudi arabia": "SA",
    "argentina": "AR",
    "chile": "CL",
    "colombia": "CO",
    "peru": "PE",
    "hong kong": "HK",
    "taiwan": "TW",
    "indonesia": "ID",
    "philippines": "PH",
    "thailand": "TH",
    "vietnam": "VN",
    "viet nam": "VN",
    "malaysia": "MY",
    "turkey": "TR",
    "türkiye": "TR",
    "turkiye": "TR",
    "czech republic": "CZ",
    "czechia": "CZ",
    "hungary": "HU",
    "romania": "RO",
    "greece": "GR",
    "egypt": "EG",
    "nigeria": "NG",
    "kenya": "KE",
    "luxembourg": "LU",
    "ukraine": "UA",
    "estonia": "EE",
    "latvia": "LV",
    "lithuania": "LT",
    "iceland": "IS",
    "croatia": "HR",
    "slovakia": "SK",
    "slovenia": "SI",
    "bulgaria": "BG",
    "serbia": "RS",
    "qatar": "QA",
    "pakistan": "PK",
    "bangladesh": "BD",
    "sri lanka": "LK",
    "morocco": "MA",
    "costa rica": "CR",
    "uruguay": "UY",
    "puerto rico": "PR",
}

# ISO 3166-1 alpha-2, all officially assigned codes.
_ISO_CODES = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV
    BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES
    ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE
    IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY
    MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU
    NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM
    SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE
    VG VI VN VU WF WS YE YT ZA ZM ZW
"""
ISO_COUNTRIES = frozenset(_ISO_CODES.split())

# The standard Salesforce Opportunity stages and the Clazar stage ``suggest`` maps each to.
SALESFORCE_STAGES = {
    "Prospecting": "prospect",
    "Qualification": "qualified",
    "Needs Analysis": "qualified",
    "Value Proposition": "technical_validation",
    "Id. Decision Makers": "business_validation",
    "Perception Analysis": "business_validation",
    "Proposal/Price Quote": "committed",
    "Negotiation/Review": "committed",
    "Closed Won": "launched",
    "Closed Lost": "closed_lost",
}


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


@dataclass(frozen=True, eq=False)
class _Expr:
    run: TemplateExpression
    roots: tuple[str, ...]  # the record fields it reads at the top level
    paths: tuple[str, ...]  # field paths it reads (for the SELECT)


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


# ---------------------------------------------------------------------------------------------------------
# Applying


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


class _Fail(Exception):
    """A value that can't be used. ``reason`` ("is not a date") is the message without the value and the
    hint, for the checks that name the value themselves."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or message


def _bad(value: Any, reason: str, hint: str = "") -> _Fail:
    return _Fail(f"{_show(value)} {reason}" + (f"; {hint}" if hint else ""), reason)


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


# ---------------------------------------------------------------------------------------------------------
# Suggesting a mapping from Opportunity's describe data


def suggest(fields: list[dict[str, Any]]) -> Mapping:
    """A first mapping for Opportunity, using only fields in ``fields`` (describe data: dicts with name,
    type, relationshipName, referenceTo). Parent fields need the relationship (relationshipName "Account").
    Cloud falls back to the constant "aws" (and is that constant when there is no Cloud_Provider__c)."""
    names: dict[str, str] = {}
    relations: dict[str, str] = {}
    for item in fields:
        if not isinstance(item, dict):
            continue
        name, relation = item.get("name"), item.get("relationshipName")
        if isinstance(name, str) and name:
            names.setdefault(name.casefold(), name)
        if isinstance(relation, str) and relation:
            relations.setdefault(relation.casefold(), relation)
    out: dict[str, Rule] = {}

    def add(target: str, name: str, **kwargs: Any) -> None:
        found = names.get(name.casefold())
        if found:
            out[target] = Rule("field", found, **kwargs)

    add("title", "Name")
    cloud = names.get("cloud_provider__c")
    if cloud:
        clouds = {"AWS": "aws", "Azure": "azure", "GCP": "gcp"}
        out["cloud"] = Rule("field", cloud, fallback=Rule("constant", "aws"), values=clouds)
    else:
        out["cloud"] = Rule("constant", "aws")
    account = relations.get("account")
    if account:
        out["customer_company"] = Rule("field", f"{account}.Name")
        out["customer_website"] = Rule("field", f"{account}.Website")
        out["customer_country"] = Rule("field", f"{account}.BillingCountry")
    add("target_close_date", "CloseDate", fallback=Rule("expression", "today + 15 days"))
    add("stage", "StageName", values=dict(SALESFORCE_STAGES))
    add("expected_revenue", "Amount")
    add("description", "Description")
    return Mapping({t.name: out[t.name] for t in TARGETS if t.name in out}, {})


# ---------------------------------------------------------------------------------------------------------
# Values


def _empty(value: Any) -> bool:
    if value is None or isinstance(value, Undefined):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, dict, tuple)):
        return not value
    return False


def _lookup(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = _get(value, key)
    return value


def _get(obj: dict[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    folded = key.casefold()
    for name, value in obj.items():
        if isinstance(name, str) and name.casefold() == folded:
            return value
    return None


def _key(value: Any) -> str | None:
    """The text a value map looks up."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "…" + text[-1]


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, timedelta):
        return "a time span (add it to a date: today + days(15))"
    return f"a {type(value).__name__} ({_show(value)})"


def _coerce(value: Any, target: Target, field_name: str) -> Any:
    """The value as the target takes it; _Fail("<value> is not ...") otherwise."""
    kind = target.kind
    if kind == "text":
        return _text(value, target, field_name)
    if kind == "choice":
        return _choice(value, target)
    if kind == "date":
        return _date_value(value)
    if kind == "number":
        return _number(value)
    if kind == "url":
        return _url(value)
    if kind == "country":
        return _country(value)
    raise _Fail(f"the target kind {kind!r} is unknown")  # pragma: no cover - TARGETS are fixed


def _text(value: Any, target: Target, field_name: str) -> str:
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, Decimal)) or (isinstance(value, float) and math.isfinite(value)):
        text = str(value)
    elif isinstance(value, date):
        text = value.isoformat()
    else:
        reason = f"is {_kind_of(value)}, not text"
        raise _Fail(f"the value {reason}; pick a field that holds text", reason)
    limit = target.max_length
    if limit is not None and len(text) > limit:
        reason = f"is {len(text):,} characters long; Clazar takes at most {limit:,}"
        example = f"{field_name or 'Name'}[:{limit}]"
        raise _Fail(f"the value {reason}: shorten it with an expression such as {example}", reason)
    return text


def _choice(value: Any, target: Target) -> str:
    text = _key(value)
    if text is not None:
        folded = " ".join(text.split()).casefold()
        if folded in target.choices:
            return folded
        if target.name == "cloud" and folded in _CLOUD_NAMES:
            return _CLOUD_NAMES[folded]
    reason = f"is not one of {', '.join(target.choices)}"
    raise _Fail(f"{_show(value)} {reason} — add it to the value map", reason)


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _parse_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if _ISO_DATE.fullmatch(text):
                return date.fromisoformat(text)
            if _ISO_DATE.match(text) and len(text) <= 40:
                return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
        except ValueError:
            return None
    return None


def _date_value(value: Any) -> str:
    found = _parse_date(value)
    if found is None:
        raise _bad(
            value, "is not a date", "use YYYY-MM-DD (e.g. 2027-01-31) or a Salesforce date or datetime"
        )
    return found.isoformat()


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?")


def _number(value: Any) -> int | float:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) <= 100 and _NUMBER.fullmatch(text):
            if text.lstrip("+-").isdigit():
                return int(text)
            number = float(text)
            if math.isfinite(number):
                return number
    raise _bad(value, "is not a number", "use digits such as 1200 or 1200.50")


_LABEL = re.compile(r"[^\W_](?:[\w-]{0,61}[^\W_])?")


def _url(value: Any) -> str:
    bad = _bad(value, "is not a web address", "use a site such as acme.com or https://acme.com")
    if not isinstance(value, str):
        raise bad
    text = value.strip()
    if len(text) > MAX_URL or any(c.isspace() or not c.isprintable() or c == "\\" for c in text):
        raise bad
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise bad from None
    labels = (parts.hostname or "").split(".")
    if (
        parts.scheme.lower() not in ("http", "https")
        or "@" in parts.netloc
        or port == 0
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
    ):
        raise bad
    return text


def _country(value: Any) -> str:
    if isinstance(value, str):
        text = " ".join(value.replace(".", "").split()).casefold()
        code = _COUNTRY_NAMES.get(text)
        if code is None and text.startswith("the "):
            code = _COUNTRY_NAMES.get(text[4:])
        if code is None and text.upper() in ISO_COUNTRIES:
            code = text.upper()
        if code is not None:
            return code
    raise _bad(
        value,
        "is not a country",
        "use a 2-letter ISO code such as US or DE (or a common name such as United States), or add it to "
        "the value map",
    )


def _plain(value: Any) -> Any:
    """A custom property's value: JSON text, numbers, booleans, lists and objects; dates as ISO text."""
    if isinstance(value, str):
        value = value.strip()
        if len(value) > MAX_CUSTOM_SIZE:
            raise _Fail(f"the value is {len(value):,} characters; at most {MAX_CUSTOM_SIZE:,} are allowed")
        return value
    if isinstance(value, (bool, int)):
        return value
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Fail(f"{_show(value)} is not a number JSON can carry")
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        size = 0
        try:
            for chunk in _JSON.iterencode(value):  # lazy: stops early on a huge (or shared) structure
                size += len(chunk)
                if size > MAX_CUSTOM_SIZE:
                    raise _Fail(f"the value is over {MAX_CUSTOM_SIZE:,} characters as JSON")
        except (TypeError, ValueError, RecursionError):
            raise _Fail(f"the value is {_kind_of(value)} that can't be written as JSON") from None
        return value
    raise _Fail(
        f"the value is {_kind_of(value)}; use text, a number, true/false, a date, a list or an object"
    )


def _not_json(value: Any) -> Any:
    raise TypeError(type(value).__name__)


_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=_not_json)


# ---------------------------------------------------------------------------------------------------------
# The expression sandbox


class _Refused(Exception):
    """An expression that can't be compiled; the message reads after "The rule's expression ..."."""


class _Empty(ChainableUndefined):
    """A missing or null field: falsy, "" in filters, chainable (Account.Name), an error in arithmetic."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        return f"{self._undefined_name} is empty or missing" if self._undefined_name else "a value is empty"


def _size(n: int) -> None:
    if n > MAX_RESULT:
        raise SecurityError(f"a value would be longer than {MAX_RESULT:,} characters")


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    # str methods that can allocate without bound or format; the |replace filter is size-checked instead
    unsafe_str = frozenset(
        {"format", "format_map", "center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join"}
    )

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in self.unsafe_str:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(f"access to {attribute!r} of a {type(obj).__name__} is not allowed")

    def wrap_str_format(self, value: Any) -> None:
        return None  # str.format is refused by is_safe_attribute instead of wrapped

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict):  # a Salesforce parent record: its fields, never dict methods
            value = _get(obj, attribute)
            return self.undefined(obj=obj, name=attribute) if value is None else value
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, dict) and isinstance(argument, str):
            return self.getattr(obj, argument)
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        sized = (str, list, tuple)
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                _size((left.bit_length() + right.bit_length()) // 8)
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, sized) and isinstance(times, int):
                    _size(len(seq) * times)
        elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            _size(len(left) + len(right))
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            _size(left.bit_length() * right // 8)
        elif operator == "%" and isinstance(left, str):
            raise SecurityError("text formatting with % is not allowed; join text with ~")
        return super().call_binop(context, operator, left, right)


def _days(n: Any) -> timedelta:
    if isinstance(n, bool) or not isinstance(n, (int, float, str, Decimal)):
        raise TypeError(f"days() takes a number of days, e.g. days(15), not {_kind_of(n)}")
    number = float(n) if isinstance(n, (str, Decimal)) else n
    if not math.isfinite(number) or abs(number) > MAX_DAYS:
        raise ValueError(f"days() takes at most {MAX_DAYS:,} days")
    return timedelta(days=number)


def _date(value: Any) -> date | Undefined:
    if _empty(value):
        return _Empty(name="date()")
    found = _parse_date(value)
    if found is None:
        raise ValueError(f"date() can't read {_show(value)}; it takes YYYY-MM-DD or a Salesforce datetime")
    return found


def _replace(value: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old, new = ("" if isinstance(v, Undefined) else str(v) for v in (value, old, new))
    limit = -1 if count is None else int(count)
    hits = text.count(old) if old else len(text) + 1
    _size(len(text) + (min(hits, limit) if limit >= 0 else hits) * (len(new) - len(old)))
    return text.replace(old, new, limit)


_ENV = _Sandbox(undefined=_Empty, autoescape=False)
_ENV.globals.clear()
_ENV.globals.update(days=_days, date=_date)
_ENV.filters = {
    name: FILTERS[name]
    for name in ("lower", "upper", "trim", "title", "default", "d", "round", "int", "float")
}
_ENV.filters["replace"] = _replace

_SHORTHAND = re.compile(r"(?<![\w.])(\d+)\s*days?\b")
_STRING = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""", re.DOTALL)


def _shorthand(source: str) -> str:
    """ "today + 15 days" -> "today + days(15)", outside string literals."""
    parts = _STRING.split(source)
    return "".join(p if i % 2 else _SHORTHAND.sub(r"days(\1)", p) for i, p in enumerate(parts))


def _parse(source: str) -> nodes.Expr:
    try:
        parser = Parser(_ENV, source, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            raise TemplateSyntaxError("unexpected text after the expression", parser.stream.current.lineno)
    except TemplateSyntaxError as exc:
        raise _Refused(f"has a syntax error: {(exc.message or '').rstrip('.')}") from None
    except (RecursionError, MemoryError):
        raise _Refused("is nested too deeply") from None
    every = [expr, *expr.find_all(nodes.Node)]  # find_all skips the node itself
    for node in every:
        if not isinstance(node, (nodes.Getattr, nodes.Getitem)):
            continue
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise _Refused(f"can't use names starting with _ ({name!r})")
    for node in every:
        if isinstance(node, nodes.Filter) and node.name not in _ENV.filters:
            known = "lower, upper, trim, title, replace, default, round, int, float"
            raise _Refused(f"uses the filter {node.name!r}, which is not available; use one of {known}")
    return expr


def _compile(source: str) -> _Expr:
    rewritten = _shorthand(source)
    tree = _parse(rewritten)
    paths = tuple(dict.fromkeys(_names(tree)))
    roots = tuple(dict.fromkeys(p.split(".")[0] for p in paths))
    try:
        run = _ENV.compile_expression(rewritten, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise _Refused(f"has a syntax error: {(exc.message or '').rstrip('.')}") from None
    except (RecursionError, MemoryError, SyntaxError, ValueError):
        raise _Refused("is too complex to compile") from None
    return _Expr(run, roots, paths)


def _chain(node: nodes.Node) -> str | None:
    """``Account.Name`` (or ``Account['Name']``) as a dotted path; None for anything else."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        inner = _chain(node.node)
        return f"{inner}.{node.attr}" if inner is not None else None
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        inner = _chain(node.node)
        return f"{inner}.{node.arg.value}" if inner is not None else None
    return None


def _names(tree: nodes.Node) -> list[str]:
    """The dotted paths rooted in variables, longest first found; method calls (Name.lower()) excluded."""
    found: list[str] = []

    def walk(node: nodes.Node) -> None:
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            walk(node.node.node)  # Name.lower(): the method is not a field
            for child in node.iter_child_nodes(exclude=("node",)):
                walk(child)
            return
        path = _chain(node)
        if path is not None:
            found.append(path)
            return
        for child in node.iter_child_nodes():
            walk(child)

    walk(tree)
    return [p for p in found if p.split(".")[0] not in HELPERS]


def _evaluate(expr: _Expr, record: dict[str, Any], helpers: dict[str, Any]) -> Any:
    context: dict[str, Any] = {}
    for root in expr.roots:
        value = _get(record, root)
        context[root] = _Empty(name=root) if value is None else value
    context.update(helpers)
    try:
        result = expr.run(**context)
    except SecurityError as exc:
        raise _Fail(f"the expression was refused by the sandbox: {exc}") from None
    except UndefinedError as exc:
        raise _Fail(f"the expression failed: {exc.message}") from None
    except RecursionError:
        raise _Fail("the expression failed: too much recursion") from None
    except Exception as exc:  # anything an expression does wrong is this record's error, never a crash
        raise _Fail(f"the expression failed: {type(exc).__name__}: {exc}") from None
    if isinstance(result, Undefined):
        return None
    if isinstance(result, str) and len(result) > MAX_RESULT:
        raise _Fail(f"the expression gave {len(result):,} characters; at most {MAX_RESULT:,} are allowed")
    return result
