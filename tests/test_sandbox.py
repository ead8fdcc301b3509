"""The sandbox rules (clazar_dest/sandbox.py) that payload code templates and Salesforce mapping
expressions share, checked through both public entry points: ``flows.payloads.build_requests`` with a
code template, and ``compile_mapping(...).apply`` with an expression rule. Pure, no database."""

from __future__ import annotations

import ast
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clazar_dest import sandbox
from clazar_dest.clazar.spec import RecordError
from clazar_dest.salesforce.mapping import MAX_RESULT, Mapping, MappingInvalid, Rule, compile_mapping
from clazar_dest.sandbox import MAX_BITS
from flows.config import Batching, DestinationConfig
from flows.payloads import MAX_OUTPUT, ConfigError, build_requests

BASE = "https://api.clazar.io"
REFUSED = "refused by the sandbox: "
RECORD = {"Id": "0065g00000AbCdEAAV", "Name": "Big deal", "Key": "__class__", "Account": {"Name": "Acme"}}
REQUIRED = {
    "title": Rule("field", "Name"),
    "cloud": Rule("constant", "aws"),
    "customer_company": Rule("field", "Account.Name"),
}

Outcome = tuple[Any, str | None]  # (the value, None) or (None, the error a person reads)


def in_code_template(expression: str, record: dict[str, Any] = RECORD) -> Outcome:
    """``expression`` printed by a payload code template, with the record's fields as variables."""
    names = "".join(f"{{% set {name} = records[0].{name} %}}" for name in record)
    code = names + '{"v": {{ (' + expression + ")|tojson }}}"
    batching = Batching(enabled=True, size=10, algorithm="code", code=code)
    try:
        [item] = build_requests(
            DestinationConfig(template="create_listing", batching=batching), [(1, record)], BASE
        )
    except ConfigError as exc:
        return None, str(exc)
    if isinstance(item, RecordError):
        return None, item.message
    return json.loads(item.body)["v"], None


def in_expression(expression: str, record: dict[str, Any] = RECORD) -> Outcome:
    """``expression`` as a Salesforce mapping rule (a custom property, so the value is not coerced)."""
    try:
        compiled = compile_mapping(Mapping(REQUIRED, {"v": Rule("expression", expression)}))
    except MappingInvalid as exc:
        return None, str(exc)
    result = compiled.apply(record, today=date(2026, 11, 25))
    if result.errors:
        [error] = result.errors
        return None, error.message
    return result.data["custom_properties"]["v"], None


ENTRY_POINTS = pytest.mark.parametrize(
    ("run", "cap"),
    [(in_code_template, MAX_OUTPUT), (in_expression, MAX_RESULT)],
    ids=["code template", "expression"],
)


def refusal(outcome: Outcome) -> str:
    """Why the sandbox refused; fails the test when the expression was not refused by the sandbox."""
    value, message = outcome
    assert message is not None, f"not refused; gave {value!r}"
    assert REFUSED in message, message
    return message.split(REFUSED, 1)[1]


# --- text formatting and padding --------------------------------------------------------------------------


@ENTRY_POINTS
@pytest.mark.parametrize("expression", ["'%0200000000d' % 1", "'%s' % Name", "Name % ()"])
def test_percent_formatting_of_text_is_refused_with_a_way_out(run, cap, expression):
    assert refusal(run(expression)) == "text formatting with % is not allowed; join text with ~"


@ENTRY_POINTS
@pytest.mark.parametrize(
    ("expression", "expected"), [("7 % 3", 1), ("-7 % 3", 2), ("7.5 % 2", 1.5), ("(2 ** 40) % 1000", 776)]
)
def test_percent_on_numbers_is_still_the_remainder(run, cap, expression, expected):
    assert run(expression) == (expected, None)


@ENTRY_POINTS
@pytest.mark.parametrize(
    "method", ["format", "format_map", "center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join"]
)
def test_str_methods_that_format_or_pad_are_refused(run, cap, method):
    assert repr(method) in refusal(run(f"Name.{method}"))


