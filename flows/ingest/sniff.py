"""What a file is, from its first bytes: encoding, format and (for CSV) dialect and header.

The content decides; the file name only breaks a tie (a ``.json`` file that does not start with ``[`` or
``{`` is broken JSON, not CSV). Encodings: UTF-8 with or without a BOM, UTF-16/32 with a BOM, otherwise
charset-normalizer's best guess over the first megabyte (preferring Windows-1252 among equally good
single-byte candidates, the usual Excel export).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass, field

from charset_normalizer import from_bytes

from flows.ingest.errors import IngestError
from flows.ingest.values import is_number

HEAD_BYTES = 1 << 20
DIALECT_SAMPLE = 64 * 1024
DELIMITERS = ",;\t|"
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
JSON_SUFFIXES = (".json", ".ndjson", ".jsonl")

CSV, JSON_ARRAY, NDJSON, JSON_STREAM = "csv", "json", "ndjson", "json-stream"
FORMAT_LABELS = {
    CSV: "CSV",
    JSON_ARRAY: "JSON array",
    NDJSON: "NDJSON (one object per line)",
    JSON_STREAM: "JSON object(s)",
}

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_MAGIC = (
    (
        b"PK\x03\x04",
        "a ZIP archive (an Excel .xlsx workbook is one): export the sheet as CSV and upload that",
    ),
    (b"\xd0\xcf\x11\xe0", "an old Excel (.xls) or Office file: export the sheet as CSV and upload that"),
    (b"\x1f\x8b", "a gzip-compressed file: decompress it first"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"SQLite format 3\x00", "an SQLite database"),
)
_CONTROL = frozenset(chr(c) for c in range(32)) - {"\t", "\n", "\r", "\f"}


@dataclass(frozen=True)
class Sniffed:
    format: str
    encoding: str
    delimiter: str = ","
    quotechar: str = '"'
    columns: tuple[str, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        encoding = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8 with BOM"}.get(self.encoding, self.encoding)
        if self.format == CSV:
            return f"CSV, {DELIMITER_NAMES.get(self.delimiter, repr(self.delimiter))}-separated, {encoding}"
        return f"{FORMAT_LABELS[self.format]}, {encoding}"

    def as_dict(self) -> dict[str, object]:
        return {
            "format": self.format,
            "encoding": self.encoding,
            "delimiter": self.delimiter,
            "quotechar": self.quotechar,
            "columns": list(self.columns),
        }


def sniff(head: bytes, filename: str = "", *, complete: bool = False) -> Sniffed:
    """Classify a file from its first bytes (``complete``: ``head`` is the whole file)."""
    if not head.strip():
        raise IngestError("The file is empty." if not head else "The file holds only blank space.")
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise IngestError(f"This is {what}, not a CSV, JSON or NDJSON file.")
    encoding = detect_encoding(head, complete=complete)
    text = _decode_head(head, encoding, complete=complete)
    _refuse_binary(text)
    start = text.lstrip("\ufeff \t\r\n")
    if not start:
        raise IngestError("The file holds only blank space.")
    if start[0] == "[":
        return Sniffed(JSON_ARRAY, encoding)
    if start[0] == "{":
        return Sniffed(_object_format(start), encoding)
    if complete:
        _refuse_scalar(start)
    if filename.lower().endswith(JSON_SUFFIXES):
        raise IngestError(
            "The file is named like JSON but does not start with [ (an array of objects) or { (an object "
            "per line): it is not a JSON file we can read."
        )
    return _sniff_csv(text, encoding, complete=complete)


def detect_encoding(head: bytes, *, complete: bool = False) -> str:
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError:
        pass
    else:
        return "utf-8"
    if b"\x00" in head:
        guess = from_bytes(head[:HEAD_BYTES], cp_isolation=["utf_16", "utf_32"]).best()
        if guess is None:
            at = head.index(b"\x00")
            raise IngestError(
                f"The file looks binary: it has NUL bytes (the first at byte {at:,}). Upload a CSV, JSON "
                "or NDJSON text file."
            )
        return guess.encoding
    matches = from_bytes(head[:HEAD_BYTES])
    best = matches.best()
    if best is None:
        raise IngestError(
            "The file is not text in any encoding we recognise (it looks binary). Save it as UTF-8 text."
        )
    for match in matches:
        if match.chaos <= best.chaos + 0.1 and "cp1252" in match.could_be_from_charset:
            return "cp1252"
    return best.encoding


def _decode_head(head: bytes, encoding: str, *, complete: bool) -> str:
    try:
        return codecs.getincrementaldecoder(encoding)().decode(head, final=complete)
    except (UnicodeDecodeError, LookupError):
        raise IngestError(
            f"The file is not valid {encoding} text near its start. Save it as UTF-8 and upload it again."
        ) from None


def _refuse_binary(text: str) -> None:
    sample = text[:8192]
    if "\x00" in sample:
        raise IngestError("The file looks binary: it has NUL characters. Upload a CSV, JSON or NDJSON file.")
    controls = sum(1 for ch in sample if ch in _CONTROL)
    if controls > max(2, len(sample) // 100):
        raise IngestError(
            f"The file looks binary: {controls:,} control characters in its first {len(sample):,}. Upload a "
            "CSV, JSON or NDJSON text file."
        )


def _object_format(start: str) -> str:
    """NDJSON when the first line is (or tries to be) one object; otherwise objects spanning lines."""
    first = start.split("\n", 1)[0].rstrip()
    try:
        json.loads(first)
    except (ValueError, RecursionError) as exc:
        incomplete = isinstance(exc, json.JSONDecodeError) and (
            exc.pos >= len(first) - 1 or exc.msg.startswith("Unterminated string")
        )
        return JSON_STREAM if incomplete else NDJSON
    return NDJSON


def _refuse_scalar(start: str) -> None:
    try:
        value = json.loads(start)
    except (ValueError, RecursionError):
        return
    if not isinstance(value, dict | list):
        shown = json.dumps(value)[:40]
        raise IngestError(
            f"The file holds a single JSON value ({shown}), not records: upload an array of objects, one "
            "object per line (NDJSON), or a CSV with a header row."
        )


def _sniff_csv(text: str, encoding: str, *, complete: bool) -> Sniffed:
    sample = text[:DIALECT_SAMPLE]
    if not complete or len(text) > DIALECT_SAMPLE:
        cut = sample.rfind("\n")
        sample = sample[: cut + 1] if cut > 0 else sample
    sample = sample.lstrip("\ufeff")
    delimiter, quotechar = dialect(sample)
    columns = header(sample, delimiter, quotechar)
    return Sniffed(CSV, encoding, delimiter, quotechar, columns)


def dialect(sample: str) -> tuple[str, str]:
    """The delimiter and quote character: csv.Sniffer's answer when the rows agree with it, otherwise
    the candidate delimiter giving the most columns consistently, otherwise a single comma column."""
    try:
        found = csv.Sniffer().sniff(sample, delimiters=DELIMITERS)
        if _widths(sample, found.delimiter, found.quotechar) is not None:
            return found.delimiter, found.quotechar
    except csv.Error:
        pass
    best, best_width = ",", 1
    for candidate in DELIMITERS:
        width = _widths(sample, candidate, '"')
        if width is not None and width > best_width:
            best, best_width = candidate, width
    return best, '"'


def _widths(sample: str, delimiter: str, quotechar: str) -> int | None:
    """The common number of fields of the sample's first rows, or None when they disagree or are 1."""
    reader = csv.reader(io.StringIO(sample), delimiter=delimiter, quotechar=quotechar, doublequote=True)
    widths = set()
    try:
        for i, row in enumerate(reader):
            if row:
                widths.add(len(row))
            if i >= 50:
                break
    except csv.Error:
        return None
    if len(widths) != 1:
        return None
    width = widths.pop()
    return width if width > 1 else None


