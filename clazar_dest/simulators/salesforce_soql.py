"""The SOQL subset of the Salesforce simulator: a tokenizer, a recursive-descent parser and an evaluator.

Grammar (keywords in any case)::

    query  := SELECT select FROM object [WHERE cond] [ORDER BY order {"," order}] [LIMIT integer]
    select := COUNT "(" ")" | path {"," path}
    path   := name {"." name}                  -- parent fields through relationships: Account.Name
    cond   := unary {AND unary} | unary {OR unary}   -- mixing AND and OR needs parentheses, as in SOQL
    unary  := NOT unary | "(" cond ")" | path op value | path [NOT] IN "(" value {"," value} ")"
            | path LIKE string
    op     := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    value  := 'string' | number | TRUE | FALSE | NULL | 2026-01-31 | 2026-01-31T10:00:00[.000](Z|+hh:mm)
            | TODAY | YESTERDAY | TOMORROW | LAST_N_DAYS:n | NEXT_N_DAYS:n | N_DAYS_AGO:n
            | (LAST|THIS|NEXT)_(WEEK|MONTH|YEAR) | LAST_90_DAYS | NEXT_90_DAYS
    order  := path [ASC | DESC] [NULLS FIRST | NULLS LAST]

Semantics follow Salesforce: text compares without case (=, IN, LIKE, ordering); `!=` and NOT IN keep
nulls; <, >, LIKE never match null; dates and datetimes are compared as dates and instants (date
literals are whole UTC days: `CreatedDate = TODAY` is every instant of today, `> TODAY` after it);
LAST_N_DAYS:n is today and the n days before it, NEXT_N_DAYS:n today and the n days after it; ids match
by their 15-character form. Ascending order puts nulls first, descending last. Errors are `SoqlError`
with the errorCode Salesforce answers (MALFORMED_QUERY, INVALID_FIELD, INVALID_TYPE,
INVALID_QUERY_FILTER_OPERATOR) and the position in the query. Stdlib only.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from clazar_dest.simulators.salesforce_data import (
    ID_PATTERN,
    NUMERIC,
    SCHEMA,
    STRINGY,
    Field,
    SObject,
    find_object,
    parse_datetime,
)

RESERVED = frozenset(
    [
        "SELECT",
        "FROM",
        "WHERE",
        "AND",
        "OR",
        "NOT",
        "IN",
        "LIKE",
        "ORDER",
        "BY",
        "LIMIT",
        "NULL",
        "TRUE",
        "FALSE",
        "GROUP",
        "HAVING",
        "OFFSET",
        "WITH",
        "FOR",
        "USING",
        "TYPEOF",
        "INCLUDES",
        "EXCLUDES",
    ]
)
DATE_LITERALS = frozenset(
    [
        "TODAY",
        "YESTERDAY",
        "TOMORROW",
        "LAST_WEEK",
        "THIS_WEEK",
        "NEXT_WEEK",
        "LAST_MONTH",
        "THIS_MONTH",
        "NEXT_MONTH",
        "LAST_YEAR",
        "THIS_YEAR",
        "NEXT_YEAR",
        "LAST_90_DAYS",
        "NEXT_90_DAYS",
    ]
)
DATE_LITERALS_N = frozenset({"LAST_N_DAYS", "NEXT_N_DAYS", "N_DAYS_AGO"})
OPERATORS = ("=", "!=", "<>", "<", "<=", ">", ">=")
NO_SUCH_COLUMN = (
    "No such column '{name}' on entity '{entity}'. If you are attempting to use a custom field, be sure "
    "to append the '__c' after the custom field name. Please reference your WSDL or the describe call for "
    "the appropriate names."
)
NO_SUCH_RELATIONSHIP = (
    "Didn't understand relationship '{name}' in field path. If you are attempting to use a custom "
    "relationship, be sure to append the '__r' after the custom relationship name. Please reference your "
    "WSDL or the describe call for the appropriate names."
)
NOT_SUPPORTED = (
    "sObject type '{name}' is not supported. If you are attempting to use a custom object, be sure to "
    "append the '__c' after the entity name. Please reference your WSDL or the describe call for the "
    "appropriate names."
)


class SoqlError(Exception):
    """A query Salesforce would refuse: `code` is the errorCode, `pos` the offset in the query text."""

    def __init__(self, code: str, detail: str, pos: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.pos = pos

    def render(self, text: str) -> str:
        """The message with the row, column and a caret under the place in the query."""
        if self.pos is None:
            return self.detail
        pos = min(self.pos, len(text))
        start = text.rfind("\n", 0, pos) + 1
        end = text.find("\n", pos)
        line = text[start : len(text) if end < 0 else end]
        row, col = text.count("\n", 0, pos) + 1, pos - start + 1
        shown, caret = line, col - 1
        if len(line) > 120:  # a window around the column keeps the message readable
            left = max(0, caret - 60)
            shown = (
                ("..." if left else "") + line[left : left + 120] + ("..." if left + 120 < len(line) else "")
            )
            caret = caret - left + (3 if left else 0)
        return f"{self.detail}\nERROR at Row:{row}:Column:{col}\n{shown}\n{' ' * caret}^"


# -- tokens --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # name, string, number, date, datetime, op, ( ) , . : and eof
    text: str
    pos: int
    value: Any = None

    def show(self) -> str:
        return "<EOF>" if self.kind == "eof" else f"'{self.text}'"


_LEX = re.compile(
    r"""
     (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))(?![\w:.+-])
    |(?P<baddatetime>\d{4}-\d{2}-\d{2}T[\w:.+-]*)
    |(?P<date>\d{4}-\d{2}-\d{2})(?![\w:-])
    |(?P<number>[+-]?(?:\d+(?:\.\d+)?|\.\d+))(?![\w.])
    |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>!=|<>|<=|>=|=|<|>)
    |(?P<punct>[(),.:])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "'": "'", '"': '"', "\\": "\\"}


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, size = 0, len(text)
    while i < size:
        char = text[i]
        if char.isspace():
            i += 1
            continue
        if char == "'":
            value, parts, i_end = _string(text, i)
            tokens.append(Token("string", text[i:i_end], i, (value, parts)))
            i = i_end
            continue
        found = _LEX.match(text, i)
        if found is None:
            hint = " (SOQL text goes in single quotes)" if char == '"' else ""
            raise SoqlError("MALFORMED_QUERY", f"unexpected character: '{char}'{hint}", i)
        kind, word = found.lastgroup or "", found.group()
        if kind == "baddatetime":
            raise SoqlError(
                "MALFORMED_QUERY",
                f"invalid datetime: {word} (write it like 2026-01-31T10:00:00Z, with seconds and a time zone)",
                i,
            )
        value: Any = None
        try:
            if kind == "date":
                value = date.fromisoformat(word)
            elif kind == "datetime":
                value = parse_datetime(word.replace("Z", "+00:00"))
        except ValueError:
            raise SoqlError("MALFORMED_QUERY", f"invalid {kind}: {word}", i) from None
        if kind == "number":
            value = float(word) if "." in word else int(word)
        tokens.append(Token(word if kind == "punct" else kind, word, i, value))
        i = found.end()
    tokens.append(Token("eof", "", size))
    return tokens


