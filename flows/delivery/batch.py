"""Group commit for a deliver run: the database writes around each send, batched across sends.

Every send writes twice: the attempt row before the socket opens, and the outcome after the answer. With
a pool of threads each doing that alone, the worker spends most of its time building and sending small
statements. ``GroupCommit`` lets the threads hand their write in and wait: the thread that finds no batch
being written writes every write waiting at that moment in one go (one INSERT of all the attempts; one
transaction for all the outcomes), then hands the turn to the first thread that came in meanwhile. A
thread returns only once its own write is committed, so "the attempt is committed before the socket
opens" holds for each send exactly as before. With one thread a batch is one write: the same path.

A deliver run's sends are coroutines on one event loop (``flows.delivery.engine.EventLoop``): they hand
their writes in with ``asubmit`` and the writer thread hands the results of a batch back to the loop in one
call. The batches themselves are written with ``flows.bulk`` (one short statement for many rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from django.db import connections

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot:
    __slots__ = ("error", "future", "item", "lead", "ready", "result")

    def __init__(self, item: Any, future: asyncio.Future | None = None) -> None:
        self.item = item
        self.result: Any = None
        self.error: BaseException | None = None
        self.lead = False
        self.ready = threading.Event()
        self.future = future  # a coroutine waits on this instead of the event (``asubmit``)


def _settle(slots: list[_Slot]) -> None:
    """On the coroutines' event loop: hand each its result."""
    for slot in slots:
        future = slot.future
        if future is None or future.done():  # cancelled: the run is shutting down
            continue
        if slot.error is not None:
            future.set_exception(slot.error)
        else:
            future.set_result(slot.result)


class GroupCommit(Generic[Item, Result]):
    """Hand in one write and wait for it; ``write_many`` gets every write waiting and returns one result
    per write, in order. ``write_many`` must write all or nothing (one statement or one transaction): when
    a batch fails, each thread writes its own write again alone (``write_one``, by default a batch of
    one), so one thread's trouble fails only its own write, as without batching.

    With ``writer=True`` one thread of its own writes every batch (start it lazily, stop it with
    ``close``): the sending threads then need no database connection of their own, so a pool of many
    threads holds one connection per writer, not one per thread. Without, the thread that finds no batch being
    written writes one, in its own connection (and transaction: what tests inside a transaction need).

    ``linger`` (writer only): once a write comes in, the writer waits up to that many seconds for more
    (or for ``fill`` writes) before it writes the batch: fewer, larger batches for writes nobody waits on
    to send (outcomes, response records), never for the attempts a request waits on."""

    def __init__(
        self,
        write_many: Callable[[list[Item]], Sequence[Result]],
        *,
        writer: bool = False,
        write_one: Callable[[Item], Result] | None = None,
        linger: float = 0.0,
        fill: int = 64,
    ) -> None:
        self._write_many = write_many
        self._linger = linger
        self._fill = fill
        self._write_one = write_one or (lambda item: write_many([item])[0])
        self._cond = threading.Condition()
        self._waiting: list[_Slot] = []
        self._busy = False
        self._writer = writer
        self._thread: threading.Thread | None = None
        self._closing = False
        self.batches = 0  # how many batches were written (for the bench and tests)

    def submit(self, item: Item) -> Result:
        if self._closing:  # after close (nothing should come then): written here, alone
            return self._write_one(item)
        slot = _Slot(item)
        with self._cond:
            self._waiting.append(slot)
            if self._writer:
                self._wake_writer()
            else:
                slot.lead = not self._busy
                self._busy = True
        if not slot.lead:
            slot.ready.wait()
        if slot.lead:  # this thread writes the batch (its own write included)
            self._write_waiting()
        if slot.error is not None:
            raise slot.error
        return slot.result

    async def asubmit(self, item: Item) -> Result:
        """``submit`` for a coroutine on an event loop (``writer=True`` only): it waits without holding a
        thread, and the writer thread hands the results of a batch to the loop in one call."""
        if not self._writer:
            raise RuntimeError("asubmit needs a GroupCommit with a writer thread")
        future = asyncio.get_running_loop().create_future()
        with self._cond:
            if self._closing:
                raise RuntimeError("this GroupCommit is closed")
            self._waiting.append(_Slot(item, future))
            self._wake_writer()
        return await future

    def _wake_writer(self) -> None:
        """(holding the condition)"""
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_forever, name="group-commit", daemon=True)
            self._thread.start()
        self._cond.notify()

    def close(self) -> None:
        """Stop the writer thread once every write handed in is written."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _write_forever(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._waiting or self._closing)
                    if not self._waiting:
                        return
                    if self._linger:
                        self._cond.wait_for(
                            lambda: self._closing or len(self._waiting) >= self._fill, self._linger
                        )
                self._write_waiting()
        finally:
            connections.close_all()

    def _write_waiting(self) -> None:
        with self._cond:
            batch, self._waiting = self._waiting, []
        try:
            results = self._write_many([slot.item for slot in batch])
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        except Exception as exc:  # nothing of the batch was written
            connections["default"].close_if_unusable_or_obsolete()  # a broken connection: reconnect
            if len(batch) == 1:
                batch[0].error = exc
            else:
                log.warning("a batch of %s writes failed (%s); each is written again alone", len(batch), exc)
                self._write_alone(batch)
        finally:
            self.batches += 1
            with self._cond:
                if not self._writer and self._waiting:  # the first thread that came in meanwhile leads
                    self._waiting[0].lead = True
                    self._waiting[0].ready.set()
                elif not self._writer:
                    self._busy = False
            waiting: dict[asyncio.AbstractEventLoop, list[_Slot]] = {}
            for slot in batch:
                slot.lead = False
                slot.ready.set()
                if slot.future is not None:
                    waiting.setdefault(slot.future.get_loop(), []).append(slot)
            for loop, slots in waiting.items():
                with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
                    loop.call_soon_threadsafe(_settle, slots)

    def _write_alone(self, batch: list[_Slot]) -> None:
        """After a batch failed: each write alone, so one write's trouble fails only that write."""
        for slot in batch:
            try:
                slot.result = self._write_one(slot.item)
            except Exception as exc:
                slot.error = exc
                connections["default"].close_if_unusable_or_obsolete()