def header(sample: str, delimiter: str, quotechar: str) -> tuple[str, ...]:
    """The column names from the first row, refusing empty, duplicate or all-numeric names."""
    reader = csv.reader(
        io.StringIO(sample), delimiter=delimiter, quotechar=quotechar, doublequote=True, strict=True
    )
    try:
        row = next(reader, None)
        while row is not None and not row:
            row = next(reader, None)
    except csv.Error as exc:
        raise IngestError(f"The header row cannot be read: {exc}.", line=1) from None
    if row is None:
        raise IngestError("The file has no header row.")
    names = [name.strip() for name in row]
    for index, name in enumerate(names, start=1):
        if not name:
            raise IngestError(
                f"Column {index} has no name in the header row (the first line): every column needs a "
                "name. Add one, or remove the empty column.",
                line=1,
            )
    seen: dict[str, int] = {}
    for index, name in enumerate(names, start=1):
        if name in seen:
            raise IngestError(
                f"The header names the column “{name}” twice (columns {seen[name]} and {index}): column "
                "names must be unique.",
                line=1,
            )
        seen[name] = index
    if all(is_number(name) for name in names):
        shown = ", ".join(f"“{n}”" for n in names[:3])
        raise IngestError(
            f"The first row must name the columns, but it holds values ({shown}). Add a header row.", line=1
        )
    return tuple(names)