def _string(text: str, start: int) -> tuple[str, list[tuple[str, bool]], int]:
    """A quoted string from `start`: its value, its characters marked escaped or not (for LIKE), its end."""
    parts: list[tuple[str, bool]] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "'":
            return "".join(c for c, _ in parts), parts, i + 1
        if char != "\\":
            parts.append((char, False))
            i += 1
            continue
        code = text[i + 1 : i + 2]
        if code in _ESCAPES:
            parts.append((_ESCAPES[code], True))
            i += 2
        elif code in ("%", "_"):
            parts.append((code, True))
            i += 2
        elif code == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", text[i + 2 : i + 6]):
            parts.append((chr(int(text[i + 2 : i + 6], 16)), True))
            i += 6
        else:
            raise SoqlError(
                "MALFORMED_QUERY",
                f"Invalid string literal: illegal escape sequence '\\{code}' "
                "(use \\' \\\\ \\n \\t \\r \\b \\f \\\" \\% \\_ or \\uXXXX)",
                i,
            )
    raise SoqlError("MALFORMED_QUERY", "unterminated string literal: close it with '", start)


# -- syntax tree ---------------------------------------------------------------------------------


@dataclass
class Path:
    parts: list[tuple[str, int]]  # (name, position)

    @property
    def pos(self) -> int:
        return self.parts[0][1]

    @property
    def text(self) -> str:
        return ".".join(name for name, _ in self.parts)


