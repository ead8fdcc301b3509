"""The Salesforce -> Clazar field mapping (clazar_dest/salesforce/mapping/): pure, no database."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clazar_dest.clazar.endpoints import CLOUDS, REQUIRED_FIELDS
from clazar_dest.salesforce import mapping as mapping_module
from clazar_dest.salesforce.mapping import (
    BY_NAME,
    STAGES,
    TARGETS,
    Compiled,
    FieldError,
    Mapping,
    MappingInvalid,
    Result,
    Rule,
    compile_mapping,
    preview,
    source_fields,
    suggest,
)

TODAY = date(2026, 11, 25)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REQUIRED = {
    "title": Rule("field", "Name"),
    "cloud": Rule("constant", "aws"),
    "customer_company": Rule("field", "Account.Name"),
}


def sf_record(**overrides: Any) -> dict[str, Any]:
    """An Opportunity as the REST API returns it, "attributes" stripped."""
    record: dict[str, Any] = {
        "Id": "0065g00000AbCdEAAV",
        "Name": "Big deal",
        "Amount": 1200.5,
        "CloseDate": "2027-01-31",
        "StageName": "Closed Won",
        "Cloud_Provider__c": "AWS",
        "Description": "Three-year expansion.",
        "Account": {"Name": "Acme", "Website": "acme.com", "BillingCountry": "US"},
        "SystemModstamp": "2026-11-25T10:00:00.000+0000",
    }
    record.update(overrides)
    return record


def mapping(**fields: Rule | None) -> Mapping:
    """The required targets plus ``fields`` (None drops a target)."""
    merged = {**REQUIRED, **fields}
    return Mapping({name: rule for name, rule in merged.items() if rule is not None})


def apply(m: Mapping, record: Any, **kwargs: Any) -> Result:
    return compile_mapping(m).apply(record, today=TODAY, **kwargs)


def one(target: str, rule: Rule, record: dict[str, Any] | None = None) -> tuple[Any, list[str]]:
    """The value ``rule`` gives ``target`` for ``record`` and the errors about that target."""
    result = apply(mapping(**{target: rule}), sf_record() if record is None else record)
    return result.data.get(target), [e.message for e in result.errors if e.target == target]


def invalid(data: Any) -> dict[str, list[str]]:
    with pytest.raises(MappingInvalid) as caught:
        Mapping.from_json(data)
    return caught.value.errors


def rule_json(source: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"source": source, "value": value, **extra}


def json_with(**fields: dict[str, Any]) -> dict[str, Any]:
    base = {name: rule.to_json() for name, rule in REQUIRED.items()}
    return {"fields": {**base, **fields}, "custom_properties": {}}


# --- sources ---------------------------------------------------------------------------------------------


def test_a_field_rule_reads_the_salesforce_field():
    assert one("description", Rule("field", "Description")) == ("Three-year expansion.", [])


def test_a_field_rule_walks_parent_records_with_dots():
    assert one("customer_company", Rule("field", "Account.Name")) == ("Acme", [])


def test_a_field_name_matches_case_insensitively_as_soql_does():
    assert one("customer_company", Rule("field", "account.name")) == ("Acme", [])


def test_a_missing_parent_record_reads_as_empty():
    value, errors = one("customer_website", Rule("field", "Account.Website"), sf_record(Account=None))
    assert (value, errors) == (None, [])


def test_a_constant_rule_gives_its_text():
    assert one("stage", Rule("constant", "qualified")) == ("qualified", [])


def test_an_expression_rule_sees_fields_parents_and_today():
    rule = Rule("expression", "Name ~ ' for ' ~ Account.Name|upper ~ ' on ' ~ today")
    assert one("description", rule) == ("Big deal for ACME on 2026-11-25", [])


def test_a_whole_record_maps_to_the_shape_of_a_clazar_opportunity():
    result = apply(suggest(DESCRIBE), sf_record())
    assert result.errors == []
    assert result.data == {
        "title": "Big deal",
        "cloud": "aws",
        "customer_company": "Acme",
        "customer_website": "https://acme.com",
        "customer_country": "US",
        "target_close_date": "2027-01-31",
        "stage": "launched",
        "expected_revenue": 1200.5,
        "description": "Three-year expansion.",
    }
    assert set(REQUIRED_FIELDS["opportunities"]) <= set(result.data)


# --- fallbacks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("empty", [None, "", "   \n", [], {}])
def test_the_fallback_is_used_when_the_value_is_empty(empty):
    rule = Rule("field", "Description", fallback=Rule("constant", "No description"))
    assert one("description", rule, sf_record(Description=empty)) == ("No description", [])


def test_the_fallback_is_used_when_the_field_is_missing_from_the_record():
    record = sf_record()
    del record["CloseDate"]
    rule = Rule("field", "CloseDate", fallback=Rule("expression", "today + 15 days"))
    assert one("target_close_date", rule, record) == ("2026-12-10", [])


def test_a_value_wins_over_the_fallback():
    rule = Rule("field", "CloseDate", fallback=Rule("expression", "today + 15 days"))
    assert one("target_close_date", rule) == ("2027-01-31", [])


def test_an_optional_target_with_no_value_and_no_fallback_is_left_out():
    result = apply(mapping(description=Rule("field", "Description")), sf_record(Description=None))
    assert result.errors == []
    assert "description" not in result.data
    assert None not in result.data.values()


def test_an_empty_value_and_an_empty_fallback_is_an_error_naming_the_field():
    rule = Rule("field", "CloseDate", fallback=Rule("expression", "Missing__c"))
    result = apply(mapping(target_close_date=rule), sf_record(CloseDate=None))
    assert [str(e) for e in result.errors] == [
        "target_close_date: Salesforce field CloseDate is empty and the fallback gave nothing"
    ]
    assert "target_close_date" not in result.data


def test_a_field_fallback_that_is_empty_too_is_named():
    rule = Rule("field", "CloseDate", fallback=Rule("field", "Other__c"))
    assert one("target_close_date", rule, sf_record(CloseDate=None))[1] == [
        "Salesforce field CloseDate is empty and the fallback gave nothing (Salesforce field Other__c is empty)"
    ]


def test_a_required_target_with_no_value_says_to_add_a_fallback():
    result = apply(mapping(), sf_record(Name="  "))
    assert result.errors == [
        FieldError(
            "title",
            "Salesforce field Name is empty; Clazar needs a title: add a fallback (a constant or an "
            "expression)",
        )
    ]
    assert "title" not in result.data
    assert not result.ok


# --- value maps ------------------------------------------------------------------------------------------


def test_a_value_map_turns_salesforce_values_into_clazar_values():
    rule = Rule("field", "StageName", values={"Closed Won": "launched", "Prospecting": "prospect"})
    assert one("stage", rule) == ("launched", [])
    assert one("stage", rule, sf_record(StageName="Prospecting")) == ("prospect", [])


def test_an_exact_value_map_entry_wins_over_a_case_insensitive_one():
    rule = Rule("field", "StageName", values={"closed won": "launched", "CLOSED WON": "closed_lost"})
    assert one("stage", rule, sf_record(StageName="CLOSED WON"))[0] == "closed_lost"
    assert one("stage", rule, sf_record(StageName="closed won"))[0] == "launched"


def test_a_value_map_matches_ignoring_case_and_surrounding_spaces():
    rule = Rule("field", "StageName", values={"Closed Won": "launched"})
    assert one("stage", rule, sf_record(StageName=" closed WON "))[0] == "launched"


def test_an_unmapped_value_is_kept_without_a_default():
    rule = Rule("field", "StageName", values={"Closed Won": "launched"})
    assert one("stage", rule, sf_record(StageName="Discovery"))[0] == "Discovery"


def test_an_unmapped_value_takes_the_default_when_there_is_one():
    rule = Rule("field", "StageName", values={"Closed Won": "launched"}, values_default="qualified")
    assert one("stage", rule, sf_record(StageName="Discovery"))[0] == "qualified"
    assert one("stage", rule)[0] == "launched"


def test_a_value_mapped_to_nothing_goes_to_the_fallback():
    rule = Rule(
        "field", "Cloud_Provider__c", fallback=Rule("constant", "gcp"), values={"Other": "", "AWS": "aws"}
    )
    assert one("cloud", rule, sf_record(Cloud_Provider__c="Other")) == ("gcp", [])


def test_a_required_value_mapped_to_nothing_says_so():
    rule = Rule("field", "Cloud_Provider__c", values={"Other": ""})
    assert one("cloud", rule, sf_record(Cloud_Provider__c="Other"))[1] == [
        "Salesforce field Cloud_Provider__c is 'Other', which the value map turns into nothing; Clazar "
        "needs a cloud: add a fallback (a constant or an expression)"
    ]


def test_a_value_map_reads_numbers_and_booleans_as_text():
    rule = Rule("field", "Flag__c", values={"true": "Strategic", "3": "Three"})
    assert one("description", rule, sf_record(Flag__c=True))[0] == "Strategic"
    assert one("description", rule, sf_record(Flag__c=3))[0] == "Three"


# --- target kinds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("AWS", "aws"),
        ("Amazon Web Services", "aws"),
        ("azure", "azure"),
        ("Microsoft  Azure", "azure"),
        ("GCP", "gcp"),
        ("Google Cloud", "gcp"),
    ],
)
def test_cloud_names_are_recognised_case_insensitively(given, expected):
    assert one("cloud", Rule("field", "Cloud_Provider__c"), sf_record(Cloud_Provider__c=given)) == (
        expected,
        [],
    )


def test_an_unknown_cloud_is_an_error_pointing_at_the_value_map():
    result = apply(mapping(cloud=Rule("field", "Cloud_Provider__c")), sf_record(Cloud_Provider__c="Alibaba"))
    assert [str(e) for e in result.errors] == [
        "cloud: 'Alibaba' is not one of aws, azure, gcp — add it to the value map"
    ]
    assert BY_NAME["cloud"].choices == CLOUDS


def test_text_is_stripped_and_numbers_and_dates_become_text():
    assert one("description", Rule("field", "Description"), sf_record(Description="  hi \n"))[0] == "hi"
    assert one("description", Rule("field", "Amount"))[0] == "1200.5"
    assert one("description", Rule("expression", "today"))[0] == "2026-11-25"


def test_a_title_longer_than_255_characters_is_an_error_with_a_way_out():
    value, errors = one("title", Rule("field", "Name"), sf_record(Name="x" * 256))
    assert value is None
    assert errors == [
        "the value is 256 characters long; Clazar takes at most 255: shorten it with an expression such "
        "as Name[:255]"
    ]
    assert one("title", Rule("expression", "Name[:255]"), sf_record(Name="x" * 256))[0] == "x" * 255


def test_a_description_may_have_10000_characters_and_no_more():
    assert one("description", Rule("field", "Description"), sf_record(Description="d" * 10_000))[1] == []
    errors = one("description", Rule("field", "Description"), sf_record(Description="d" * 10_001))[1]
    assert errors[0].startswith("the value is 10,001 characters long; Clazar takes at most 10,000")


def test_an_object_where_text_is_expected_is_an_error():
    assert one("title", Rule("field", "Account"))[1] == [
        "the value is an object, not text; pick a field that holds text"
    ]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("acme.com", "https://acme.com"),
        ("www.acme.co.uk/about", "https://www.acme.co.uk/about"),
        ("http://acme.com", "http://acme.com"),
        ("  https://acme.com:8443/x?y=1  ", "https://acme.com:8443/x?y=1"),
    ],
)
def test_websites_become_http_urls(given, expected):
    assert one("customer_website", Rule("constant", given)) == (expected, [])


@pytest.mark.parametrize(
    "given",
    ["acme", "ftp://acme.com", "not a url", "https://user@acme.com", "https://acme..com", "http://-a.com"],
)
def test_anything_but_an_http_url_with_a_dotted_host_is_an_error(given):
    value, errors = one(
        "customer_website", Rule("field", "Account.Website"), sf_record(Account={"Website": given})
    )
    assert value is None
    assert errors == [f"{given!r} is not a web address; use a site such as acme.com or https://acme.com"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("US", "US"),
        ("de", "DE"),
        ("United States", "US"),
        ("USA", "US"),
        ("U.S.A.", "US"),
        ("Germany", "DE"),
        ("the Netherlands", "NL"),
        ("UK", "GB"),
    ],
)
def test_countries_become_iso_codes(given, expected):
    record = sf_record(Account={"BillingCountry": given})
    assert one("customer_country", Rule("field", "Account.BillingCountry"), record) == (expected, [])


@pytest.mark.parametrize("given", ["Narnia", "XX", "U", 49])
def test_an_unknown_country_is_an_error(given):
    record = sf_record(Account={"BillingCountry": given})
    assert one("customer_country", Rule("field", "Account.BillingCountry"), record)[1] == [
        f"{given!r} is not a country; use a 2-letter ISO code such as US or DE (or a common name such as "
        "United States), or add it to the value map"
    ]


@pytest.mark.parametrize(
    "given",
    [
        "2027-01-31",
        "2027-01-31T10:00:00.000+0000",
        "2027-01-31T23:00:00Z",
        date(2027, 1, 31),
        datetime(2027, 1, 31, 8, tzinfo=UTC),
    ],
)
def test_dates_and_datetimes_become_iso_dates(given):
    assert one("target_close_date", Rule("field", "CloseDate"), sf_record(CloseDate=given)) == (
        "2027-01-31",
        [],
    )


@pytest.mark.parametrize("given", ["31/01/2027", "2027-02-30", "soon", 20270131])
def test_something_that_is_not_a_date_is_an_error(given):
    assert one("target_close_date", Rule("field", "CloseDate"), sf_record(CloseDate=given))[1] == [
        f"{given!r} is not a date; use YYYY-MM-DD (e.g. 2027-01-31) or a Salesforce date or datetime"
    ]


@pytest.mark.parametrize(
    ("given", "expected"), [(1200, 1200), (1200.5, 1200.5), ("1200.50", 1200.5), (" 42 ", 42), ("-3", -3)]
)
def test_numbers_and_numeric_text_become_numbers(given, expected):
    value, errors = one("expected_revenue", Rule("field", "Amount"), sf_record(Amount=given))
    assert (value, errors) == (expected, [])
    assert type(value) is type(expected)


@pytest.mark.parametrize("given", [True, "lots", "1,200", float("nan"), float("inf"), "1e999"])
def test_booleans_and_non_numbers_are_not_revenue(given):
    assert one("expected_revenue", Rule("field", "Amount"), sf_record(Amount=given))[1] == [
        f"{given!r} is not a number; use digits such as 1200 or 1200.50"
    ]


def test_stage_help_lists_the_clazar_stages():
    stage = BY_NAME["stage"]
    assert stage.kind == "text"
    assert all(name in stage.help for name in STAGES)
    assert [t.name for t in TARGETS if t.required] == list(REQUIRED_FIELDS["opportunities"])


# --- expressions -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("today + 15 days", "2026-12-10"),
        ("today - 3 days", "2026-11-22"),
        ("today + 1 day", "2026-11-26"),
        ("today + days(15)", "2026-12-10"),
        ("CloseDate or today + 15 days", "2026-12-10"),
        ("date(SystemModstamp) + 2 days", "2026-11-27"),
    ],
)
def test_date_expressions_and_the_days_shorthand(expression, expected):
    record = sf_record(CloseDate=None)
    assert one("target_close_date", Rule("expression", expression), record) == (expected, [])


def test_the_shorthand_leaves_text_in_quotes_alone():
    assert one("description", Rule("expression", "'closes in 3 days'"))[0] == "closes in 3 days"


def test_now_defaults_to_midnight_utc_of_today_and_can_be_given():
    m = mapping(description=Rule("expression", "now"))
    assert apply(m, sf_record()).data["description"] == "2026-11-25T00:00:00+00:00"
    given = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
    assert apply(m, sf_record(), now=given).data["description"] == "2026-11-25T09:30:00+00:00"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("Name|upper", "BIG DEAL"),
        ("Name|title", "Big Deal"),
        ("'  x  '|trim", "x"),
        ("Name|replace('Big', 'Huge')", "Huge deal"),
        ("Missing__c|default('none')", "none"),
        ("Amount|round|int", "1200"),
        ("'12.5'|float * 2", "25.0"),
        ("Account['Name']|lower", "acme"),
    ],
)
def test_the_expression_filters(expression, expected):
    assert one("description", Rule("expression", expression)) == (expected, [])


def test_a_syntax_error_is_named_at_from_json_time():
    errors = invalid(json_with(target_close_date=rule_json("expression", "CloseDate or (today +")))
    assert list(errors) == ["target_close_date"]
    assert errors["target_close_date"][0].startswith("The rule's expression has a syntax error: unexpected")


def test_a_syntax_error_in_a_fallback_is_named_as_the_fallback():
    bad = rule_json("field", "CloseDate", fallback=rule_json("expression", "today +"))
    errors = invalid(json_with(target_close_date=bad))
    assert errors["target_close_date"][0].startswith("The fallback's expression has a syntax error")


def test_an_expression_longer_than_500_characters_is_refused():
    errors = invalid(json_with(description=rule_json("expression", "Name ~ " + "'x' ~ " * 100 + "'y'")))
    assert "at most 500" in errors["description"][0]


def test_an_unknown_filter_is_refused_with_the_ones_available():
    errors = invalid(json_with(description=rule_json("expression", "Name|center(999999)")))
    assert errors["description"] == [
        "The rule's expression uses the filter 'center', which is not available; use one of lower, upper, "
        "trim, title, replace, default, round, int, float."
    ]


@pytest.mark.parametrize("expression", ["().__class__", "Name.__class__.__mro__", "Account['__dict__']"])
def test_underscored_names_are_refused_before_anything_runs(expression):
    errors = invalid(json_with(description=rule_json("expression", expression)))
    assert "can't use names starting with _" in errors["description"][0]


def test_the_sandbox_refuses_underscored_attributes_reached_at_run_time():
    result = apply(mapping(description=Rule("expression", "Name[Key]")), sf_record(Key="__class__"))
    assert [str(e) for e in result.errors] == [
        "description: the expression was refused by the sandbox: access to '__class__' of a str is not "
        "allowed"
    ]


@pytest.mark.parametrize(
    "expression",
    [
        "'x' * 1000000",
        "Name|replace('', 'y' * 1000)|replace('', 'z' * 1000)",
        "2 ** 100000000",
        "'%s' % Name",
    ],
)
def test_the_sandbox_bounds_what_an_expression_can_build(expression):
    errors = one("description", Rule("expression", expression))[1]
    assert len(errors) == 1
    assert errors[0].startswith("the expression was refused by the sandbox")


@pytest.mark.parametrize("expression", ["Name.format(1)", "Name.ljust(99999999)", "range(10)", "lipsum()"])
def test_expressions_get_no_python_helpers_or_padding(expression):
    errors = one("description", Rule("expression", expression))[1]
    assert len(errors) == 1
    assert errors[0].startswith("the expression")


def test_a_parent_record_shows_its_fields_not_dict_methods():
    assert one("description", Rule("expression", "Account.items"))[0] is None
    assert one("description", Rule("expression", "Account.Name.lower()"))[0] == "acme"


def test_an_expression_failing_on_one_record_is_that_records_error():
    m = mapping(expected_revenue=Rule("expression", "Amount * 0.8"))
    results = preview(m, [sf_record(), sf_record(Amount=None), sf_record(Amount="n/a")], today=TODAY)
    assert results[0].data["expected_revenue"] == pytest.approx(960.4)
    assert [str(e) for e in results[1].errors] == [
        "expected_revenue: the expression failed: Amount is empty or missing"
    ]
    assert results[2].errors[0].message.startswith("the expression failed: TypeError")
    assert results[1].data["title"] == "Big deal"


def test_an_expression_that_divides_by_zero_is_an_error_not_an_exception():
    assert one("expected_revenue", Rule("expression", "Amount / 0"))[1] == [
        "the expression failed: ZeroDivisionError: float division by zero"
    ]


# --- custom properties -----------------------------------------------------------------------------------


def test_custom_properties_are_nested_under_custom_properties():
    m = Mapping(
        dict(REQUIRED),
        {
            "sf_opportunity_id": Rule("field", "Id"),
            "closes": Rule("expression", "today + 15 days"),
            "amount": Rule("field", "Amount"),
            "empty": Rule("field", "Missing__c"),
        },
    )
    result = apply(m, sf_record())
    assert result.errors == []
    assert result.data["custom_properties"] == {
        "sf_opportunity_id": "0065g00000AbCdEAAV",
        "closes": "2026-12-10",
        "amount": 1200.5,
    }


def test_no_custom_properties_key_when_none_produced_a_value():
    m = Mapping(dict(REQUIRED), {"region": Rule("field", "Region__c")})
    assert "custom_properties" not in apply(m, sf_record()).data


def test_a_custom_property_error_names_the_property():
    m = Mapping(dict(REQUIRED), {"region": Rule("expression", "Amount / 0")})
    assert [e.target for e in apply(m, sf_record()).errors] == ["custom_properties.region"]


@pytest.mark.parametrize("name", ["region", "a", "sf_id_2", "x" * 64])
def test_good_custom_property_names(name):
    data = json_with()
    data["custom_properties"] = {name: rule_json("constant", "EMEA")}
    assert Mapping.from_json(data).custom_properties == {name: Rule("constant", "EMEA")}


@pytest.mark.parametrize("name", ["Region", "2nd", "_x", "has space", "x" * 65, "ümlaut", ""])
def test_bad_custom_property_names_are_named_in_the_error(name):
    data = json_with()
    data["custom_properties"] = {name: rule_json("constant", "EMEA")}
    errors = invalid(data)
    assert list(errors) == [f"custom_properties.{name}"]
    assert "can't be a custom property name" in errors[f"custom_properties.{name}"][0]


# --- from_json / to_json ---------------------------------------------------------------------------------


def test_a_mapping_needs_the_required_targets():
    errors = invalid({"fields": {}, "custom_properties": {}})
    assert errors == {
        "title": ["Clazar needs a title: choose a Salesforce field, a constant or an expression."],
        "cloud": ["Clazar needs a cloud: choose a Salesforce field, a constant or an expression."],
        "customer_company": [
            "Clazar needs a customer company: choose a Salesforce field, a constant or an expression."
        ],
    }


def test_from_json_accepts_rules_without_the_optional_keys():
    data = {"fields": {name: {"source": r.source, "value": r.value} for name, r in REQUIRED.items()}}
    assert Mapping.from_json(data) == mapping()


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"source": "", "value": ""},
            "The rule needs a source: a Salesforce field, a constant or an expression.",
        ),
        (
            {"source": "query", "value": "x"},
            "The rule's source must be 'field', 'constant' or 'expression', not 'query'.",
        ),
        (
            {"source": "field", "value": ""},
            "The rule reads a Salesforce field: choose one, e.g. Name or Account.Name.",
        ),
        (
            {"source": "constant", "value": " "},
            "The rule is a constant: type the value, or choose another source.",
        ),
        ({"source": "field", "value": 5}, "The rule's value must be text, not 5."),
        ({"source": "constant", "value": "x", "extra": 1}, "The rule has unknown keys 'extra'."),
        (
            {"source": "constant", "value": "x", "values": {"a": 1}},
            'The rule\'s value map must be an object of text to text, such as {"Closed Won": "launched"}.',
        ),
        (
            {
                "source": "field",
                "value": "A",
                "fallback": {"source": "constant", "value": "b", "fallback": None},
            },
            None,
        ),
        (
            {
                "source": "field",
                "value": "A",
                "fallback": {
                    "source": "field",
                    "value": "B",
                    "fallback": {"source": "constant", "value": "c"},
                },
            },
            "A fallback can't have a fallback of its own.",
        ),
        ("Name", 'The rule must be an object such as {"source": "field", "value": "Name"}.'),
    ],
)
def test_from_json_says_what_is_wrong_with_a_rule(rule, message):
    data = json_with(description=rule)
    if message is None:
        Mapping.from_json(data)
        return
    assert invalid(data) == {"description": [message]}


def test_a_bad_field_name_is_explained():
    errors = invalid(json_with(description=rule_json("field", "Account Name")))
    assert errors["description"][0].startswith("The rule: 'Account Name' is not a Salesforce field name")


def test_an_unknown_target_is_named_with_the_known_ones():
    errors = invalid(json_with(budget=rule_json("constant", "1")))
    assert errors["budget"][0].startswith(
        "'budget' is not a Clazar opportunity field; use one of title, cloud"
    )


def test_a_constant_that_can_never_be_valid_is_refused_when_saved():
    assert invalid(json_with(cloud=rule_json("constant", "alibaba"))) == {
        "cloud": ["The rule's constant is not one of aws, azure, gcp."]
    }


def test_a_value_map_entry_that_can_never_be_valid_is_refused_when_saved():
    data = json_with(cloud=rule_json("field", "Cloud_Provider__c", values={"AWS": "aws", "Ali": "alibaba"}))
    assert invalid(data) == {
        "cloud": ["The rule's value map turns 'Ali' into 'alibaba', which is not one of aws, azure, gcp."]
    }


@pytest.mark.parametrize("data", [None, [], "x", 3, {"fields": []}, {"fields": {}, "other": 1}])
def test_from_json_refuses_what_is_not_a_mapping(data):
    errors = invalid(data)
    assert errors
    assert all(isinstance(m, str) and m for messages in errors.values() for m in messages)


def test_the_error_text_names_each_key():
    with pytest.raises(MappingInvalid) as caught:
        Mapping.from_json({"fields": {"title": rule_json("constant", "")}})
    assert str(caught.value).startswith("title: The rule is a constant")


def test_compile_mapping_checks_a_mapping_built_in_code():
    with pytest.raises(MappingInvalid) as caught:
        compile_mapping(mapping(description=Rule("expression", "today +")))
    assert list(caught.value.errors) == ["description"]


_FIELDS = st.sampled_from(["Name", "Account.Name", "CloseDate", "Amount", "Custom__c", "Owner.Manager.Email"])
_EXPRESSIONS = st.sampled_from(
    ["today + 15 days", "Name|upper", "Account.Name ~ ' deal'", "Amount * 2", "CloseDate or today", "'a'"]
)
_TEXT = st.text(min_size=1, max_size=40).filter(str.strip)
_VALID = {
    "title": _TEXT,
    "cloud": st.sampled_from(["aws", "AWS", "azure", "Google Cloud"]),
    "customer_company": _TEXT,
    "customer_website": st.sampled_from(["acme.com", "https://www.example.org/x"]),
    "customer_country": st.sampled_from(["US", "Germany", "fr"]),
    "target_close_date": st.sampled_from(["2027-01-31", "2026-12-01T10:00:00Z"]),
    "stage": st.sampled_from(STAGES),
    "expected_revenue": st.sampled_from(["1200", "0.5", "-3"]),
    "description": _TEXT,
    None: _TEXT,
}


@st.composite
def _rules(draw: st.DrawFn, target: str | None, nested: bool = False) -> Rule:
    source = draw(st.sampled_from(["field", "constant", "expression"]))
    value = draw({"field": _FIELDS, "constant": _VALID[target], "expression": _EXPRESSIONS}[source])
    outputs = st.one_of(st.just(""), _VALID[target])
    values = draw(st.dictionaries(st.text(max_size=15), outputs, max_size=4))
    default = draw(st.one_of(st.none(), _VALID[target]))
    fallback = None if nested else draw(st.one_of(st.none(), _rules(target, nested=True)))
    return Rule(source, value, fallback, values, default)


@st.composite
def _mappings(draw: st.DrawFn) -> Mapping:
    names = [t.name for t in TARGETS if t.required] + draw(
        st.lists(st.sampled_from([t.name for t in TARGETS if not t.required]), unique=True)
    )
    fields = {name: draw(_rules(name)) for name in names}
    custom_names = st.from_regex(r"[a-z][a-z0-9_]{0,63}", fullmatch=True)
    custom = draw(st.dictionaries(custom_names, _rules(None), max_size=3))
    return Mapping(fields, custom)


@FUZZ
@given(_mappings())
def test_to_json_and_from_json_round_trip_exactly(m):
    data = m.to_json()
    assert json.loads(json.dumps(data)) == data
    again = Mapping.from_json(data)
    assert again == m
    assert again.to_json() == data
    assert isinstance(compile_mapping(again), Compiled)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_RULE_KEYS = st.sampled_from(["source", "value", "fallback", "values", "values_default", "other"])
_RULE_VALUES = st.one_of(
    st.sampled_from(["field", "constant", "expression", "Name", "today + 3 days", "aws"]),
    st.text(max_size=60),
    _JSON_VALUES,
)
_RULE_LIKE = st.recursive(
    st.dictionaries(_RULE_KEYS, _RULE_VALUES, max_size=5),
    lambda inner: st.dictionaries(_RULE_KEYS, st.one_of(_RULE_VALUES, inner), max_size=5),
    max_leaves=6,
)
_TARGET_NAMES = st.sampled_from([t.name for t in TARGETS] + ["budget", ""])


@FUZZ
@given(
    st.one_of(
        _JSON_VALUES,
        st.fixed_dictionaries(
            {},
            optional={
                "fields": st.one_of(st.dictionaries(_TARGET_NAMES, _RULE_LIKE, max_size=6), _JSON_VALUES),
                "custom_properties": st.one_of(
                    st.dictionaries(st.text(max_size=8), _RULE_LIKE, max_size=3), _JSON_VALUES
                ),
            },
        ),
    )
)
def test_from_json_raises_nothing_but_mapping_invalid(data):
    try:
        m = Mapping.from_json(data)
    except MappingInvalid as exc:
        assert exc.errors
        assert all(isinstance(k, str) for k in exc.errors)
        assert all(isinstance(msg, str) and msg for messages in exc.errors.values() for msg in messages)
    else:
        assert Mapping.from_json(m.to_json()) == m


@FUZZ
@given(st.text(max_size=120))
def test_any_expression_text_either_compiles_or_is_named_as_invalid(text):
    try:
        m = Mapping.from_json(json_with(description=rule_json("expression", text)))
    except MappingInvalid as exc:
        assert list(exc.errors) == ["description"]
    else:
        result = compile_mapping(m).apply(sf_record(), today=TODAY)
        assert isinstance(result, Result)


@FUZZ
@given(st.dictionaries(st.sampled_from([*sf_record(), "Region__c"]), _JSON_VALUES))
def test_apply_never_raises_on_odd_records(record):
    m = suggest(DESCRIBE)
    m = Mapping(
        {**m.fields, "description": Rule("expression", "Description|trim ~ Amount")},
        {"closes": Rule("expression", "date(CloseDate) + 3 days"), "raw": Rule("field", "Account")},
    )
    result = compile_mapping(m).apply(record, today=TODAY)
    assert set(result.data) <= {t.name for t in TARGETS} | {"custom_properties"}
    assert None not in result.data.values()
    assert {e.target for e in result.errors}.isdisjoint(result.data)


def test_apply_reports_a_record_that_is_not_an_object():
    result = apply(mapping(), ["not", "a", "record"])
    assert result.data == {}
    assert [e.target for e in result.errors] == ["record"]


# --- source_fields ---------------------------------------------------------------------------------------


def test_source_fields_lists_every_field_the_mapping_reads_sorted():
    m = Mapping(
        {
            **REQUIRED,
            "target_close_date": Rule("field", "CloseDate", fallback=Rule("field", "Fallback_Date__c")),
            "description": Rule(
                "expression", "Name.lower() ~ Owner['Email'] ~ today ~ days(2) ~ Owner.Manager.Name"
            ),
            "stage": Rule("constant", "qualified"),
        },
        {"region": Rule("expression", "Account.BillingCountry|upper")},
    )
    assert source_fields(m) == [
        "Account.BillingCountry",
        "Account.Name",
        "CloseDate",
        "Fallback_Date__c",
        "Name",
        "Owner.Email",
        "Owner.Manager.Name",
    ]


def test_source_fields_names_a_field_once_whatever_its_case():
    m = mapping(description=Rule("field", "name"))
    assert source_fields(m) == ["Account.Name", "Name"]


def test_source_fields_leaves_out_what_is_not_a_field_name():
    m = mapping(description=Rule("expression", "Account['Billing Country'] ~ (Name or Other__c).X"))
    assert source_fields(m) == ["Account.Name", "Name", "Other__c"]


# --- suggest ---------------------------------------------------------------------------------------------


def _describe_field(name: str, type_: str, relationship: str | None = None, to: list[str] | None = None):
    return {"name": name, "type": type_, "relationshipName": relationship, "referenceTo": to or []}


DESCRIBE = [
    _describe_field("Id", "id"),
    _describe_field("IsDeleted", "boolean"),
    _describe_field("AccountId", "reference", "Account", ["Account"]),
    _describe_field("Name", "string"),
    _describe_field("Description", "textarea"),
    _describe_field("StageName", "picklist"),
    _describe_field("Amount", "currency"),
    _describe_field("Probability", "percent"),
    _describe_field("CloseDate", "date"),
    _describe_field("Type", "picklist"),
    _describe_field("OwnerId", "reference", "Owner", ["User"]),
    _describe_field("CreatedDate", "datetime"),
    _describe_field("SystemModstamp", "datetime"),
    _describe_field("Cloud_Provider__c", "picklist"),
]


def test_suggest_maps_the_usual_opportunity_fields():
    m = suggest(DESCRIBE)
    assert m.fields["title"] == Rule("field", "Name")
    assert m.fields["cloud"] == Rule(
        "field",
        "Cloud_Provider__c",
        fallback=Rule("constant", "aws"),
        values={"AWS": "aws", "Azure": "azure", "GCP": "gcp"},
    )
    assert m.fields["customer_company"] == Rule("field", "Account.Name")
    assert m.fields["customer_website"] == Rule("field", "Account.Website")
    assert m.fields["customer_country"] == Rule("field", "Account.BillingCountry")
    assert m.fields["target_close_date"] == Rule(
        "field", "CloseDate", fallback=Rule("expression", "today + 15 days")
    )
    assert m.fields["stage"].values["Closed Won"] == "launched"
    assert m.fields["stage"].values["Closed Lost"] == "closed_lost"
    assert set(m.fields["stage"].values.values()) <= set(STAGES)
    assert m.fields["expected_revenue"] == Rule("field", "Amount")
    assert m.fields["description"] == Rule("field", "Description")
    assert m.custom_properties == {}
    assert Mapping.from_json(m.to_json()) == m


def test_suggest_maps_every_standard_stage():
    stages = suggest(DESCRIBE).fields["stage"].values
    standard = [
        "Prospecting",
        "Qualification",
        "Needs Analysis",
        "Value Proposition",
        "Id. Decision Makers",
        "Perception Analysis",
        "Proposal/Price Quote",
        "Negotiation/Review",
        "Closed Won",
        "Closed Lost",
    ]
    assert list(stages) == standard
    results = preview(suggest(DESCRIBE), [sf_record(StageName=s) for s in standard], today=TODAY)
    assert [r.data["stage"] for r in results] == [stages[s] for s in standard]


def test_suggest_uses_only_fields_the_org_has():
    describe = [f for f in DESCRIBE if f["name"] not in ("Cloud_Provider__c", "AccountId", "Description")]
    m = suggest(describe)
    assert m.fields["cloud"] == Rule("constant", "aws")
    assert {"customer_company", "customer_website", "customer_country", "description"}.isdisjoint(m.fields)
    assert "customer_company" in invalid(m.to_json())  # the page asks for it


def test_suggest_ignores_odd_describe_entries():
    assert suggest([{}, {"name": None}, "x", {"relationshipName": 3}]).fields == {
        "cloud": Rule("constant", "aws")
    }  # type: ignore[list-item]


# --- compiling once --------------------------------------------------------------------------------------


def test_ten_thousand_records_reuse_one_compilation(monkeypatch):
    calls = []
    real = mapping_module._ENV.compile_expression

    def counting(source: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(mapping_module._ENV, "compile_expression", counting)
    m = mapping(
        target_close_date=Rule("field", "CloseDate", fallback=Rule("expression", "today + 15 days")),
        description=Rule("expression", "Name ~ ' / ' ~ Account.Name"),
    )
    compiled = compile_mapping(m)
    assert len(calls) == 2
    records = [sf_record(Name=f"Deal {i}", CloseDate=None if i % 2 else "2027-01-31") for i in range(10_000)]
    results = [compiled.apply(r, today=TODAY) for r in records]
    assert len(calls) == 2
    assert all(r.ok for r in results)
    assert results[9_999].data["description"] == "Deal 9999 / Acme"
    assert results[1].data["target_close_date"] == "2026-12-10"
