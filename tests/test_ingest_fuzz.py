"""Property and fuzz tests for the parsers: any bytes give records or our IngestError, never anything else;
what we write in a supported format reads back the same."""

from __future__ import annotations

import contextlib
import csv
import io
import json

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flows.ingest import reader
from flows.ingest.errors import IngestError
from flows.ingest.jsonfile import parse_body

LIMITS = reader.Limits(max_rows=500, max_record=2000)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SAMPLES = [
    b'id,name,price,ok\n1,"Smith, J",19.99,true\n2,Bo,,false\n3,"say ""hi""",3,TRUE\n',
    b"id;city\n1;Z\xfcrich\n2;M\xfcnchen\n",
    b'[{"id": 1, "tags": ["a"], "n": 1.5}, {"id": 2, "nested": {"x": null}}]',
    b'{"id": 1}\n{"id": 2, "n": 2.5}\n\n{"id": 3}\n',
    b'{\n  "id": 1,\n  "list": [1, 2, 3]\n}\n',
]


def run_both_passes(data: bytes, name: str) -> list[str]:
    """Sniff, check and store-encode ``data``; only IngestError may escape (from sniffing)."""

    def opener():
        return io.BytesIO(data)

    checked = reader.check(opener, reader.head(opener, name), LIMITS)
    texts = [] if checked.fatal else [t for batch in reader.encode(opener, checked, LIMITS) for t in batch]
    for text in texts:
        assert isinstance(json.loads(text), dict)
    if checked.fatal is None:
        assert len(texts) == checked.good
    return texts


@FUZZ
@given(data=st.binary(max_size=3000), name=st.sampled_from(["a.csv", "a.json", "a.ndjson", "a"]))
def test_arbitrary_bytes_give_records_or_our_validation_error(data, name):
    with contextlib.suppress(IngestError):
        run_both_passes(data, name)


@FUZZ
@given(
    sample=st.sampled_from(SAMPLES),
    edits=st.lists(
        st.tuples(st.integers(min_value=0, max_value=400), st.binary(min_size=0, max_size=3)), max_size=6
    ),
)
def test_damaged_files_give_records_or_our_validation_error(sample, edits):
    data = bytearray(sample)
    for position, chunk in edits:
        at = position % (len(data) + 1)
        data[at : at + 1] = chunk
    for name in ("a.csv", "a.json"):
        with contextlib.suppress(IngestError):
            run_both_passes(bytes(data), name)


@FUZZ
@given(body=st.binary(max_size=2000))
def test_arbitrary_webhook_bodies_give_records_or_our_validation_error(body):
    try:
        records = parse_body(body, max_records=50)
    except IngestError:
        return
    assert records and all(isinstance(r, dict) for r in records)


# Text the database can store: no NUL, no lone surrogates (both are refused, as tested elsewhere).
storable = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(storable, max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(storable, max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
records = st.lists(
    st.dictionaries(st.text(storable, max_size=8), json_values, max_size=5), min_size=1, max_size=20
)


@FUZZ
@given(items=records, layout=st.sampled_from(["array", "ndjson"]))
def test_json_records_read_back_as_written(items, layout):
    if layout == "array":
        data = json.dumps(items, indent=1).encode()
    else:
        data = "\n".join(json.dumps(item) for item in items).encode()
    texts = run_both_passes(data, "a.json")
    assert [json.loads(t) for t in texts] == items


# Printable text: a file with many control characters is refused as binary (by design).
cell = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=12)


@FUZZ
@given(
    width=st.integers(min_value=1, max_value=5),
    rows=st.lists(st.lists(cell, min_size=5, max_size=5), min_size=1, max_size=15),
    delimiter=st.sampled_from([",", ";", "\t"]),
)
def test_csv_text_reads_back_as_written(width, rows, delimiter):
    header = [f"col{i}" for i in range(width)]
    rows = [row[:width] for row in rows if any(row[:width])]
    assume(rows)  # a header alone is refused, as tested elsewhere
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)

    def opener():
        return io.BytesIO(buffer.getvalue().encode())

    checked = reader.check(opener, reader.head(opener, "a.csv"), LIMITS, text=True)
    assert checked.fatal is None, checked.fatal
    stored = [json.loads(t) for batch in reader.encode(opener, checked, LIMITS) for t in batch]
    assert stored == [dict(zip(header, row, strict=True)) for row in rows]