@dataclass
class Literal:
    kind: str  # string, number, boolean, null, date, datetime, range
    value: Any
    pos: int
    parts: list[tuple[str, bool]] = field(default_factory=list)  # strings: characters, escaped or not


@dataclass
class Compare:
    path: Path
    op: str
    value: Literal


@dataclass
class InList:
    path: Path
    values: list[Literal]
    negate: bool


@dataclass
class Like:
    path: Path
    value: Literal


@dataclass
class Not:
    inner: Any


@dataclass
class Junction:
    op: str  # AND or OR
    items: list[Any]


@dataclass
class OrderKey:
    path: Path
    desc: bool
    nulls_first: bool


@dataclass
class Query:
    fields: list[Path]
    count: bool
    sobject: str
    sobject_pos: int
    where: Any = None
    order: list[OrderKey] = field(default_factory=list)
    limit: int | None = None


class Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0

    # -- helpers -----------------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        token = self.peek()
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def at(self, *words: str) -> bool:
        token = self.peek()
        return token.kind == "name" and token.text.upper() in words

    def fail(self, expected: str, token: Token | None = None) -> SoqlError:
        token = token or self.peek()
        return SoqlError(
            "MALFORMED_QUERY", f"unexpected token: {token.show()} (expected {expected})", token.pos
        )

    def keyword(self, word: str) -> Token:
        if not self.at(word):
            raise self.fail(word)
        return self.take()

    def expect(self, kind: str, expected: str) -> Token:
        if self.peek().kind != kind:
            raise self.fail(expected)
        return self.take()

    def name(self, expected: str) -> Token:
        token = self.peek()
        if token.kind != "name" or token.text.upper() in RESERVED:
            raise self.fail(expected)
        return self.take()

    # -- grammar -----------------------------------------------------------------------------------

    def query(self) -> Query:
        self.keyword("SELECT")
        count = False
        fields: list[Path] = []
        if self.at("COUNT") and self.peek(1).kind == "(":
            self.take()
            self.take()
            self.expect(")", "')' after COUNT(")
            count = True
        else:
            fields.append(self.path("a field name"))
            while self.peek().kind == ",":
                self.take()
                fields.append(self.path("a field name after ','"))
        if count and self.peek().kind == ",":
            raise self.fail("FROM: COUNT() can't be mixed with fields")
        self.keyword("FROM")
        sobject = self.name("an object name after FROM")
        query = Query(fields, count, sobject.text, sobject.pos)
        if self.at("WHERE"):
            self.take()
            query.where = self.condition()
        if self.at("ORDER"):
            self.take()
            self.keyword("BY")
            query.order.append(self.order_key())
            while self.peek().kind == ",":
                self.take()
                query.order.append(self.order_key())
        if self.at("LIMIT"):
            self.take()
            token = self.peek()
            if token.kind != "number" or not isinstance(token.value, int) or token.value < 0:
                raise self.fail("a whole number after LIMIT")
            query.limit = self.take().value
        if self.peek().kind != "eof":
            raise self.fail("WHERE, ORDER BY, LIMIT or the end of the query")
        return query

    def path(self, expected: str) -> Path:
        first = self.name(expected)
        parts = [(first.text, first.pos)]
        while self.peek().kind == ".":
            self.take()
            token = self.name("a field name after '.'")
            parts.append((token.text, token.pos))
        return Path(parts)

    def condition(self) -> Any:
        first = self.unary()
        if not self.at("AND", "OR"):
            return first
        op = self.peek().text.upper()
        items = [first]
        while self.at(op):
            self.take()
            items.append(self.unary())
        if self.at("AND", "OR"):
            raise self.fail(f"{op} or ')': use parentheses to mix AND and OR")
        return Junction(op, items)

    def unary(self) -> Any:
        if self.at("NOT"):
            self.take()
            return Not(self.unary())
        if self.peek().kind == "(":
            self.take()
            inner = self.condition()
            self.expect(")", "')'")
            return inner
        path = self.path("a field name or '('")
        if self.at("NOT"):
            self.take()
            self.keyword("IN")
            return InList(path, self.value_list(), True)
        if self.at("IN"):
            self.take()
            return InList(path, self.value_list(), False)
        if self.at("LIKE"):
            self.take()
            return Like(path, self.value())
        if self.peek().kind == "op":
            op = self.take().text
            return Compare(path, "!=" if op == "<>" else op, self.value())
        raise self.fail(f"an operator after {path.text} (=, !=, <, <=, >, >=, LIKE, IN or NOT IN)")

    def value_list(self) -> list[Literal]:
        self.expect("(", "'(' to open the list of values")
        values = [self.value()]
        while self.peek().kind == ",":
            self.take()
            values.append(self.value())
        self.expect(")", "',' or ')' in the list of values")
        return values

    def value(self) -> Literal:
        token = self.peek()
        if token.kind == "string":
            self.take()
            text, parts = token.value
            return Literal("string", text, token.pos, parts)
        if token.kind in ("number", "date", "datetime"):
            self.take()
            return Literal(token.kind, token.value, token.pos)
        if token.kind == "name":
            word = token.text.upper()
            if word in ("TRUE", "FALSE"):
                self.take()
                return Literal("boolean", word == "TRUE", token.pos)
            if word == "NULL":
                self.take()
                return Literal("null", None, token.pos)
            if word in DATE_LITERALS:
                self.take()
                return Literal("range", (word, 0), token.pos)
            if word in DATE_LITERALS_N:
                self.take()
                self.expect(":", f"':' and a number after {word}, like {word}:30")
                amount = self.peek()
                if amount.kind != "number" or not isinstance(amount.value, int) or amount.value < 0:
                    raise self.fail(f"a whole number after {word}:")
                self.take()
                return Literal("range", (word, amount.value), token.pos)
        raise self.fail("a value: 'text', a number, true, false, null, a date, a datetime or a date literal")

    def order_key(self) -> OrderKey:
        path = self.path("a field name to order by")
        desc = False
        if self.at("ASC", "DESC"):
            desc = self.take().text.upper() == "DESC"
        nulls_first = not desc
        if self.at("NULLS"):
            self.take()
            if not self.at("FIRST", "LAST"):
                raise self.fail("FIRST or LAST after NULLS")
            nulls_first = self.take().text.upper() == "FIRST"
        return OrderKey(path, desc, nulls_first)


