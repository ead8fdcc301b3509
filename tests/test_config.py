"""DestinationConfig: reading, writing and validating a destination's settings (pure, no database)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clazar_dest.clazar.endpoints import BY_KEY, ENDPOINTS
from flows.config import (
    FORBIDDEN_HEADERS,
    MAX_BATCH,
    Batching,
    DestinationConfig,
    macros,
    origin_of,
    parse_other_props,
    scan_headers,
)

BASE = "https://api.clazar.io"
SIM = "http://127.0.0.1:8765"


def advanced(url: str = f"{BASE}/private_offers/{{id}}/", **kwargs: object) -> DestinationConfig:
    return DestinationConfig(mode="advanced", method=str(kwargs.pop("method", "PUT")), url=url, **kwargs)  # type: ignore[arg-type]


def template(key: str, id_value: str = "", **kwargs: object) -> DestinationConfig:
    return DestinationConfig(mode="template", template=key, id_value=id_value, **kwargs)  # type: ignore[arg-type]


def batched(**kwargs: object) -> Batching:
    return Batching(enabled=True, **kwargs)  # type: ignore[arg-type]


def url_errors(url: str, base: str = BASE) -> list[str]:
    return advanced(url).validate(base).get("url", [])


# --- reading and writing --------------------------------------------------------------------------------


def test_an_empty_config_reads_as_the_defaults():
    config = DestinationConfig.from_json({})
    assert config == DestinationConfig()
    assert config.mode == "template"
    assert config.batching.size == 100
    assert config.batching.enabled is False
    assert config.response_webhook is False


@pytest.mark.parametrize("raw", [None, [], "text", 3, {"batching": "nope", "exclude": 5}])
def test_unreadable_stored_values_fall_back_to_defaults(raw):
    assert DestinationConfig.from_json(raw) == DestinationConfig()


def test_from_json_normalises_case_numbers_and_exclude_text():
    config = DestinationConfig.from_json(
        {
            "mode": "Advanced",
            "method": "patch",
            "id_value": 42,
            "exclude": "a, b.c\nd,,a",
            "batching": {"enabled": "on", "size": "250"},
            "response_webhook": 1,
        }
    )
    assert config.mode == "advanced"
    assert config.method == "PATCH"
    assert config.id_value == "42"
    assert config.exclude == ("a", "b.c", "d")
    assert config.batching.enabled is True
    assert config.batching.size == 250
    assert config.response_webhook is True


def test_an_unreadable_batch_size_becomes_an_error_not_a_silent_default():
    config = DestinationConfig.from_json(
        {"template": "create_listing", "batching": {"enabled": True, "size": "lots"}}
    )
    assert "batching.size" in config.validate(BASE)


def test_to_json_round_trips_and_keeps_a_stable_key_order():
    config = advanced(
        headers="X-Team:ops",
        exclude=("secret", "a.b"),
        batching=batched(size=7, algorithm="code", code="{{ records|tojson }}"),
        response_webhook=True,
    )
    data = config.to_json()
    assert DestinationConfig.from_json(data) == config
    assert list(data) == [
        "mode",
        "template",
        "id_value",
        "method",
        "content_format",
        "url",
        "headers",
        "exclude",
        "batching",
        "response_webhook",
    ]
    assert data["exclude"] == ["secret", "a.b"]


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
configs = st.builds(
    DestinationConfig,
    mode=st.sampled_from(["template", "advanced"]),
    template=st.sampled_from(["", *BY_KEY]),
    id_value=texts.map(str.strip),
    method=st.sampled_from(["POST", "PUT", "PATCH", "DELETE"]),
    url=texts.map(str.strip),
    headers=texts.map(str.strip),
    exclude=st.lists(st.from_regex(r"[a-z]{1,5}(\.[a-z]{1,5})?", fullmatch=True), unique=True).map(tuple),
    batching=st.builds(
        Batching,
        enabled=st.booleans(),
        size=st.integers(-5, 2000),
        algorithm=st.sampled_from(["property", "code"]),
        property_name=st.from_regex(r"[a-z]{1,8}", fullmatch=True),
        other_props=texts,
        code=texts,
    ),
    response_webhook=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(configs)
def test_any_config_survives_a_trip_through_json(config):
    assert DestinationConfig.from_json(config.to_json()) == config


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(list(DestinationConfig().to_json())), json_values))
def test_reading_and_validating_any_stored_json_never_raises(data):
    config = DestinationConfig.from_json(data)
    assert isinstance(config.validate(BASE), dict)
    assert isinstance(config.describe(), str)


# --- helpers for the wizard -----------------------------------------------------------------------------


def test_macros_lists_each_attribute_once_in_order():
    assert macros("/a/{id}/b/{account.id}?x={id}&y={ name }") == ["id", "account.id", "name"]
    assert macros("no macros") == []


def test_endpoint_and_effective_method_follow_the_mode():
    assert template("update_listing", "{id}").endpoint() is BY_KEY["update_listing"]
    assert template("update_listing", "{id}").effective_method() == "PUT"
    assert template("nope").endpoint() is None
    assert template("nope").effective_method() == ""
    assert advanced(method="PATCH").endpoint() is None
    assert advanced(method="PATCH").effective_method() == "PATCH"


def test_describe_gives_a_one_line_summary():
    assert template("create_private_offer").describe() == "Create Private Offer -> POST /private_offers/"
    assert template("publish_private_offer", "{id}").describe() == (
        "Publish Private Offer -> POST /private_offers/{id}/publish/"
    )
    assert advanced(method="PATCH").describe() == f"Advanced -> PATCH {BASE}/private_offers/{{id}}/"
    assert template("create_listing", batching=batched(size=50)).describe() == (
        "Create Listing -> POST /listings/, batches of 50 (in 'records')"
    )
    assert DestinationConfig().describe() == "No template chosen"


def test_attributes_lists_what_the_records_must_have():
    assert template("update_listing", "{listing.id}").attributes() == ["listing.id"]
    assert template("create_listing").attributes() == []
    assert advanced(f"{BASE}/x/{{a}}/?b={{b}}").attributes() == ["a", "b"]


# --- templates ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.key)
def test_every_catalog_template_is_valid_with_its_id(endpoint):
    config = template(endpoint.key, "{id}" if endpoint.id_param else "")
    assert config.validate(BASE) == {}


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e.id_param], ids=lambda e: e.key)
def test_a_template_with_an_id_parameter_needs_its_id(endpoint):
    errors = template(endpoint.key).validate(BASE)
    assert list(errors) == ["id_value"]
    assert endpoint.id_label in errors["id_value"][0]


def test_a_fixed_id_is_accepted():
    assert template("update_private_offer", "po-123").validate(BASE) == {}


@pytest.mark.parametrize("value", ["{", "}x", "{}", "{.id}", "{a..b}", ".."])
def test_a_malformed_id_macro_is_rejected(value):
    assert "id_value" in template("update_listing", value).validate(BASE)


def test_an_unknown_template_is_rejected_naming_the_known_ones():
    errors = template("create_widget").validate(BASE)
    assert "create_widget" in errors["template"][0]
    assert "create_listing" in errors["template"][0]


def test_no_template_chosen_is_rejected():
    assert DestinationConfig().validate(BASE) == {"template": ["Choose a template."]}


def test_an_unknown_mode_or_format_is_rejected():
    assert "mode" in DestinationConfig(mode="magic").validate(BASE)
    assert "content_format" in template("create_listing", content_format="xml").validate(BASE)


# --- the Advanced URL -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"{BASE}/private_offers/",
        f"{BASE}/private_offers/{{id}}/",
        f"{BASE}/x/{{account.id}}/?q={{q}}&r=1",
        "https://API.Clazar.io/listings/",
        "HTTPS://api.clazar.io:443/listings/",
    ],
)
def test_a_url_on_the_api_base_is_accepted(url):
    assert url_errors(url) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://api.clazar.io/listings/",  # another scheme
        "https://api.clazar.io:8443/listings/",  # another port
        "https://evil.com/listings/",  # another host
        "https://api.clazar.io.evil.com/listings/",  # a look-alike suffix
        "https://evil.com/https://api.clazar.io/",  # the base hidden in the path
        "https://clazar.io/listings/",  # the parent domain
        "https://api.clazar.io./listings/",  # trailing dot
        "ftp://api.clazar.io/listings/",
    ],
)
def test_a_url_off_the_api_base_is_rejected(url):
    assert url_errors(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://api.clazar.io@evil.com/",
        "https://api.clazar.io@evil.com/",
        "https://user:pw@api.clazar.io/listings/",
        "https://api.clazar.io:443@evil.com/",
    ],
)
def test_a_url_with_userinfo_is_rejected(url):
    assert "user name or password" in url_errors(url)[0]


@pytest.mark.parametrize(
    "url",
    [
        "https://api.clazar.io\\@evil.com/",
        "https://api.clazar.io\\.evil.com/",
        "https://api.clazar.io%2F.evil.com/",
        "https://api.clazar.io%2f@evil.com/",
        "https://api%2eclazar.io/",
        "https://{tenant}.clazar.io/listings/",
        "https://api.clazar.io:{port}/listings/",
        "https://api.clazar.io/list ings/",
        "https://api.clazar.io/listings/\r\nX: 1",
        "https://аpi.clazar.io/listings/",  # Cyrillic a
        "https://api.clazar.io#@evil.com/",
        "https://api.clazar.io?@evil.com/",
        "https://api.clazar.io",
        "https://api.clazar.io//evil.com/",
        f"{BASE}/listings/#frag",
        "api.clazar.io/listings/",
        "//api.clazar.io/listings/",
    ],
)
def test_a_url_that_could_be_read_two_ways_is_rejected(url):
    assert url_errors(url)


def test_macros_in_the_host_are_refused_with_a_clear_message():
    assert "not in the host" in url_errors("https://{tenant}.clazar.io/listings/")[0]


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "0177.0.0.1", "0x7f.0.0.1", "127.1", "127.0.0.01", "017700000001"],
)
def test_numeric_ip_tricks_are_rejected_even_against_a_loopback_base(host):
    errors = url_errors(f"http://{host}:8765/listings/", base=SIM)
    assert errors
    assert "IP address written as a number" in errors[0]


def test_the_simulator_base_accepts_its_own_address_only():
    assert url_errors(f"{SIM}/listings/", base=SIM) == []
    assert url_errors("http://localhost:8765/listings/", base=SIM)
    assert url_errors("http://127.0.0.1:8766/listings/", base=SIM)
    assert url_errors("https://127.0.0.1:8765/listings/", base=SIM)


def test_a_missing_or_overlong_url_is_rejected():
    assert "Enter the URL" in url_errors("")[0]
    assert "longer than" in url_errors(f"{BASE}/{'a' * 2000}")[0]


def test_an_unbalanced_brace_in_the_url_is_rejected():
    assert "not part of a {attribute} macro" in url_errors(f"{BASE}/x/{{id/")[0]


def test_origin_of_splits_strictly():
    assert origin_of("https://API.clazar.io/x?y=1") == ("https", "api.clazar.io", 443, "/x?y=1")
    assert origin_of("http://[::1]:8000/") == ("http", "[::1]", 8000, "/")
    with pytest.raises(ValueError, match="invalid port"):
        origin_of("https://api.clazar.io:99999/")


def test_an_advanced_method_must_be_one_of_the_four():
    assert "method" in advanced(method="GET").validate(BASE)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert advanced(method=method).validate(BASE) == {}


# --- headers --------------------------------------------------------------------------------------------


def test_headers_parse_as_name_value_pairs():
    pairs, problems = scan_headers("X-Team: ops , X-Trace:abc:def,")
    assert pairs == (("X-Team", "ops"), ("X-Trace", "abc:def"))
    assert problems == []


@pytest.mark.parametrize("text", ["X-A:1\r\nX-B:2", "X-A:1\nHost:evil", "X-A:1\r", "X-A:\x00"])
def test_headers_with_line_breaks_or_nul_are_rejected(text):
    errors = advanced(headers=text).validate(BASE)
    assert errors["headers"] == ["Headers can't contain line breaks or NUL characters."]


@pytest.mark.parametrize("name", sorted(FORBIDDEN_HEADERS))
@pytest.mark.parametrize("spell", [str.lower, str.upper, str.title])
def test_headers_the_transport_sets_cant_be_overridden(name, spell):
    errors = advanced(headers=f"{spell(name)}:x").validate(BASE)
    assert "can't be overridden" in errors["headers"][0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("X-A", "name:value"),
        (":value", "name:value"),
        ("X A:1", "letters, digits"),
        ("X-A:", "no value"),
        ("X-A:1,x-a:2", "given twice"),
        ("X-A:{id}", "sent as written"),
        ("X-A:\x07", "control characters"),
    ],
)
def test_malformed_headers_are_rejected_with_a_reason(text, expected):
    errors = advanced(headers=text).validate(BASE)
    assert expected in errors["headers"][0]


def test_required_forbidden_headers_include_the_five_named_in_the_design():
    assert {
        "authorization",
        "host",
        "content-type",
        "content-length",
        "transfer-encoding",
    } <= FORBIDDEN_HEADERS


# --- batching -------------------------------------------------------------------------------------------


def test_batching_on_a_create_template_is_valid():
    assert template("create_listing", batching=batched()).validate(BASE) == {}


def test_batching_on_delete_is_rejected_in_both_modes():
    assert (
        "DELETE"
        in template("delete_private_offer", "{id}", batching=batched()).validate(BASE)["batching.enabled"][0]
    )
    assert "DELETE" in advanced(method="DELETE", batching=batched()).validate(BASE)["batching.enabled"][0]


@pytest.mark.parametrize(
    "key", ["update_listing", "update_opportunity", "update_private_offer", "publish_private_offer"]
)
@pytest.mark.parametrize("id_value", ["{id}", "fixed-id"])
def test_batching_on_a_template_that_changes_one_object_is_rejected(key, id_value):
    errors = template(key, id_value, batching=batched()).validate(BASE)
    assert "one object per request" in errors["batching.enabled"][0]


def test_batching_in_advanced_mode_with_url_macros_is_allowed():
    assert advanced(method="PUT", batching=batched()).validate(BASE) == {}


@pytest.mark.parametrize(
    ("size", "ok"), [(0, False), (1, True), (MAX_BATCH, True), (MAX_BATCH + 1, False), (-3, False)]
)
def test_batch_size_must_be_in_range(size, ok):
    errors = template("create_listing", batching=batched(size=size)).validate(BASE)
    assert ("batching.size" not in errors) is ok


def test_batch_size_is_not_checked_while_batching_is_off():
    assert template("create_listing", batching=Batching(size=0)).validate(BASE) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1,}', "line 1 column 9"),
        ("[1, 2]", "must be a JSON object"),
        ('"text"', "must be a JSON object"),
        ('{"a": NaN}', "NaN is not valid JSON"),
        ('{"records": []}', "can't set 'records'"),
    ],
)
def test_other_props_must_be_a_json_object_that_leaves_the_property_alone(text, expected):
    errors = template("create_listing", batching=batched(other_props=text)).validate(BASE)
    assert expected in errors["batching.other_props"][0]


def test_other_props_may_be_blank_or_an_object():
    assert parse_other_props("  ") == {}
    assert parse_other_props('{"source": "crm", "n": 2}') == {"source": "crm", "n": 2}
    assert template("create_listing", batching=batched(other_props='{"x": 1}')).validate(BASE) == {}


def test_a_property_name_is_required():
    errors = template("create_listing", batching=batched(property_name="")).validate(BASE)
    assert "batching.property_name" in errors


def test_an_unknown_batching_algorithm_is_rejected():
    assert "batching.algorithm" in template("create_listing", batching=batched(algorithm="xml")).validate(
        BASE
    )


def test_a_code_template_that_does_not_compile_is_reported_with_its_line():
    code = '{"offers": [\n{% for r in records %}\n{{ r|tojson }\n{% endfor %}]}'
    errors = template("create_listing", batching=batched(algorithm="code", code=code)).validate(BASE)
    assert errors["batching.code"][0].startswith("Code template line 3:")


def test_a_code_template_using_an_unknown_filter_is_reported():
    errors = template(
        "create_listing", batching=batched(algorithm="code", code="\n{{ records|explode }}")
    ).validate(BASE)
    assert errors["batching.code"] == ["Code template line 2: No filter named 'explode'."]


def test_an_empty_code_template_is_rejected_with_an_example():
    errors = template("create_listing", batching=batched(algorithm="code", code="  ")).validate(BASE)
    assert "records|tojson" in errors["batching.code"][0]


def test_a_valid_code_template_passes():
    config = template(
        "create_listing", batching=batched(algorithm="code", code='{"items": {{ records|tojson }}}')
    )
    assert config.validate(BASE) == {}


def test_exclude_paths_must_be_well_formed():
    errors = template("create_listing", exclude=("a..b", ".a", "ok.path")).validate(BASE)
    assert len(errors["exclude"]) == 2


def test_validation_messages_name_the_field_and_the_expectation():
    errors = advanced("https://evil.com/x", method="GET", headers="Authorization:x").validate(BASE)
    assert set(errors) == {"method", "url", "headers"}
    assert "Method must be one of POST, PUT, PATCH, DELETE" in errors["method"][0]
    assert "API base https://api.clazar.io" in errors["url"][0]
    assert "Header Authorization" in errors["headers"][0]
