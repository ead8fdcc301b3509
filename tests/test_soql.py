"""SOQL building: names, literals, the user's filter, the sync query and Salesforce datetimes."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clazar_dest.salesforce import soql

# -- a reference reader for SOQL string literals (written independently of soql.literal) ---------------

_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


def read_string_literal(text: str) -> tuple[str, int]:
    """(value, length) of the SOQL string literal at the start of ``text``; AssertionError if there is none."""
    assert text[0] == "'"
    out, i = [], 1
    while text[i] != "'":
        if text[i] == "\\":
            out.append(_UNESCAPE[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out), i + 1


_STRING = re.compile(r"'(?:[^'\\]|\\.)*'", re.DOTALL)


def balanced(text: str) -> bool:
    """Quotes closed and parentheses matched outside quotes, by a regex instead of a scanner."""
    rest = _STRING.sub("''", text)
    if "'" in _STRING.sub("", rest) or "\\" in _STRING.sub("", rest):
        return False
    depth = 0
    for char in _STRING.sub("", rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


# -- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["Name", "Account.Name", "Custom__c", "ns__Thing__c", "Owner.Manager.Email", "Account.Owner.Name"]
)
def test_field_path_accepts_api_names(name):
    assert soql.field_path(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "1Name",
        "_Name",
        "Name,Id",
        "Name FROM Account",
        "Account..Name",
        "Account.",
        ".Name",
        "Na-me",
        "Name)",
        "Nàme",
        "A.B.C.D.E.F.G",
        "x" * 81,
        None,
        3,
    ],
)
def test_field_path_refuses_anything_else(name):
    with pytest.raises(ValueError, match="is not a Salesforce field name"):
        soql.field_path(name)


def test_sobject_name_refuses_paths_and_spaces():
    assert soql.sobject_name("Opportunity") == "Opportunity"
    for bad in ("Account.Name", "Opportunity WHERE", "", "Opp;"):
        with pytest.raises(ValueError, match="is not a Salesforce object name"):
            soql.sobject_name(bad)


# -- literals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-42, "-42"),
        (1.5, "1.5"),
        (1e16, "10000000000000000"),
        (1e-7, "0.0000001"),
        (Decimal("12.50"), "12.50"),
        (Decimal("1E+3"), "1000"),
        (date(2026, 1, 31), "2026-01-31"),
        (datetime(2026, 1, 31, 10, 0, 0, 999999, tzinfo=UTC), "2026-01-31T10:00:00Z"),
        (datetime(2026, 1, 31, 12, 30, tzinfo=timezone(timedelta(hours=2))), "2026-01-31T10:30:00Z"),
        (datetime(999, 1, 1, tzinfo=UTC), "0999-01-01T00:00:00Z"),
        ("Closed Won", "'Closed Won'"),
        ("O'Brien", "'O\\'Brien'"),
        ("back\\slash", "'back\\\\slash'"),
        ('say "hi"', "'say \\\"hi\\\"'"),
        ("a\nb\rc\td", "'a\\nb\\rc\\td'"),
        ("", "''"),
    ],
)
def test_literal_writes_soql(value, expected):
    assert soql.literal(value) == expected


def test_literal_refuses_a_naive_datetime():
    with pytest.raises(ValueError, match="has no time zone"):
        soql.literal(datetime(2026, 1, 31, 10, 0))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), Decimal("NaN"), Decimal("-Infinity")])
def test_literal_refuses_numbers_soql_cannot_write(value):
    with pytest.raises(ValueError, match="only finite numbers"):
        soql.literal(value)


@pytest.mark.parametrize("value", [b"bytes", ["list"], {"a": 1}, object()])
def test_literal_refuses_other_types(value):
    with pytest.raises(TypeError):
        soql.literal(value)


@given(st.text(max_size=200))
def test_a_string_literal_reads_back_as_the_same_text_and_ends_where_it_should(text):
    written = soql.literal(text)
    value, length = read_string_literal(written + " AND Name = 'x'")
    assert value == text
    assert length == len(written)


@given(st.text(max_size=200))
def test_any_string_literal_is_a_filter_the_check_accepts(text):
    condition = f"Name = {soql.literal(text)}"
    assert soql.check_filter(condition) == condition


@given(
    st.datetimes(min_value=datetime(1700, 1, 2), max_value=datetime(4000, 12, 30), timezones=st.timezones())
)
def test_a_datetime_literal_parses_back_to_the_same_second(moment):
    if moment.utcoffset() is None:
        return
    assert soql.parse_datetime(soql.literal(moment)) == moment.astimezone(UTC).replace(microsecond=0)


# -- the user's filter ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "StageName = 'Closed Won'",
        "  Amount > 1000 AND (StageName = 'Prospecting' OR IsClosed = false)  ",
        "Name LIKE 'Acme%' AND CloseDate = LAST_N_DAYS:30",
        "Name = 'SELECT * FROM x; LIMIT 5 ORDER BY y'",
        "Name = 'it\\'s (fine'",
        "Selected__c = true AND Order_By__c != null AND From_Date__c < TODAY",
        "StageName IN ('Closed Won', 'Closed Lost')",
        "",
    ],
)
def test_check_filter_accepts_plain_conditions(text):
    assert soql.check_filter(text) == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Name = 'Acme", "never closed"),
        ("Name = 'Acme\\'", "never closed"),
        ("(Amount > 5", "'(' at character 1 that is never closed"),
        ("Amount > 5)", "')' at character 11 without a matching"),
        ("Amount > 5) OR (Id != null", "without a matching"),
        ('Name = "Acme"', "double quote"),
        ("Amount > 5; DELETE", "can't contain ';'"),
        ("Name = \\'x", "can't contain '\\\\'"),
        ("Id IN (SELECT AccountId FROM Opportunity)", "SELECT"),
        ("Amount > 5 LIMIT 10", "LIMIT"),
        ("Amount > 5 order   by Name", "ORDER BY"),
        ("Amount > 5 GROUP BY Name", "GROUP BY"),
        ("Amount > 5 OFFSET 10", "OFFSET"),
        ("x" * 4001, "at most 4000"),
    ],
)
def test_check_filter_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        soql.check_filter(text)


_FILTER_TEXT = st.text(alphabet="ab =()'\\\n", max_size=40)


@given(_FILTER_TEXT)
def test_check_filter_never_accepts_unbalanced_quotes_or_parentheses(text):
    try:
        accepted = soql.check_filter(text)
    except ValueError:
        return
    assert balanced(accepted)


@given(_FILTER_TEXT, st.sampled_from(["'", "(", ")"]))
def test_check_filter_refuses_an_accepted_filter_with_one_more_quote_or_parenthesis(text, extra):
    try:
        soql.check_filter(text)
    except ValueError:
        return
    with pytest.raises(ValueError):
        soql.check_filter(text + extra)


# -- the sync query ------------------------------------------------------------------------------------


def test_select_adds_id_and_systemmodstamp_and_orders_for_paging():
    assert soql.select("Opportunity", ["Name", "Amount"]) == (
        "SELECT Id, Name, Amount, SystemModstamp FROM Opportunity ORDER BY SystemModstamp, Id"
    )


def test_select_keeps_the_order_and_drops_repeats_ignoring_case():
    query = soql.select("Opportunity", ["Name", "systemmodstamp", "Account.Name", "NAME", "Id", "id"])
    assert query.startswith("SELECT Name, systemmodstamp, Account.Name, Id FROM Opportunity")


def test_select_wraps_the_filter_and_adds_since_and_limit():
    since = datetime(2026, 1, 31, 10, 0, 0, 123000, tzinfo=UTC)
    query = soql.select(
        "Opportunity", ["Name"], where=" StageName = 'Won' OR Amount > 5 ", since=since, limit=200
    )
    assert query == (
        "SELECT Id, Name, SystemModstamp FROM Opportunity WHERE (StageName = 'Won' OR Amount > 5) "
        "AND SystemModstamp >= 2026-01-31T10:00:00Z ORDER BY SystemModstamp, Id LIMIT 200"
    )


def test_select_with_a_blank_filter_has_no_where():
    assert "WHERE" not in soql.select("Account", ["Name"], where="   ")


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "10"])
def test_select_refuses_a_limit_that_is_not_a_positive_whole_number(limit):
    with pytest.raises(ValueError, match="limit must be"):
        soql.select("Account", ["Name"], limit=limit)


def test_select_refuses_bad_names_and_filters():
    with pytest.raises(ValueError, match="object name"):
        soql.select("Account WHERE", ["Name"])
    with pytest.raises(ValueError, match="field name"):
        soql.select("Account", ["Name FROM User"])
    with pytest.raises(ValueError, match="without a matching"):
        soql.select("Account", ["Name"], where="Name != null) LIMIT 1 (")
    with pytest.raises(TypeError, match="list of field names"):
        soql.select("Account", "Name")


def test_select_refuses_a_naive_since():
    with pytest.raises(ValueError, match="no time zone"):
        soql.select("Account", ["Name"], since=datetime(2026, 1, 1))


# -- datetimes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31T10:00:00.000+0000", datetime(2026, 1, 31, 10, 0, tzinfo=UTC)),
        ("2026-01-31T10:00:00.123+0000", datetime(2026, 1, 31, 10, 0, 0, 123000, tzinfo=UTC)),
        ("2026-01-31T10:00:00Z", datetime(2026, 1, 31, 10, 0, tzinfo=UTC)),
        ("2026-01-31T10:00:00.000Z", datetime(2026, 1, 31, 10, 0, tzinfo=UTC)),
        ("2026-01-31T12:00:00+02:00", datetime(2026, 1, 31, 10, 0, tzinfo=UTC)),
        ("2026-01-31T05:00:00.000-0500", datetime(2026, 1, 31, 10, 0, tzinfo=UTC)),
    ],
)
def test_parse_datetime_reads_salesforce_and_iso_forms_as_utc(text, expected):
    parsed = soql.parse_datetime(text)
    assert parsed == expected
    assert parsed.tzinfo == UTC


@pytest.mark.parametrize(
    "text", ["2026-01-31", "2026-01-31T10:00:00", "2026-13-01T00:00:00Z", "yesterday", "", None, 1769853600]
)
def test_parse_datetime_refuses_dates_naive_times_and_nonsense(text):
    with pytest.raises(ValueError):
        soql.parse_datetime(text)


@given(st.text(max_size=40))
def test_parse_datetime_raises_only_valueerror(text):
    try:
        result = soql.parse_datetime(text)
    except ValueError:
        return
    assert result.tzinfo == UTC