def parse(text: str) -> Query:
    return Parser(text).query()


# -- date literals -------------------------------------------------------------------------------


def date_range(name: str, n: int, today: date) -> tuple[date, date]:
    """The first and last day a date literal stands for."""
    day = timedelta(days=1)
    if name in ("TODAY", "YESTERDAY", "TOMORROW"):
        shift = {"TODAY": 0, "YESTERDAY": -1, "TOMORROW": 1}[name]
        return today + shift * day, today + shift * day
    if name in ("LAST_N_DAYS", "LAST_90_DAYS"):
        n = 90 if name == "LAST_90_DAYS" else n
        return today - n * day, today
    if name in ("NEXT_N_DAYS", "NEXT_90_DAYS"):
        n = 90 if name == "NEXT_90_DAYS" else n
        return today, today + n * day
    if name == "N_DAYS_AGO":
        return today - n * day, today - n * day
    step = {"LAST": -1, "THIS": 0, "NEXT": 1}[name.split("_")[0]]
    unit = name.split("_")[1]
    if unit == "WEEK":  # weeks start on Sunday (en_US)
        start = today - timedelta(days=(today.weekday() + 1) % 7) + timedelta(weeks=step)
        return start, start + 6 * day
    if unit == "MONTH":
        year, month = divmod(today.year * 12 + today.month - 1 + step, 12)
        month += 1
        return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])
    return date(today.year + step, 1, 1), date(today.year + step, 12, 31)