@ENTRY_POINTS
def test_a_refused_attribute_is_not_hidden_by_default(run, cap):
    assert "'__class__'" in refusal(run("Name[Key]|default('hidden')"))


@ENTRY_POINTS
@pytest.mark.parametrize("name", ["center", "indent", "wordwrap", "format"])
def test_filters_that_pad_or_format_are_not_there(run, cap, name):
    value, message = run(f"Name|{name}(99)")
    assert value is None
    assert f"'{name}'" in message


@ENTRY_POINTS
def test_lipsum_is_not_there(run, cap):
    value, message = run("lipsum(1000)")
    assert value is None
    assert "lipsum" in message


# --- sizes ----------------------------------------------------------------------------------------------


@ENTRY_POINTS
@pytest.mark.parametrize(
    "expression",
    [
        "'x' * 10**9",
        "10**9 * 'x'",
        "[1] * 10**9",
        "('x' * 10000)|replace('x', 'y' * 1000)",
    ],
)
def test_a_huge_value_is_refused_before_it_is_built(run, cap, expression):
    assert refusal(run(expression)) == f"a value would be longer than {cap:,} characters"


@ENTRY_POINTS
@pytest.mark.parametrize("operator", ["~", "+"])
def test_joining_text_is_refused_just_past_the_cap(run, cap, operator):
    half = cap // 2
    assert run(f"(('x' * {half}) {operator} ('x' * {half})) == 'x' * {cap}") == (True, None)
    assert refusal(run(f"('x' * {half}) {operator} ('x' * {half + 1})")) == (
        f"a value would be longer than {cap:,} characters"
    )


@ENTRY_POINTS
def test_joining_text_with_a_tilde_still_works(run, cap):
    assert run("Name ~ ' / ' ~ Account.Name ~ 3") == ("Big deal / Acme3", None)


BIG_NUMBER = f"a number would have more than {MAX_BITS:,} bits; use smaller numbers"


@ENTRY_POINTS
@pytest.mark.parametrize(
    "expression",
    [
        "10**20000 * 10**20000",
        "2 ** 49999 * 2 ** 50000",
        "2 ** 100000000",
        "2 ** (10 ** 400)",
        "(-3) ** 100000",
    ],
)
def test_a_huge_number_is_refused_before_it_is_built(run, cap, expression):
    assert refusal(run(expression)) == BIG_NUMBER


@ENTRY_POINTS
def test_numbers_up_to_the_bit_cap_still_multiply(run, cap):
    # 2 ** 49999 has 50,000 bits; the product of two has at most 100,000
    assert run("(2 ** 49999 * 2 ** 49999) % 1000003") == (pow(2, 99998, 1000003), None)
    assert run("2 ** -2") == (0.25, None)


@settings(max_examples=50, deadline=None)
@given(
    a=st.integers(-(10**12), 10**12),
    b=st.integers(-(10**12), 10**12),
    c=st.integers(1, 10**6),
)
def test_everyday_arithmetic_gives_pythons_answer_in_both(a, b, c):
    record = {**RECORD, "A": a, "B": b, "C": c}
    expected = ((a * b) % c, a % c, a + b)
    for run in (in_code_template, in_expression):
        assert run("[A * B % C, A % C, A + B]", record) == (list(expected), None)


@ENTRY_POINTS
def test_each_entry_point_keeps_its_own_value_cap(run, cap):
    # a code template builds a whole batch body; an expression one field value
    assert run(f"('x' * {cap}) > ''") == (True, None)
    assert refusal(run(f"'x' * {cap + 1}")) == f"a value would be longer than {cap:,} characters"


def test_the_shared_sandbox_imports_no_django():
    # clazar_dest/salesforce/mapping is a pure package, and it builds on this module
    tree = ast.parse(Path(sandbox.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [name for name in imported if name.split(".")[0] == "django"]
