"""The pure parsers (flows/ingest): sniffing, CSV and JSON reading, typing, the two passes, the schema."""

from __future__ import annotations

import codecs
import io
import json

import pytest

from flows.ingest import reader
from flows.ingest.errors import IngestError, Problem
from flows.ingest.jsonfile import parse_body
from flows.ingest.schema import combine, conflicts, merge
from flows.ingest.sniff import CSV, JSON_ARRAY, JSON_STREAM, NDJSON, detect_encoding, sniff
from flows.ingest.values import Column, is_integer, is_number, typed

LIMITS = reader.Limits(max_rows=1000, max_record=1000)


def read(data: bytes, name: str = "data.csv", *, text: bool = False, limits: reader.Limits = LIMITS):
    """Both passes over ``data``: (check result, stored records)."""

    def opener():
        return io.BytesIO(data)

    checked = reader.check(opener, reader.head(opener, name), limits, text=text)
    if checked.fatal is not None:
        return checked, []
    stored = [json.loads(t) for batch in reader.encode(opener, checked, limits) for t in batch]
    return checked, stored


def problems(checked: reader.Check) -> list[str]:
    return [str(p) for p in checked.problems]


# Sniffing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "delimiter"),
    [
        (b"a,b,c\n1,2,3\n", ","),
        (b"a;b;c\n1;2,5;3\n", ";"),
        (b"a\tb\tc\n1\t2\t3\n", "\t"),
        (b'name,note\n"Smith, J","said ""hi"""\n', ","),
        (b"a|b\n1|2\n", "|"),
    ],
)
def test_the_csv_dialect_is_sniffed(data, delimiter):
    sniffed = sniff(data, "x.txt", complete=True)
    assert sniffed.format == CSV
    assert sniffed.delimiter == delimiter


def test_a_single_column_csv_is_read_with_a_comma():
    sniffed = sniff(b"email\na@example.com\nb@example.com\n", complete=True)
    assert sniffed.columns == ("email",)


def test_the_format_comes_from_the_content_not_the_name():
    assert sniff(b'[{"a": 1}]', "export.csv", complete=True).format == JSON_ARRAY
    assert sniff(b'{"a": 1}\n{"a": 2}\n', "export.txt", complete=True).format == NDJSON
    assert sniff(b'{\n  "a": 1\n}\n', "export.txt", complete=True).format == JSON_STREAM
    assert sniff(b"a,b\n1,2\n", "export.data", complete=True).format == CSV


def test_utf8_with_and_without_bom_and_utf16_with_bom_are_recognised():
    assert detect_encoding(b"a,b\n\xc3\xa9,1\n") == "utf-8"
    assert detect_encoding(codecs.BOM_UTF8 + b"a,b\n") == "utf-8-sig"
    assert detect_encoding("a\tb\n".encode("utf-16")) == "utf-16"


def test_other_encodings_are_detected_and_windows_1252_wins_a_tie():
    data = "name;city;note\nJosé;Zürich;“quoted” – 5€\nFrançois;Besançon;ok\n".encode("cp1252")
    assert detect_encoding(data) == "cp1252"
    _, stored = read(data)
    assert stored[0] == {"name": "José", "city": "Zürich", "note": "“quoted” – 5€"}


@pytest.mark.parametrize(
    ("data", "name", "message"),
    [
        (b"", "a.csv", "The file is empty."),
        (b"  \n\n ", "a.csv", "The file holds only blank space."),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "a.csv", "This is a PNG image"),
        (b"PK\x03\x04rest", "a.csv", "an Excel .xlsx workbook is one"),
        (b"a,b\n1,\x00\x00\x002\n", "a.csv", "The file looks binary: it has NUL"),
        (b"42", "a.json", "The file holds a single JSON value (42), not records"),
        (b'"just text"', "a.json", 'single JSON value ("just text")'),
        (b"null\n", "a.csv", "single JSON value (null)"),
        (b"a,,c\n1,2,3\n", "a.csv", "Column 2 has no name in the header row"),
        (b"id,price,id\n1,2,3\n", "a.csv", "names the column “id” twice (columns 1 and 3)"),
        (b"1,2,3\n4,5,6\n", "a.csv", "The first row must name the columns"),
        (b"a,b\n1,2", "data.json", "named like JSON but does not start with ["),
    ],
)
def test_files_that_cannot_be_records_are_refused_with_a_clear_message(data, name, message):
    with pytest.raises(IngestError) as caught:
        sniff(data, name, complete=True)
    assert message in str(caught.value)


# CSV -----------------------------------------------------------------------------------------------