# -- planning and running ------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    ref: str  # the reference field on the child (AccountId)
    target: str  # the parent object (Account)
    rel: str  # the relationship name (Account)


@dataclass(frozen=True)
class Column:
    steps: tuple[Step, ...]
    field: Field

    @property
    def key(self) -> str:
        return ".".join([*(s.rel for s in self.steps), self.field.name]).lower()


def _resolve(path: Path, root: SObject, readable: set[str]) -> Column:
    parts = list(path.parts)
    if (
        len(parts) > 1
        and parts[0][0].lower() == root.name.lower()
        and parts[0][0].lower() not in root.relations
    ):
        parts = parts[1:]  # Opportunity.Name on Opportunity: the object's own name as a prefix
    obj, steps = root, []
    for name, pos in parts[:-1]:
        ref = obj.relations.get(name.lower())
        if ref is None or ref.reference_to[0] not in readable:
            raise SoqlError("INVALID_FIELD", NO_SUCH_RELATIONSHIP.format(name=name), pos)
        steps.append(Step(ref.name, ref.reference_to[0], ref.relationship or ""))
        obj = SCHEMA[ref.reference_to[0]]
    name, pos = parts[-1]
    found = obj.field(name)
    if found is None:
        raise SoqlError("INVALID_FIELD", NO_SUCH_COLUMN.format(name=name, entity=obj.name), pos)
    return Column(tuple(steps), found)


Getter = Callable[[dict], Any]
Tables = dict[str, dict[str, dict[str, Any]]]


def _getter(column: Column, data: Tables) -> Getter:
    name = column.field.name
    if not column.steps:
        return lambda record: record.get(name)
    hops = [(s.ref, data[s.target]) for s in column.steps]

    def get(record: dict) -> Any:
        current: dict | None = record
        for ref, table in hops:
            parent_id = current.get(ref) if current is not None else None
            current = table.get(parent_id) if parent_id is not None else None
        return None if current is None else current.get(name)

    return get


def _normalizer(f: Field) -> Callable[[Any], Any]:
    if f.type in ("id", "reference"):
        return lambda v: v[:15]
    if f.type in STRINGY:
        return lambda v: v.casefold()
    if f.type in NUMERIC:
        return float
    if f.type == "date":
        return date.fromisoformat
    if f.type == "datetime":
        return parse_datetime
    return lambda v: v


def _type_name(f: Field) -> str:
    if f.type in STRINGY:
        return "string"
    if f.type in NUMERIC:
        return "int" if f.type == "int" else "double"
    return {"datetime": "dateTime"}.get(f.type, f.type)


