"""Group commit for the deliver threads: the database writes around each send, batched across threads.

Every send writes twice: the attempt row before the socket opens, and the outcome after the answer. With
a pool of threads each doing that alone, the worker spends most of its time building and sending small
statements. ``GroupCommit`` lets the threads hand their write in and wait: the thread that finds no batch
being written writes every write waiting at that moment in one go (one INSERT of all the attempts; one
transaction for all the outcomes), then hands the turn to the first thread that came in meanwhile. A
thread returns only once its own write is committed, so "the attempt is committed before the socket
opens" holds for each send exactly as before. With one thread a batch is one write: the same path.

The batches themselves are written with ``flows.bulk`` (one short statement for many rows).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

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