def test_csv_values_are_typed_per_column_where_the_whole_column_agrees():
    data = (
        b"id,price,ok,zip,ref,note,blank\n"
        b"1,19.99,true,02134,12345678901234567890,hello,\n"
        b"2,,FALSE,10001,2,,\n"
        b"3,-0.5,True,02139,3,x,\n"
    )
    checked, stored = read(data)
    assert {name: info["type"] for name, info in checked.schema.items()} == {
        "id": "integer",
        "price": "number",
        "ok": "boolean",
        "zip": "string",
        "ref": "string",
        "note": "string",
        "blank": "null",
    }
    assert stored[0] == {
        "id": 1,
        "price": 19.99,
        "ok": True,
        "zip": "02134",
        "ref": "12345678901234567890",
        "note": "hello",
        "blank": None,
    }
    assert stored[1]["price"] is None and stored[1]["note"] is None
    assert checked.schema["price"]["nullable"] is True
    assert checked.schema["id"]["nullable"] is False


def test_a_decimal_column_with_more_digits_than_a_double_holds_stays_text():
    checked, stored = read(b"amount\n1.25\n0.1000000000000000055511151231257827\n")
    assert checked.schema["amount"]["type"] == "string"
    assert stored[1]["amount"] == "0.1000000000000000055511151231257827"


def test_decimals_keep_their_value_exactly():
    checked, stored = read(b"amount\n1234567.891\n0.10\n-42\n")
    assert checked.schema["amount"]["type"] == "number"
    assert [r["amount"] for r in stored] == [1234567.891, 0.1, -42]


def test_keep_everything_as_text_stores_strings_and_empty_strings():
    checked, stored = read(b"id,price\n1,19.99\n2,\n", text=True)
    assert stored == [{"id": "1", "price": "19.99"}, {"id": "2", "price": ""}]
    assert {info["type"] for info in checked.schema.values()} == {"string"}


def test_quotes_line_breaks_and_doubled_quotes_survive():
    data = b'name,note\n"Smith, J","line one\nline two"\nBo,"said ""hi"""\n'
    _, stored = read(data)
    assert stored == [{"name": "Smith, J", "note": "line one\nline two"}, {"name": "Bo", "note": 'said "hi"'}]


def test_blank_lines_and_rows_of_empty_cells_are_skipped():
    checked, stored = read(b"a,b\n1,2\n\n,\n3,4\n,\n")
    assert stored == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert checked.rows == 2


def test_ragged_rows_are_rejected_by_row_and_the_rest_are_read():
    checked, stored = read(b"a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12\n")
    assert [r["a"] for r in stored] == [1, 10]
    assert problems(checked) == [
        "row 2 (line 3): has 2 values but the header has 3 columns (missing: c)",
        "row 3 (line 4): has 4 values but the header has 3 columns (“9”…): is a delimiter or quote missing?",
    ]
    assert checked.good == 2 and checked.rows == 4


def test_an_unterminated_quote_names_row_line_and_column_and_stops_the_file():
    checked, _ = read(b'id,price,note\n1,2,ok\n2,"3,oops\n3,4,x\n')
    assert str(checked.fatal) == (
        "row 2 (line 3), column price: unterminated quote: the quoted value that starts here never ends "
        "(or runs past 1,000 characters), so nothing after it can be read"
    )


def test_text_after_a_closing_quote_rejects_the_row_naming_the_column():
    checked, stored = read(b'id,note\n1,"fine"\n2,"bad"x\n3,ok\n')
    assert problems(checked) == [
        "row 2 (line 3), column note: text after a closing quote: a quote inside a quoted value must be "
        'doubled ("")'
    ]
    assert [r["id"] for r in stored] == [1, 3]


def test_a_value_over_the_length_limit_rejects_its_row_naming_the_column():
    data = b"id,notes,tail\n1,short,x\n2," + b"y" * 5000 + b",x\n3,ok,x\n"
    checked, stored = read(data)
    assert problems(checked) == ["row 2 (line 3), column notes: a value is longer than 1,000 characters"]
    assert [r["id"] for r in stored] == [1, 3]


def test_a_nul_byte_after_the_first_megabyte_rejects_its_row():
    filler = b"".join(b"%d,padding-padding-padding\n" % i for i in range(45_000))
    data = b"id,note\n" + filler + b"99,bad\x00value\n100,fine\n"
    checked, _ = read(data, limits=reader.Limits(max_rows=100_000, max_record=1000))
    assert problems(checked) == [
        "row 45,001 (line 45,002): has a NUL byte (\\0), which text files do not have"
    ]
    assert checked.good == 45_001


