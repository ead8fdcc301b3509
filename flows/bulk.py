"""Many rows in one short statement, for the engine's hot paths (planning, attempts, outcomes).

Django's ``bulk_create`` and a statement per row both cost the worker more than the database: the ORM
compiles each row's SQL, and psycopg's client-side binding scans and quotes a query that grows with the
rows. On PostgreSQL the rows travel instead as one JSON document (encoded by the json module's C
encoder) read by ``json_populate_recordset``, which types each value by its column: the statement is
the same whatever the number of rows and has one parameter.

- ``insert_many(model, objs)``: ``INSERT ... SELECT ... FROM json_populate_recordset(...) RETURNING id``
  on PostgreSQL (each object gets its id, in order, as ``bulk_create`` does); ``bulk_create`` elsewhere.
- ``insert_rows(model, rows)``: the same from plain dicts, with no model object made per row.
- ``set_many(model, rows)``: for each (pk, {field: value}), ``UPDATE ... FROM json_populate_recordset``
  on PostgreSQL, an ``executemany`` elsewhere; rows with the same fields share a statement.

Values are prepared by the model fields as the ORM does (defaults, ``auto_now``). Names in the SQL come
from the models' own meta, quoted; every value is in the parameter.
"""

from __future__ import annotations

import functools
import json
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from typing import Any
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import BinaryField, Field, JSONField, Model
from django.utils import timezone


def insert_many(model: type[Model], objs: Sequence[Model]) -> Sequence[Model]:
    """Insert ``objs`` (unsaved) in one statement; each gets its primary key."""
    if not objs:
        return objs
    if connection.vendor != "postgresql":
        if len(objs) == 1 or not connection.features.can_return_rows_from_bulk_insert:
            for obj in objs:
                obj.save(force_insert=True)
        else:
            model.objects.bulk_create(objs)
        return objs
    db = connections[DEFAULT_DB_ALIAS]
    sql, fields = _insert_sql(model)
    plan = _insert_plan(model)
    document = [{column: convert(read(obj)) for column, read, convert in plan} for obj in objs]
    with db.cursor() as cursor:
        cursor.execute(sql, [_dumps(document, fields)])
        keys = [row[0] for row in cursor.fetchall()]
    for obj, key in zip(objs, keys, strict=True):
        obj.pk = key
        obj._state.adding = False
        obj._state.db = db.alias
    return objs


@functools.cache
def _insert_sql(model: type[Model]) -> tuple[str, list[Field]]:
    """The INSERT of ``insert_many`` and ``insert_rows`` (every column but the key), and its fields."""
    meta, quote = model._meta, connection.ops.quote_name
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    table, names = quote(meta.db_table), ", ".join(quote(f.column) for f in fields)
    sql = (
        f"INSERT INTO {table} ({names}) SELECT {names} "  # noqa: S608
        f"FROM json_populate_recordset(NULL::{table}, %s::json) RETURNING {quote(meta.pk.column)}"
    )
    return sql, fields


def insert_rows(model: type[Model], rows: Sequence[dict[str, Any]]) -> list[Any]:
    """Insert rows given as {field attname: value} (the same fields in every row) in one statement, the
    fields left out taking the values a new object would (defaults, ``auto_now``); returns their primary
    keys, in order. For hot paths where making a model object per row costs more than the insert itself
    (planning)."""
    if not rows:
        return []
    if connection.vendor != "postgresql":
        return [obj.pk for obj in insert_many(model, [model(**row) for row in rows])]
    sql, fields = _insert_sql(model)
    now = timezone.now()
    given = [(f.column, f.attname, _converter(f)) for f in fields if f.attname in rows[0]]
    left = [(f.column, *_fill(f, now)) for f in fields if f.attname not in rows[0]]
    constants = {column: convert(value) for column, value, convert, per_row in left if not per_row}
    made = [(column, value, convert) for column, value, convert, per_row in left if per_row]
    document = [
        {
            **constants,
            **{column: convert(row[name]) for column, name, convert in given},
            **{column: convert(make()) for column, make, convert in made},
        }
        for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, [_dumps(document, fields)])
        return [row[0] for row in cursor.fetchall()]


def _fill(field: Field, now: datetime) -> tuple[Any, Callable[[Any], Any], bool]:
    """What a field left out of ``insert_rows``'s rows holds: (value or how to make it, how it goes in the
    document, whether it is made per row)."""
    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        return now, _converter(field), False
    if field.has_default() and callable(field.default):
        return field.default, _converter(field), True
    return field.get_default(), _converter(field), False


