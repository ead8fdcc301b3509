"""Reading JSON records: an array of objects, NDJSON, or objects one after another, streamed.

The array and the object stream are read with the standard library's C decoder (``raw_decode``) over a
sliding buffer, so a file is never held whole. A syntax error there stops the file (where the next record
starts is unknowable); a record that parses but is not an object, holds NaN/Infinity, is nested too deep
or is too long is rejected alone. In NDJSON every line stands alone, so any bad line is rejected alone.
Webhook bodies go through ``parse_body`` with the same rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, TextIO

from flows.ingest.errors import IngestError, Problem
from flows.ingest.sniff import JSON_ARRAY, NDJSON
from flows.ingest.values import JsonNumbers, record_problem

CHUNK = 64 * 1024
_SPACE = re.compile(r"[ \t\r\n]*")

Item = tuple[int, int, Any]  # (row, line, record dict or Problem)


def _decoder(numbers: JsonNumbers) -> json.JSONDecoder:
    return json.JSONDecoder(parse_float=numbers.parse_float, parse_constant=numbers.parse_constant)


def records(text: TextIO, fmt: str, *, max_record: int) -> Iterator[Item]:
    """Yield (row, line, record or Problem) for every record; raise IngestError when the file breaks."""
    if fmt == NDJSON:
        return _lines(text, max_record)
    return _Stream(text, max_record).values(array=fmt == JSON_ARRAY)


def _lines(text: TextIO, max_record: int) -> Iterator[Item]:
    numbers = JsonNumbers()
    decode = _decoder(numbers).decode
    row = line_no = 0
    while True:
        line = text.readline(max_record + 1)
        if not line:
            return
        line_no += 1
        if len(line) > max_record and not line.endswith("\n"):
            while (more := text.readline(CHUNK)) and not more.endswith("\n"):
                pass
            row += 1
            yield row, line_no, Problem(f"is longer than {max_record:,} characters", row, line_no)
            continue
        raw = line.strip()
        if not raw:
            continue
        if line_no == 1:
            raw = raw.lstrip("\ufeff")
        row += 1
        numbers.constant = False
        try:
            value = decode(raw)
        except json.JSONDecodeError as exc:
            yield row, line_no, Problem(_syntax(exc, with_column=True), row, line_no)
            continue
        except RecursionError:
            yield row, line_no, Problem("is nested too deeply to read", row, line_no)
            continue
        except ValueError as exc:
            yield row, line_no, Problem(f"cannot be read: {exc}", row, line_no)
            continue
        problem = record_problem(value, raw, numbers)
        yield row, line_no, Problem(problem, row, line_no) if problem else value


def _syntax(exc: json.JSONDecodeError, *, with_column: bool = False) -> str:
    message = exc.msg
    if message == "Extra data":
        message = "extra text after the end of the JSON value (trailing garbage)"
    where = f" at character {exc.colno:,}" if with_column else ""
    return f"is not valid JSON: {message}{where}"


class _Stream:
    """A sliding window over the text with the line number of every position."""

    def __init__(self, text: TextIO, max_record: int) -> None:
        self.text = text
        self.max_record = max_record
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.line = 1  # line number at self._counted
        self._counted = 0
        self.numbers = JsonNumbers()
        self.raw_decode = _decoder(self.numbers).raw_decode

    def fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.text.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        if self.pos:
            self.line_at(self.pos)
            self.buf = self.buf[self.pos :]
            self._counted -= self.pos
            self.pos = 0
        self.buf += chunk
        return True

    def line_at(self, index: int) -> int:
        if index > self._counted:
            self.line += self.buf.count("\n", self._counted, index)
            self._counted = index
        return self.line - self.buf.count("\n", index, self._counted)

    def peek(self) -> str:
        """The next non-blank character ('' at the end), with self.pos on it."""
        while True:
            self.pos = _SPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def decode(self, row: int) -> tuple[Any, int]:
        """Decode the value at self.pos; return it (or a Problem) and its line. Syntax errors raise."""
        while True:
            self.numbers.constant = False
            try:
                value, end = self.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if not self.eof and len(self.buf) - self.pos <= self.max_record and self.fill():
                    continue  # the record may run on into the next chunk
                line = self.line_at(min(exc.pos, len(self.buf)))
                if not self.eof and (exc.pos >= len(self.buf) - 16 or exc.msg.startswith("Unterminated")):
                    message = f"is longer than {self.max_record:,} characters (or its JSON never ends)"
                else:
                    message = _syntax(exc)
                raise IngestError(f"{message}; nothing after it can be read", row=row, line=line) from None
            except RecursionError:
                raise IngestError(
                    "is nested too deeply to read", row=row, line=self.line_at(self.pos)
                ) from None
            except ValueError as exc:
                raise IngestError(f"cannot be read: {exc}", row=row, line=self.line_at(self.pos)) from None
            if end == len(self.buf) and not self.eof and self.fill():
                continue  # a number may go on in the next chunk
            line = self.line_at(self.pos)
            raw = self.buf[self.pos : end]
            self.pos = end
            if len(raw) > self.max_record:
                return Problem(f"is longer than {self.max_record:,} characters", row, line), line
            problem = record_problem(value, raw, self.numbers)
            return (Problem(problem, row, line) if problem else value), line

    def values(self, *, array: bool) -> Iterator[Item]:
        row = 0
        if array:
            if self.peek() != "[":
                raise IngestError("The file does not start with [ although it looked like a JSON array.")
            self.pos += 1
            if self.peek() == "]":
                self.pos += 1
                return self._end(row)
        while True:
            ch = self.peek()
            if not ch:
                if array:
                    raise IngestError(
                        "The JSON array is not closed: the file ends before its final ].",
                        line=self.line_at(self.pos),
                    )
                return
            if array and ch == "]":
                raise IngestError(
                    f"a comma after record {row:,} is followed by ]: remove the trailing comma",
                    line=self.line_at(self.pos),
                )
            row += 1
            value, line = self.decode(row)
            yield row, line, value
            if not array:
                continue
            ch = self.peek()
            if ch == ",":
                self.pos += 1
            elif ch == "]":
                self.pos += 1
                yield from self._end(row)
                return
            elif not ch:
                raise IngestError(
                    "The JSON array is not closed: the file ends before its final ].",
                    line=self.line_at(self.pos),
                )
            else:
                raise IngestError(
                    f"expected , or ] after record {row:,} but found “{ch}”",
                    line=self.line_at(self.pos),
                )

    def _end(self, rows: int) -> Iterator[Item]:
        if self.peek():
            raise IngestError(
                "there is more text after the JSON array's closing ] (trailing garbage): a file holds "
                "one array",
                line=self.line_at(self.pos),
            )
        return iter(())


def parse_body(body: bytes, *, max_records: int) -> list[dict[str, Any]]:
    """A webhook body: one object, an array of objects, or NDJSON. Every record must be good."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"The body is not UTF-8 text (bad byte at offset {exc.start:,}).") from None
    text = text.strip()
    if not text:
        raise IngestError("The body is empty: send a JSON object, an array of objects or NDJSON.")
    if text[0] not in "[{":
        raise IngestError(
            "The body must be a JSON object, an array of objects, or NDJSON (one object per line)."
        )
    numbers = JsonNumbers()
    decode = _decoder(numbers).decode
    try:
        value = decode(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text[0] == "{":
            return _body_lines(text, decode, numbers, max_records)
        raise IngestError(f"The body {_syntax(exc, with_column=True)} (line {exc.lineno}).") from None
    except RecursionError:
        raise IngestError("The body is nested too deeply to read.") from None
    except ValueError as exc:
        raise IngestError(f"The body cannot be read: {exc}.") from None
    if numbers.constant:
        raise IngestError("The body holds NaN or Infinity, which JSON does not allow: use null or a number.")
    items = value if isinstance(value, list) else [value]
    _count(len(items), max_records)
    clean = JsonNumbers()
    for index, item in enumerate(items, start=1):
        problem = record_problem(item, text, clean)
        if problem:
            where = f"Record {index}" if isinstance(value, list) else "The body"
            raise IngestError(f"{where} {problem}.")
    return items


def _count(count: int, max_records: int) -> None:
    if not count:
        raise IngestError("The body holds no records.")
    if count > max_records:
        raise IngestError(f"The body holds more than {max_records:,} records, the limit per request.")


def _body_lines(text: str, decode: Any, numbers: JsonNumbers, max_records: int) -> list[dict[str, Any]]:
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        raw = line.strip()
        if not raw:
            continue
        numbers.constant = False
        try:
            value = decode(raw)
        except json.JSONDecodeError as exc:
            raise IngestError(f"Line {line_no} {_syntax(exc, with_column=True)}.") from None
        except RecursionError:
            raise IngestError(f"Line {line_no} is nested too deeply to read.") from None
        except ValueError as exc:
            raise IngestError(f"Line {line_no} cannot be read: {exc}.") from None
        problem = record_problem(value, raw, numbers)
        if problem:
            raise IngestError(f"Line {line_no} {problem}.")
        records.append(value)
        if len(records) > max_records:
            break
    _count(len(records), max_records)
    return records
