"""The SOQL evaluator of the Salesforce simulator: it plans a parsed query into Python callables over the
store's tables, runs it and renders the records as the query endpoint answers them. The tokenizer, the
syntax tree and the grammar are in `clazar_dest.simulators.salesforce_soql_parser`.

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

from clazar_dest.simulators.salesforce_schema import (
    ID_PATTERN,
    NUMERIC,
    SCHEMA,
    STRINGY,
    Field,
    SObject,
    find_object,
    parse_datetime,
)
from clazar_dest.simulators.salesforce_soql_parser import (
    Compare,
    InList,
    Junction,
    Like,
    Literal,
    Not,
    OrderKey,
    Path,
    SoqlError,
    parse,
)

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