def set_many(model: type[Model], rows: Iterable[tuple[Any, dict[str, Any]]]) -> None:
    """``UPDATE model SET <fields> WHERE pk = ...`` for each (pk, {field name: value})."""
    groups: dict[tuple[str, ...], list[tuple[Any, dict[str, Any]]]] = defaultdict(list)
    for pk, values in rows:
        groups[tuple(values)].append((pk, values))
    db = connections[DEFAULT_DB_ALIAS]
    postgresql = db.vendor == "postgresql"
    with db.cursor() as cursor:
        for names, members in groups.items():
            sql, fields, converters = _update_sql(model, names, postgresql)
            if postgresql:
                key = model._meta.pk.column
                document = [
                    {key: pk, **{column: convert(values[name]) for column, name, convert in converters}}
                    for pk, values in members
                ]
                cursor.execute(sql, [_dumps(document, fields)])
            else:
                cursor.executemany(
                    sql,
                    [
                        [f.get_db_prep_save(values[f.name], db) for f in fields] + [pk]
                        for pk, values in members
                    ],
                )


@functools.cache
def _update_sql(
    model: type[Model], names: tuple[str, ...], postgresql: bool
) -> tuple[str, list[Field], list[tuple[str, str, Callable[[Any], Any]]]]:
    """``set_many``'s UPDATE of the fields ``names``, the fields, and (PostgreSQL) how each value goes in
    the JSON document: (column, field name, converter)."""
    meta, quote = model._meta, connection.ops.quote_name
    table, key = quote(meta.db_table), quote(meta.pk.column)
    fields = [meta.get_field(name) for name in names]
    if not postgresql:
        assignments = ", ".join(f"{quote(f.column)} = %s" for f in fields)
        return f"UPDATE {table} SET {assignments} WHERE {key} = %s", fields, []  # noqa: S608
    assignments = ", ".join(f"{quote(f.column)} = v.{quote(f.column)}" for f in fields)
    sql = (
        f"UPDATE {table} SET {assignments} "  # noqa: S608
        f"FROM json_populate_recordset(NULL::{table}, %s::json) AS v WHERE {table}.{key} = v.{key}"
    )
    return sql, fields, [(f.column, f.name, _converter(f)) for f in fields]


@functools.cache
def _insert_plan(model: type[Model]) -> list[tuple[str, Callable[[Model], Any], Callable[[Any], Any]]]:
    """Per column of ``model`` (no primary key): its name, how to read an object's value as ``save``
    would (``pre_save``, which fills ``auto_now`` fields, only where a field overrides it) and how to
    put the value in the JSON document."""
    plan = []
    for field in model._meta.concrete_fields:
        if field.primary_key:
            continue
        if type(field).pre_save is Field.pre_save:
            read = operator.attrgetter(field.attname)
        else:
            read = functools.partial(_pre_save, field)
        plan.append((field.column, read, _converter(field)))
    return plan


def _pre_save(field: Field, obj: Model) -> Any:
    return field.pre_save(obj, True)


@functools.cache
def _converter(field: Field) -> Callable[[Any], Any]:
    """How a value of ``field`` goes into the JSON document ``json_populate_recordset`` reads into
    the field's column (None stays null)."""
    if isinstance(field, JSONField):
        return _same  # a JSON column takes the value as JSON
    if isinstance(field, BinaryField):
        return _hex
    prep = field.get_prep_value
    # The Python type the field's own preparation returns unchanged: such a value goes in as it is (most
    # values of the hot paths: strings, counts, flags), skipping the field's checks that could not change it.
    same = _NATURAL.get(field.get_internal_type())

    def convert(value: Any) -> Any:
        if value is None:
            return None
        if type(value) is same or (same is str and isinstance(value, str)):  # str: choices too
            return value
        if type(value) is datetime and value.tzinfo is not None:
            return value.isoformat()  # what prep (an aware datetime is kept) and the branch below give
        value = prep(value)
        if isinstance(value, datetime | date):
            return value.isoformat()
        if isinstance(value, UUID):
            return str(value)
        return value

    return convert


_NATURAL: dict[str, type] = {
    "CharField": str,
    "TextField": str,
    "SlugField": str,
    "EmailField": str,
    "URLField": str,
    "IntegerField": int,
    "BigIntegerField": int,
    "SmallIntegerField": int,
    "PositiveIntegerField": int,
    "PositiveBigIntegerField": int,
    "PositiveSmallIntegerField": int,
    "BooleanField": bool,
    "AutoField": int,
    "BigAutoField": int,
    "ForeignKey": int,  # to an integer key (a value of another type goes through the field)
}


def _same(value: Any) -> Any:
    return value


def _hex(value: Any) -> str | None:
    return None if value is None else "\\x" + bytes(value).hex()


def _dumps(document: list[dict[str, Any]], fields: list[Field]) -> str:
    encoder = next((f.encoder for f in fields if isinstance(f, JSONField) and f.encoder), None)
    return json.dumps(document, cls=encoder, separators=(",", ":"))
