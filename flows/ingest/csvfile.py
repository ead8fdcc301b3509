"""Reading CSV rows in batches, with every problem named by row, line and column.

Row-level problems (ragged rows, NUL bytes, a value over the length limit, text after a closing quote)
reject that row and reading goes on. A quote that never closes breaks everything after it, so it stops
the file with an ``IngestError``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import TextIO

from flows.ingest.errors import IngestError, Problem
from flows.ingest.sniff import Sniffed


class _Lines:
    """The text's lines for csv.reader, keeping those of the record being read (for error messages)."""

    def __init__(self, text: TextIO) -> None:
        self.text = text
        self.current: list[str] = []
        self.nul = False

    def __iter__(self) -> Iterator[str]:
        current = self.current
        for line in self.text:
            current.append(line)
            if "\x00" in line:
                self.nul = True
            yield line


Batch = tuple[list[list[str]], list[Problem]]


def batches(text: TextIO, sniffed: Sniffed, *, max_value: int, size: int = 5000) -> Iterator[Batch]:
    """Yield (good rows, problems) in batches of about ``size`` good rows.

    Rows are numbered from 1 after the header, in file order, good or not; blank lines and rows whose
    cells are all empty (spreadsheets export them at the end) are skipped. The hot loop is a plain
    ``for`` over csv.reader; anything unusual leaves it for ``_odd``.
    """
    csv.field_size_limit(max_value)
    lines = _Lines(text)
    reader = csv.reader(
        iter(lines), delimiter=sniffed.delimiter, quotechar=sniffed.quotechar, doublequote=True, strict=True
    )
    width = len(sniffed.columns)
    rows: list[list[str]] = []
    problems: list[Problem] = []
    current = lines.current
    state = _State()
    while True:
        try:
            for row in reader:
                if len(row) == width and not lines.nul and any(row) and state.header_seen:
                    rows.append(row)
                    current.clear()
                    if len(rows) >= size:
                        state.number += len(rows)
                        yield rows, problems
                        rows, problems = [], []
                    continue
                state.number += len(rows)
                good = bool(rows)
                problem = _odd(row, lines, reader.line_num, state, sniffed)
                if problem is not None:
                    problems.append(problem)
                if good:
                    yield rows, problems
                    rows, problems = [], []
        except csv.Error as exc:
            if not state.header_seen:
                raise IngestError(f"The header row cannot be read: {exc}.", line=reader.line_num) from None
            state.number += len(rows) + 1
            start = reader.line_num - len(current) + 1
            problems.append(_diagnose(str(exc), current, start, state.number, sniffed, max_value))
            current.clear()
            lines.nul = False
            if rows:
                yield rows, problems
                rows, problems = [], []
            continue
        break
    state.number += len(rows)
    if rows or problems:
        yield rows, problems


class _State:
    __slots__ = ("header_seen", "number")

    def __init__(self) -> None:
        self.header_seen = False
        self.number = 0  # rows numbered so far, up to the last batch handed out


def _odd(row: list[str], lines: _Lines, line_num: int, state: _State, sniffed: Sniffed) -> Problem | None:
    """A row off the hot path: header, blank, NUL or ragged. Numbers it when it is a data row."""
    start = line_num - len(lines.current) + 1
    nul, lines.nul = lines.nul, False
    lines.current.clear()
    if nul and state.header_seen:
        state.number += 1
        return Problem("has a NUL byte (\\0), which text files do not have", state.number, start)
    if not any(row):
        return None
    if not state.header_seen:
        state.header_seen = True
        return None
    state.number += 1
    if len(row) != len(sniffed.columns):
        return _ragged(row, sniffed.columns, state.number, start)
    return None  # pragma: no cover - the hot loop takes every other row


def _ragged(row: list[str], columns: tuple[str, ...], number: int, line: int) -> Problem:
    width = len(columns)
    if len(row) > width:
        extra = [v for v in row[width:] if v]
        shown = f" (“{extra[0][:30]}”…)" if extra else ""
        return Problem(
            f"has {len(row)} values but the header has {width} columns{shown}: is a delimiter or quote "
            "missing?",
            number,
            line,
        )
    missing = ", ".join(columns[len(row) :][:5])
    return Problem(
        f"has {len(row)} value{'s' if len(row) != 1 else ''} but the header has {width} columns "
        f"(missing: {missing})",
        number,
        line,
    )


def _diagnose(
    message: str, lines: list[str], start: int, number: int, sniffed: Sniffed, max_value: int
) -> Problem:
    """Turn a csv.Error into a Problem naming the column; raise for a quote that never closes."""
    walk = _walk("".join(lines[:4]), sniffed.delimiter, sniffed.quotechar, max_value)
    columns = sniffed.columns

    def name(index: int) -> str:
        return columns[index] if index < len(columns) else f"{index + 1} (beyond the header)"

    if message.startswith("unexpected end of data") or (message.startswith("field larger") and walk.open):
        raise IngestError(
            "unterminated quote: the quoted value that starts here never ends (or runs past "
            f"{max_value:,} characters), so nothing after it can be read",
            row=number,
            line=start,
            column=name(walk.field),
        )
    if message.startswith("field larger"):
        where = walk.long if walk.long is not None else walk.field
        return Problem(f"a value is longer than {max_value:,} characters", number, start, name(where))
    if walk.after_quote is not None:
        return Problem(
            'text after a closing quote: a quote inside a quoted value must be doubled ("")',
            number,
            start,
            name(walk.after_quote),
        )
    return Problem(f"cannot be read: {message}", number, start, name(walk.field))


class _Walk:
    __slots__ = ("after_quote", "field", "long", "open")

    def __init__(self) -> None:
        self.field = 0  # the field reached
        self.open = False  # a quoted value still open at the end
        self.after_quote: int | None = None  # the first field with text after its closing quote
        self.long: int | None = None  # the first field longer than the limit


def _walk(text: str, delimiter: str, quote: str, limit: int) -> _Walk:
    """Walk the raw text of a broken record (error path only) to find where it broke."""
    walk = _Walk()
    at_start, closed, length = True, False, 0
    i = 0
    while i < len(text):
        ch = text[i]
        length += 1
        if walk.open:
            if ch == quote:
                if i + 1 < len(text) and text[i + 1] == quote:
                    i += 1
                else:
                    walk.open, closed = False, True
        elif ch == delimiter:
            walk.field += 1
            at_start, closed, length = True, False, 0
        elif ch in "\r\n":
            break
        elif ch == quote and at_start:
            walk.open, at_start = True, False
        else:
            if closed and walk.after_quote is None:
                walk.after_quote = walk.field
            at_start = False
        if length > limit and walk.long is None:
            walk.long = walk.field
        i += 1
    return walk