def test_a_file_that_stops_being_utf8_after_the_first_megabyte_is_detected_again():
    filler = b"".join(b"%d,plain ascii text here\n" % i for i in range(50_000))
    data = b"id,city\n" + filler + "50000,Zürich\n".encode("cp1252")
    checked, stored = read(data, limits=reader.Limits(max_rows=100_000, max_record=1000))
    assert checked.fatal is None
    assert checked.sniffed.encoding != "utf-8"
    assert stored[-1] == {"id": 50000, "city": "Zürich"}


def test_more_rows_than_the_limit_stops_the_file():
    checked, _ = read(b"a\n" + b"x\n" * 20, limits=reader.Limits(max_rows=10, max_record=100))
    assert "more than 10 rows, the limit (UPLOAD_MAX_ROWS)" in str(checked.fatal)


def test_a_header_without_rows_is_nothing_to_import():
    checked, _ = read(b"a,b\n")
    assert str(checked.fatal) == "The file has a header row but no data rows."


# JSON ----------------------------------------------------------------------------------------------


def test_a_json_array_and_ndjson_give_the_same_records():
    records = [{"id": 1, "tags": ["x"], "price": 19.99}, {"id": 2, "nested": {"ok": True}, "price": None}]
    _, from_array = read(json.dumps(records).encode(), "a.json")
    _, from_lines = read("\n".join(json.dumps(r) for r in records).encode(), "a.ndjson")
    assert from_array == from_lines == records


def test_a_pretty_printed_object_is_one_record():
    _, stored = read(b'{\n  "id": 1,\n  "name": "Acme"\n}\n', "a.json")
    assert stored == [{"id": 1, "name": "Acme"}]


def test_a_json_array_is_streamed_across_chunk_boundaries():
    records = [{"id": i, "text": "x" * (i % 300), "amount": 1234567.25 + i} for i in range(3000)]
    data = json.dumps(records, indent=1).encode()
    assert len(data) > 3 * 64 * 1024
    checked, stored = read(data, "a.json", limits=reader.Limits(max_rows=10_000, max_record=5000))
    assert checked.fatal is None
    assert stored == records


def test_bad_records_in_an_array_are_rejected_alone():
    data = b'[{"a": 1}, [1, 2], {"a": NaN}, "text", {"a": {"b": {"c": 1}}}, {"a": Infinity}]'
    checked, stored = read(data, "a.json")
    assert problems(checked) == [
        "row 2 (line 1): is a JSON array, not an object: each record must be a JSON object",
        "row 3 (line 1): holds NaN or Infinity, which JSON does not allow: use null or a number",
        "row 4 (line 1): is a JSON string, not an object: each record must be a JSON object",
        "row 6 (line 1): holds NaN or Infinity, which JSON does not allow: use null or a number",
    ]
    assert stored == [{"a": 1}, {"a": {"b": {"c": 1}}}]


def test_deeply_nested_records_are_rejected():
    deep = '{"a": ' * 40 + "1" + "}" * 40
    too_deep_to_parse = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"
    checked, _ = read(
        f"{deep}\n{too_deep_to_parse}\n".encode(), "a.ndjson", limits=reader.Limits(10, 100_000)
    )
    assert problems(checked) == [
        "row 1: is nested more than 32 levels deep",
        "row 2: is nested too deeply to read",
    ]


def test_trailing_garbage_after_a_json_array_stops_the_file():
    checked, _ = read(b'[{"a": 1}]\n<html>oops', "a.json")
    assert str(checked.fatal) == (
        "line 2: there is more text after the JSON array's closing ] (trailing garbage): a file holds one array"
    )


def test_an_unclosed_array_and_a_syntax_error_stop_the_file_with_the_line():
    checked, _ = read(b'[\n{"a": 1},\n{"a": 2', "a.json")
    assert "The JSON array is not closed" in str(checked.fatal) or "row 2" in str(checked.fatal)
    checked, _ = read(b'[\n{"a": 1},\n{"a" 2}\n]', "a.json")
    assert str(checked.fatal).startswith("row 2 (line 3): is not valid JSON: Expecting ':' delimiter")


def test_bad_ndjson_lines_are_rejected_alone_with_their_line_number():
    checked, stored = read(b'{"a": 1}\n{"a": 2,\n\n{"a": 3} trailing\n42\n{"a": 4}\n', "a.ndjson")
    assert problems(checked) == [
        "row 2: is not valid JSON: Expecting property name enclosed in double quotes at character 9",
        "row 3 (line 4): is not valid JSON: extra text after the end of the JSON value (trailing garbage) "
        "at character 10",
        "row 4 (line 5): is a JSON number, not an object: each record must be a JSON object",
    ]
    assert stored == [{"a": 1}, {"a": 4}]


def test_json_numbers_keep_their_exact_digits():
    _, stored = read(
        b'[{"a": 0.1, "b": 1e400, "c": 3.141592653589793238462643, "d": 12345678901234567890}]', "a.json"
    )
    assert stored == [{"a": 0.1, "b": "1e400", "c": "3.141592653589793238462643", "d": 12345678901234567890}]


