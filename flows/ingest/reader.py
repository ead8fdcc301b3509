"""The two passes over an uploaded file, as plain functions over a binary file (no ORM).

1. ``check`` reads everything once: it counts rows, collects the problems (the first ``MAX_PROBLEMS``
   and the total), decides each CSV column's type and builds the file's schema. Nothing is stored, so
   an all-or-nothing import can refuse a bad file before writing a row.
2. ``encode`` reads it again and yields the good records as JSON text in batches, typed with the
   columns decided by ``check``, for the storing pass.

Both passes see the same rows and the same problems, because they run the same readers.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, BinaryIO, TextIO

from flows.ingest import csvfile, jsonfile
from flows.ingest.errors import IngestError, Problem
from flows.ingest.schema import merge
from flows.ingest.sniff import CSV, HEAD_BYTES, Sniffed, detect_encoding, sniff
from flows.ingest.values import Column, dumps, encoder

MAX_PROBLEMS = 100
BATCH = 5000

Opener = Callable[[], BinaryIO]
Progress = Callable[[int, int], None]  # (rows read so far, bytes read so far)


@dataclass(frozen=True)
class Limits:
    max_rows: int = 5_000_000
    max_record: int = 256 * 1024  # characters in one CSV value, JSON record or NDJSON line


@dataclass
class Check:
    sniffed: Sniffed
    text: bool = False
    rows: int = 0  # rows read, good and rejected
    good: int = 0
    problems: list[Problem] = field(default_factory=list)
    problem_total: int = 0
    schema: dict[str, Any] = field(default_factory=dict)
    fatal: Problem | None = None

    def reject(self, problems: list[Problem]) -> None:
        self.problem_total += len(problems)
        room = MAX_PROBLEMS - len(self.problems)
        if room > 0:
            self.problems.extend(problems[:room])


def head(open_binary: Opener, filename: str) -> Sniffed:
    with open_binary() as binary:
        data = binary.read(HEAD_BYTES + 1)
    return sniff(data[:HEAD_BYTES], filename, complete=len(data) <= HEAD_BYTES)


def check(
    open_binary: Opener,
    sniffed: Sniffed,
    limits: Limits,
    *,
    text: bool = False,
    progress: Progress | None = None,
) -> Check:
    """The checking pass. A file-level problem ends it with ``fatal`` set (never an exception)."""
    try:
        return _check(open_binary, sniffed, limits, text, progress)
    except _Undecodable as exc:
        if sniffed.encoding not in ("utf-8", "utf-8-sig"):
            return _broken(sniffed, text, exc.error)
        try:
            # The first megabyte was UTF-8 (often plain ASCII); the rest is not: look again where it broke.
            encoding = detect_encoding(exc.sample)
        except IngestError as again:
            return _broken(sniffed, text, again.problem)
        if encoding in ("utf-8", "utf-8-sig"):
            return _broken(sniffed, text, exc.error)
        try:
            return _check(open_binary, replace(sniffed, encoding=encoding), limits, text, progress)
        except _Undecodable as second:
            return _broken(sniffed, text, second.error)


def _broken(sniffed: Sniffed, text: bool, problem: Problem) -> Check:
    return Check(sniffed, text=text, fatal=problem)


class _Undecodable(Exception):
    def __init__(self, error: Problem, sample: bytes) -> None:
        self.error = error
        self.sample = sample


def _open_text(binary: BinaryIO, sniffed: Sniffed) -> TextIO:
    newline = "" if sniffed.format == CSV else None
    return io.TextIOWrapper(binary, encoding=sniffed.encoding, errors="strict", newline=newline)


def _check(
    open_binary: Opener, sniffed: Sniffed, limits: Limits, text_mode: bool, progress: Progress | None
) -> Check:
    result = Check(sniffed, text=text_mode)
    tick = _Ticker(progress)
    with open_binary() as binary:
        try:
            text = _open_text(binary, sniffed)
        except LookupError:
            return _broken(
                sniffed, text_mode, Problem(f"The file's encoding ({sniffed.encoding}) is unknown.")
            )
        try:
            if sniffed.format == CSV:
                _check_csv(result, text, binary, limits, tick)
            else:
                _check_json(result, text, binary, limits, tick)
            tick(result.rows, binary.tell(), force=True)
        except IngestError as exc:
            result.fatal = exc.problem
        except UnicodeDecodeError as exc:
            at = binary.tell()
            raise _Undecodable(
                Problem(
                    f"The file is not valid {sniffed.encoding} text around byte {at:,} (after row "
                    f"{result.rows:,}). Save it as UTF-8 and upload it again."
                ),
                bytes(exc.object),
            ) from None
        finally:
            text.detach()
    if result.fatal is None and result.rows == 0:
        result.fatal = Problem(
            "The file has a header row but no data rows."
            if sniffed.format == CSV
            else "The file holds no records."
        )
    return result


def _over_limit(result: Check, limits: Limits) -> None:
    if result.rows > limits.max_rows:
        raise IngestError(
            f"The file has more than {limits.max_rows:,} rows, the limit (UPLOAD_MAX_ROWS). Split it, or "
            "ask an administrator to raise the limit."
        )


def _check_csv(result: Check, text: TextIO, binary: BinaryIO, limits: Limits, tick: _Ticker) -> None:
    columns = [Column(name, text=result.text) for name in result.sniffed.columns]
    for rows, problems in csvfile.batches(text, result.sniffed, max_value=limits.max_record):
        result.rows += len(rows) + len(problems)
        _over_limit(result, limits)
        if problems:
            result.reject(problems)
        if rows:
            result.good += len(rows)
            for column, values in zip(columns, zip(*rows, strict=True), strict=True):
                column.feed(values)
        tick(result.rows, binary.tell())
    result.schema = {c.name: c.schema(text=result.text) for c in columns}


def _check_json(result: Check, text: TextIO, binary: BinaryIO, limits: Limits, tick: _Ticker) -> None:
    batch: list[dict[str, Any]] = []
    for _row, _line, item in jsonfile.records(text, result.sniffed.format, max_record=limits.max_record):
        result.rows += 1
        if isinstance(item, Problem):
            result.reject([item])
        else:
            batch.append(item)
        if len(batch) >= BATCH or result.rows % BATCH == 0:
            _over_limit(result, limits)
            result.schema = merge(result.schema, batch, seen=result.good)
            result.good += len(batch)
            batch = []
            tick(result.rows, binary.tell())
    _over_limit(result, limits)
    result.schema = merge(result.schema, batch, seen=result.good)
    result.good += len(batch)


def encode(open_binary: Opener, checked: Check, limits: Limits) -> Iterator[list[str]]:
    """The storing pass: the good records as JSON texts, batch by batch."""
    sniffed = checked.sniffed
    with open_binary() as binary:
        text = _open_text(binary, sniffed)
        try:
            if sniffed.format == CSV:
                yield from _encode_csv(text, checked, limits)
            else:
                yield from _encode_json(text, sniffed, limits)
        except UnicodeDecodeError:
            raise IngestError(
                f"The file stopped being valid {sniffed.encoding} text while storing."
            ) from None
        finally:
            text.detach()


def _encode_csv(text: TextIO, checked: Check, limits: Limits) -> Iterator[list[str]]:
    names = checked.sniffed.columns
    encoders = [encoder(checked.schema[name]["type"], text=checked.text) for name in names]
    keys = [encode_basestring(name).replace("{", "{{").replace("}", "}}") for name in names]
    layout = ("{{" + ",".join(f"{key}:{{}}" for key in keys) + "}}").format
    for rows, _problems in csvfile.batches(text, checked.sniffed, max_value=limits.max_record):
        if rows:
            cells = [enc(values) for enc, values in zip(encoders, zip(*rows, strict=True), strict=True)]
            yield list(map(layout, *cells))


def _encode_json(text: TextIO, sniffed: Sniffed, limits: Limits) -> Iterator[list[str]]:
    texts: list[str] = []
    for _row, _line, item in jsonfile.records(text, sniffed.format, max_record=limits.max_record):
        if isinstance(item, Problem):
            continue
        texts.append(dumps(item))
        if len(texts) >= BATCH:
            yield texts
            texts = []
    if texts:
        yield texts


class _Ticker:
    """Calls ``progress`` at most every half second."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.last = 0.0

    def __call__(self, rows: int, position: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is not None and (force or now - self.last >= 0.5):
            self.last = now
            self.progress(rows, position)
