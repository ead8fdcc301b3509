"""Group commit for the deliver threads: the database writes around each send, batched across threads.

Every send writes twice: the attempt row before the socket opens, and the outcome after the answer. With
a pool of threads each doing that alone, the worker spends most of its time building and sending small
statements. ``GroupCommit`` lets the threads hand their write in and wait: the thread that finds no batch
being written writes every write waiting at that moment in one go (one INSERT of all the attempts; one
transaction for all the outcomes), then hands the turn to the first thread that came in meanwhile. A
thread returns only once its own write is committed, so "the attempt is committed before the socket
opens" holds for each send exactly as before. With one thread a batch is one write: the same path.

``set_many`` is the UPDATE the outcome batch uses: rows by primary key, one statement per set of
columns (``UPDATE ... FROM (VALUES ...)`` on PostgreSQL), with values prepared by the model fields as
the ORM would, but without compiling a query per row.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from django.db import connection
from django.db.models import Model

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot:
    __slots__ = ("error", "item", "lead", "ready", "result", "shared")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.result: Any = None
        self.error: BaseException | None = None
        self.lead = False
        self.shared = False  # written in a batch with other threads' writes
        self.ready = threading.Event()


class GroupCommit(Generic[Item, Result]):
    """Hand in one write and wait for it; ``write_many`` gets every write waiting and returns one result
    per write, in order. ``write_many`` must write all or nothing (one statement or one transaction): when
    a batch fails, each thread writes its own write again alone, so one thread's trouble (say its database
    connection) fails only its own write, as without batching."""

    def __init__(self, write_many: Callable[[list[Item]], Sequence[Result]]) -> None:
        self._write_many = write_many
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._busy = False
        self.batches = 0  # how many batches were written (for the bench and tests)

    def submit(self, item: Item) -> Result:
        slot = _Slot(item)
        with self._lock:
            self._waiting.append(slot)
            slot.lead = not self._busy
            self._busy = True
        if not slot.lead:
            slot.ready.wait()
        if slot.lead:  # this thread writes the batch (its own write included)
            self._write_waiting()
        if slot.error is not None and slot.shared:
            return self._write_many([item])[0]
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _write_waiting(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
        try:
            results = self._write_many([slot.item for slot in batch])
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        except Exception as exc:  # nothing of the batch was written
            for slot in batch:
                slot.error = exc
                slot.shared = len(batch) > 1
        finally:
            self.batches += 1
            with self._lock:
                if self._waiting:  # the first thread that came in meanwhile writes the next batch
                    self._waiting[0].lead = True
                    self._waiting[0].ready.set()
                else:
                    self._busy = False
            for slot in batch:
                slot.lead = False
                slot.ready.set()


def set_many(model: type[Model], rows: Iterable[tuple[Any, dict[str, Any]]]) -> None:
    """``UPDATE model SET <fields> WHERE pk = ...`` for each (pk, {field name: value}); rows with the same
    field names share one statement: ``UPDATE ... FROM (VALUES ...)`` on PostgreSQL (parsed and planned
    once for all of them), an ``executemany`` elsewhere. Values are prepared by their fields as the ORM
    does."""
    groups: dict[tuple[str, ...], list[tuple[Any, dict[str, Any]]]] = defaultdict(list)
    for pk, values in rows:
        groups[tuple(values)].append((pk, values))
    meta, quote = model._meta, connection.ops.quote_name
    table, key = quote(meta.db_table), quote(meta.pk.column)
    with connection.cursor() as cursor:
        for names, members in groups.items():
            fields = [meta.get_field(name) for name in names]
            params = [
                [pk] + [field.get_db_prep_save(values[field.name], connection) for field in fields]
                for pk, values in members
            ]
            # Names from the model's own meta, quoted; every value is a parameter.
            if connection.vendor == "postgresql":
                types = [meta.pk.cast_db_type(connection)] + [f.cast_db_type(connection) for f in fields]
                row = "(" + ", ".join(f"%s::{kind}" for kind in types) + ")"
                aliases = ", ".join(f"c{i}" for i in range(len(fields)))
                assignments = ", ".join(f"{quote(f.column)} = v.c{i}" for i, f in enumerate(fields))
                sql = (
                    f"UPDATE {table} SET {assignments} FROM (VALUES {', '.join([row] * len(params))}) "  # noqa: S608
                    f"AS v(k, {aliases}) WHERE {table}.{key} = v.k"
                )
                cursor.execute(sql, [value for values in params for value in values])
            else:
                assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
                sql = f"UPDATE {table} SET {assignments} WHERE {key} = %s"  # noqa: S608
                cursor.executemany(sql, [values[1:] + values[:1] for values in params])