def test_nul_characters_and_lone_surrogates_are_refused_in_json():
    data = b'{"a": "nul \\u0000 here"}\n{"a": "\\ud800"}\n{"a": "ok \\ud83d\\ude00"}\n{"a": "\\\\u0000 is text"}\n'
    checked, stored = read(data, "a.ndjson")
    assert problems(checked) == [
        "row 1: holds a NUL character (\\u0000), which the database cannot store",
        "row 2: holds an unpaired UTF-16 surrogate (\\ud800-\\udfff), which is not text",
    ]
    assert stored == [{"a": "ok 😀"}, {"a": "\\u0000 is text"}]


# Webhook bodies ------------------------------------------------------------------------------------


def test_a_body_is_one_object_an_array_or_ndjson():
    assert parse_body(b'{"a": 1}', max_records=10) == [{"a": 1}]
    assert parse_body(b'[{"a": 1}, {"a": 2}]', max_records=10) == [{"a": 1}, {"a": 2}]
    assert parse_body(b'{"a": 1}\n{"a": 2}\n', max_records=10) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "The body is empty"),
        (b"42", "must be a JSON object, an array of objects, or NDJSON"),
        (b"[]", "The body holds no records."),
        (b'[{"a": 1}, 2]', "Record 2 is a JSON number, not an object"),
        (b'{"a": NaN}', "holds NaN or Infinity"),
        (b'{"a": 1} junk', "Line 1 is not valid JSON: extra text after the end of the JSON value"),
        (b'{"a": 1', "The body is not valid JSON"),
        (b"\xff\xfe{}", "The body is not UTF-8 text"),
        (b"[" + b'{"a": 1},' * 11 + b'{"a": 1}]', "more than 10 records"),
        (b'{"a": ' * 40 + b"1" + b"}" * 40, "nested more than 32 levels deep"),
    ],
)
def test_a_bad_body_is_refused_whole_with_the_reason(body, message):
    with pytest.raises(IngestError) as caught:
        parse_body(body, max_records=10)
    assert message in str(caught.value)


# Values and schema ---------------------------------------------------------------------------------


def test_integers_are_canonical_and_javascript_safe():
    assert is_integer("0") and is_integer("-12") and is_integer("9007199254740991")
    assert not is_integer("007") and not is_integer("+1") and not is_integer("9007199254740992")
    assert not is_integer("1.0") and not is_integer(" 1")


def test_numbers_are_plain_decimals_a_double_holds_exactly():
    assert is_number("19.99") and is_number("-0.5") and is_number("12")
    assert not is_number("1e5") and not is_number("1,5") and not is_number(".5") and not is_number("NaN")
    assert not is_number("0.12345678901234567890")
    assert typed("19.990", "number") == 19.99


def test_a_column_gathers_its_type_over_batches():
    column = Column("n")
    column.feed(("1", "2", ""))
    assert column.kind == "integer"
    column.feed(("2.5",))
    assert column.kind == "number"
    column.feed(("n/a",))
    assert column.kind == "string"


def test_a_column_with_line_breaks_is_checked_value_by_value():
    column = Column("n")
    column.feed(("1\n2", "3"))
    assert column.kind == "string"


def test_combining_schemas_matches_merging_the_records_one_after_the_other():
    first = [{"a": 1, "b": "x"}, {"a": 2.5, "b": None}]
    second = [{"a": 3, "c": True}, {"c": False}]
    together = merge(merge({}, first, seen=0), second, seen=2)
    assert combine(merge({}, first, seen=0), 2, merge({}, second, seen=0), 2) == together


def test_conflicts_name_the_field_and_both_kinds():
    existing = {"price": {"type": "number"}, "name": {"type": "string"}}
    assert conflicts(existing, {"price": {"type": "integer"}, "extra": {"type": "string"}}) == []
    assert conflicts(existing, {"price": {"type": "string"}, "name": {"type": "string"}}) == [
        "Field “price” holds text in the file but numbers in the Nexset."
    ]
    assert conflicts(existing, {"other": {"type": "string"}}) == [
        "None of the file's fields (other) is in the Nexset (price, name)."
    ]
    assert conflicts({}, {"anything": {"type": "string"}}) == []


def test_problems_read_as_row_line_column_then_the_problem():
    assert str(Problem("unterminated quote", 18204, 18205, "price")) == (
        "row 18,204 (line 18,205), column price: unterminated quote"
    )
    assert str(Problem("bad", line=7)) == "line 7: bad"
    assert str(IngestError("The file is empty.")) == "The file is empty."