def _bounds(f: Field, lit: Literal, today: date) -> tuple[Any, Any]:
    """The literal as an inclusive interval in the field's domain; SoqlError if it does not fit."""
    allowed = {
        "string": STRINGY,
        "number": NUMERIC,
        "boolean": {"boolean"},
        "date": {"date"},
        "datetime": {"datetime"},
        "range": {"date", "datetime"},
    }[lit.kind]
    if f.type not in allowed:
        quoted = "should be enclosed in quotes" if f.type in STRINGY else "should not be enclosed in quotes"
        raise SoqlError(
            "INVALID_FIELD",
            f"value of filter criterion for field '{f.name}' must be of type {_type_name(f)} and {quoted}",
            lit.pos,
        )
    if f.type in ("id", "reference"):
        if not ID_PATTERN.fullmatch(lit.value):
            raise SoqlError("INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {lit.value}", lit.pos)
        return lit.value[:15], lit.value[:15]
    if lit.kind == "string":
        return lit.value.casefold(), lit.value.casefold()
    if lit.kind == "number":
        return float(lit.value), float(lit.value)
    if lit.kind != "range":
        return lit.value, lit.value
    first, last = date_range(*lit.value, today)
    if f.type == "date":
        return first, last
    start = datetime.combine(first, time(), UTC)
    return start, datetime.combine(last + timedelta(days=1), time(), UTC) - timedelta(microseconds=1)


_CHECKS: dict[str, Callable[[Any, Any, Any], bool]] = {
    "=": lambda v, lo, hi: lo <= v <= hi,
    "!=": lambda v, lo, hi: not lo <= v <= hi,
    "<": lambda v, lo, hi: v < lo,
    "<=": lambda v, lo, hi: v <= hi,
    ">": lambda v, lo, hi: v > hi,
    ">=": lambda v, lo, hi: v >= lo,
}


class Planner:
    """Turns a parsed query into Python callables over the store's tables."""

    def __init__(self, root: SObject, readable: set[str], data: Tables, today: date) -> None:
        self.root, self.readable, self.data, self.today = root, readable, data, today

    def column(self, path: Path) -> Column:
        return _resolve(path, self.root, self.readable)

    def filterable(self, path: Path) -> tuple[Column, Getter]:
        column = self.column(path)
        if not column.field.filterable:
            raise SoqlError(
                "INVALID_FIELD", f"field '{column.field.name}' can not be filtered in a query call", path.pos
            )
        return column, _getter(column, self.data)

    def predicate(self, node: Any) -> Callable[[dict], bool]:
        if isinstance(node, Junction):
            tests = [self.predicate(item) for item in node.items]
            if node.op == "AND":
                return lambda r: all(test(r) for test in tests)
            return lambda r: any(test(r) for test in tests)
        if isinstance(node, Not):
            inner = self.predicate(node.inner)
            return lambda r: not inner(r)
        if isinstance(node, Like):
            return self.like(node)
        if isinstance(node, InList):
            return self.in_list(node)
        return self.compare(node)

    def compare(self, node: Compare) -> Callable[[dict], bool]:
        column, get = self.filterable(node.path)
        op = node.op
        if node.value.kind == "null":
            if op == "=":
                return lambda r: get(r) is None
            if op == "!=":
                return lambda r: get(r) is not None
            return lambda r: False
        lo, hi = _bounds(column.field, node.value, self.today)
        norm, check, keep_null = _normalizer(column.field), _CHECKS[op], op == "!="

        def test(record: dict) -> bool:
            value = get(record)
            return keep_null if value is None else check(norm(value), lo, hi)

        return test

    def in_list(self, node: InList) -> Callable[[dict], bool]:
        column, get = self.filterable(node.path)
        has_null = any(v.kind == "null" for v in node.values)
        bounds = [_bounds(column.field, v, self.today) for v in node.values if v.kind != "null"]
        norm, negate = _normalizer(column.field), node.negate

        def test(record: dict) -> bool:
            value = get(record)
            if value is None:
                return has_null != negate
            value = norm(value)
            return any(lo <= value <= hi for lo, hi in bounds) != negate

        return test

    def like(self, node: Like) -> Callable[[dict], bool]:
        column, get = self.filterable(node.path)
        f = column.field
        if f.type not in STRINGY or f.type in ("id", "reference"):
            raise SoqlError(
                "INVALID_FIELD",
                f"invalid operator on {_type_name(f) if f.type not in ('id', 'reference') else 'id'} field "
                f"'{f.name}': LIKE works on text fields only",
                node.path.pos,
            )
        if node.value.kind != "string":
            raise SoqlError("MALFORMED_QUERY", "LIKE needs a 'text' pattern", node.value.pos)
        pattern = "".join(
            re.escape(c) if escaped else {"%": ".*", "_": "."}.get(c, re.escape(c))
            for c, escaped in node.value.parts
        )
        regex = re.compile(pattern, re.IGNORECASE | re.DOTALL)
        return lambda r: (v := get(r)) is not None and regex.fullmatch(v) is not None

    def sorter(self, keys: list[OrderKey]) -> Callable[[list[dict]], list[dict]]:
        plans = []
        for key in keys:
            column = self.column(key.path)
            if not column.field.sortable:
                raise SoqlError(
                    "INVALID_FIELD",
                    f"field '{column.field.name}' can not be sorted in a query call",
                    key.path.pos,
                )
            plans.append((_getter(column, self.data), _normalizer(column.field), key))

        def run(rows: list[dict]) -> list[dict]:
            for get, norm, key in reversed(plans):  # stable sorts, last key first
                nulls = [r for r in rows if get(r) is None]
                values = [r for r in rows if get(r) is not None]
                values.sort(key=lambda r, g=get, n=norm: n(g(r)), reverse=key.desc)
                rows = nulls + values if key.nulls_first else values + nulls
            return rows

        return run


