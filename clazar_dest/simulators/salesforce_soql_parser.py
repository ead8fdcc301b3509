"""The SOQL syntax of the Salesforce simulator: a tokenizer, the syntax tree and a recursive-descent parser.

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

Errors are `SoqlError` with the errorCode Salesforce answers (MALFORMED_QUERY here; the evaluator in
`clazar_dest.simulators.salesforce_soql_eval` adds INVALID_FIELD, INVALID_TYPE and
INVALID_QUERY_FILTER_OPERATOR) and the position in the query. Stdlib only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from clazar_dest.simulators.salesforce_schema import parse_datetime

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
