"""The sandboxed Jinja2 expressions a rule can use: parsing (with the "15 days" shorthand and the checks
that refuse an expression), the field paths an expression reads, compiling once and evaluating against one
record. Evaluation never raises anything but ``_Fail``.

The sandbox rules shared with payload code templates (no text formatting or padding, size-checked
operators, numbers at most ``MAX_BITS`` bits) are ``clazar_dest.sandbox``'s; here values are capped at
``MAX_RESULT`` characters and a Salesforce parent record (``Account.Name``) shows its fields as attributes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from jinja2 import nodes, pass_environment
from jinja2.environment import TemplateExpression
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.filters import FILTERS
from jinja2.parser import Parser
from jinja2.runtime import ChainableUndefined, Undefined

from clazar_dest.salesforce.mapping.targets import _parse_date
from clazar_dest.salesforce.mapping.values import _empty, _Fail, _get, _kind_of, _show
from clazar_dest.sandbox import BoundedSandbox

MAX_RESULT = 100_000  # characters any value inside an expression (or its result) may have
MAX_DAYS = 100_000
HELPERS = ("today", "now", "days", "date")  # expression names that are not Salesforce fields


@dataclass(frozen=True, eq=False)
class _Expr:
    run: TemplateExpression
    roots: tuple[str, ...]  # the record fields it reads at the top level
    paths: tuple[str, ...]  # field paths it reads (for the SELECT)


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


class _Sandbox(BoundedSandbox):
    """The shared rules plus Salesforce parent records read as attributes, never as dict methods."""

    max_size = MAX_RESULT

    def unsafe_message(self, obj: Any, attribute: str) -> str:
        return f"access to {attribute!r} of a {type(obj).__name__} is not allowed"

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict):  # a Salesforce parent record: its fields, never dict methods
            value = _get(obj, attribute)
            return self.undefined(obj=obj, name=attribute) if value is None else value
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, dict) and isinstance(argument, str):
            return self.getattr(obj, argument)
        return super().getitem(obj, argument)


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


@pass_environment
def _replace(env: BoundedSandbox, value: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old, new = ("" if isinstance(v, Undefined) else str(v) for v in (value, old, new))
    limit = -1 if count is None else int(count)
    env.check_replace(text, old, new, limit)
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