@dataclass
class Result:
    sobject: str
    total: int
    records: list[dict] = field(default_factory=list)


def execute(text: str, data: Tables, readable: set[str], version: str, today: date | None = None) -> Result:
    """Run one query over `data` (object -> id -> record) for a user who may read `readable` objects."""
    query = parse(text)
    root = find_object(query.sobject)
    if root is None or root.name not in readable:
        raise SoqlError("INVALID_TYPE", NOT_SUPPORTED.format(name=query.sobject), query.sobject_pos)
    planner = Planner(root, readable, data, today or datetime.now(UTC).date())
    columns: list[Column] = []
    for path in query.fields:
        column = planner.column(path)
        if any(c.key == column.key for c in columns):
            raise SoqlError("MALFORMED_QUERY", f"duplicate field selected: {path.text}", path.pos)
        columns.append(column)
    test = planner.predicate(query.where) if query.where is not None else None
    order = planner.sorter(query.order) if query.order else None
    rows = [r for r in data[root.name].values() if test is None or test(r)]
    if order is not None:
        rows = order(rows)
    if query.limit is not None:
        rows = rows[: query.limit]
    if query.count:
        return Result(root.name, len(rows))
    return Result(root.name, len(rows), [_render(r, root.name, columns, data, version) for r in rows])


def _attributes(name: str, record_id: str, version: str) -> dict[str, str]:
    return {"type": name, "url": f"/services/data/{version}/sobjects/{name}/{record_id}"}


def _render(record: dict, name: str, columns: list[Column], data: Tables, version: str) -> dict:
    """A record as the query endpoint answers it: attributes, then the selected fields in order, parent
    fields nested under the relationship name (null when there is no parent)."""
    out: dict[str, Any] = {"attributes": _attributes(name, record["Id"], version)}
    nodes: dict[tuple[str, ...], tuple[dict | None, dict | None]] = {(): (out, record)}
    for column in columns:
        key: tuple[str, ...] = ()
        node, current = out, record
        for step in column.steps:
            key = (*key, step.rel)
            if key not in nodes:
                parent_id = current.get(step.ref) if current is not None else None
                parent = data[step.target].get(parent_id) if parent_id else None
                child = (
                    None
                    if parent is None
                    else {"attributes": _attributes(step.target, parent["Id"], version)}
                )
                if node is not None:
                    node[step.rel] = child
                nodes[key] = (child, parent)
            node, current = nodes[key]
            if node is None:
                break
        if node is not None and current is not None:
            node[column.field.name] = current.get(column.field.name)
    return out
