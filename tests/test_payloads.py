"""build_requests: records + destination config -> requests (pure, no database)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clazar_dest.clazar.endpoints import ENDPOINTS
from clazar_dest.clazar.spec import RecordError, RequestSpec
from flows.config import Batching, DestinationConfig
from flows.payloads import MAX_OUTPUT, ConfigError, build_requests, iter_requests, pretty, preview

BASE = "https://api.clazar.io"


def template(key: str, id_value: str = "", **kwargs: object) -> DestinationConfig:
    return DestinationConfig(template=key, id_value=id_value, **kwargs)  # type: ignore[arg-type]


def advanced(path: str, method: str = "PUT", **kwargs: object) -> DestinationConfig:
    return DestinationConfig(mode="advanced", method=method, url=BASE + path, **kwargs)  # type: ignore[arg-type]


def by_property(size: int = 100, **kwargs: object) -> Batching:
    return Batching(enabled=True, size=size, **kwargs)  # type: ignore[arg-type]


def by_code(code: str, size: int = 100) -> Batching:
    return Batching(enabled=True, size=size, algorithm="code", code=code)


def numbered(*rows: dict) -> list[tuple[int, dict]]:
    return list(enumerate(rows, start=1))


def body(spec: RequestSpec | RecordError) -> object:
    assert isinstance(spec, RequestSpec), spec
    return None if spec.body is None else json.loads(spec.body)


def code_errors(code: str, rows: list[tuple[int, dict]] | None = None) -> list[str]:
    out = build_requests(template("create_listing", batching=by_code(code)), rows or numbered({"a": 1}), BASE)
    assert all(isinstance(item, RecordError) for item in out), out
    return [item.message for item in out]


# --- templates ------------------------------------------------------------------------------------------

RECORD = {"id": "po 7/x", "name": "Offer", "buyer": "123456789012"}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.key)
def test_every_template_builds_its_method_path_and_body(endpoint):
    config = template(endpoint.key, "{id}" if endpoint.id_param else "")
    [spec] = build_requests(config, [(9, RECORD)], BASE)
    assert isinstance(spec, RequestSpec)
    assert spec.method == endpoint.method
    assert spec.url == BASE + endpoint.path_for("po 7/x" if endpoint.id_param else None)
    assert spec.body == (json.dumps(RECORD, separators=(",", ":")).encode() if endpoint.has_body else None)
    assert spec.seqs == (9,)
    assert spec.endpoint == endpoint.key
    assert spec.target_id == ("po 7/x" if endpoint.id_param else "")
    assert spec.headers == ()


def test_an_id_macro_is_filled_and_url_encoded():
    [spec] = build_requests(template("update_private_offer", "{id}"), [(1, {"id": "a/b c"})], BASE)
    assert spec.url == f"{BASE}/private_offers/a%2Fb%20c/"
    assert spec.target_id == "a/b c"


def test_a_fixed_id_is_url_encoded_and_used_for_every_record():
    out = build_requests(template("update_listing", "lst 1"), numbered({"x": 1}, {"x": 2}), BASE)
    assert [s.url for s in out] == [f"{BASE}/listings/lst%201/"] * 2
    assert {s.target_id for s in out} == {"lst 1"}


def test_an_id_may_mix_text_and_macros():
    [spec] = build_requests(template("update_listing", "lst-{n}"), [(1, {"n": 5})], BASE)
    assert spec.url == f"{BASE}/listings/lst-5/"


def test_numbers_and_booleans_fill_macros_as_json_would_write_them():
    out = build_requests(
        template("update_listing", "{v}"), numbered({"v": 17}, {"v": 1.5}, {"v": True}), BASE
    )
    assert [s.url.split("/")[-2] for s in out] == ["17", "1.5", "true"]


def test_delete_sends_no_body():
    [spec] = build_requests(template("delete_private_offer", "{id}"), [(1, {"id": "p1", "x": 1})], BASE)
    assert spec.method == "DELETE"
    assert spec.body is None


# --- advanced -------------------------------------------------------------------------------------------


def test_advanced_fills_nested_and_query_macros_and_sends_its_headers():
    config = advanced("/accounts/{account.id}/offers/?tag={tag}", "PATCH", headers="X-Team: ops,X-Env:test")
    [spec] = build_requests(config, [(3, {"account": {"id": "a/1"}, "tag": "x&y=z"})], BASE)
    assert spec.method == "PATCH"
    assert spec.url == f"{BASE}/accounts/a%2F1/offers/?tag=x%26y%3Dz"
    assert spec.headers == (("X-Team", "ops"), ("X-Env", "test"))
    assert spec.endpoint == ""
    assert spec.target_id == "/accounts/a%2F1/offers/"


def test_a_top_level_key_with_dots_wins_over_the_nested_path():
    [spec] = build_requests(advanced("/x/{a.b}/"), [(1, {"a.b": "flat", "a": {"b": "nested"}})], BASE)
    assert spec.url == f"{BASE}/x/flat/"


def test_advanced_delete_sends_no_body_and_post_has_no_ordering_key():
    [delete] = build_requests(advanced("/x/{id}/", "DELETE"), [(1, {"id": 1})], BASE)
    [post] = build_requests(advanced("/x/", "POST"), [(1, {"id": 1})], BASE)
    assert delete.body is None
    assert delete.target_id == "/x/1/"
    assert post.target_id == ""


def test_the_url_is_built_on_the_credential_base_even_if_written_differently():
    config = DestinationConfig(mode="advanced", method="POST", url="HTTPS://API.clazar.io:443/x/")
    [spec] = build_requests(config, [(1, {})], BASE)
    assert spec.url == f"{BASE}/x/"


def test_template_mode_ignores_advanced_headers():
    [spec] = build_requests(template("create_listing", headers="X-A:1"), [(1, {})], BASE)
    assert spec.headers == ()


def test_a_very_long_ordering_key_is_hashed_to_fit():
    [spec] = build_requests(advanced("/x/{id}/"), [(1, {"id": "a" * 400})], BASE)
    assert spec.target_id.startswith("sha256:")
    assert len(spec.target_id) <= 255


# --- per-record errors ----------------------------------------------------------------------------------


def test_a_record_missing_a_macro_attribute_is_an_error_and_the_others_go_on():
    rows = [(16, {"offer_id": "a"}), (17, {"name": "x"}), (18, {"offer_id": "c"})]
    out = build_requests(advanced("/private_offers/{offer_id}/"), rows, BASE)
    assert out[1] == RecordError(17, "Record 17 has no attribute 'offer_id' for the URL", ("offer_id",))
    assert [type(x) for x in out] == [RequestSpec, RecordError, RequestSpec]
    assert [x.seqs for x in (out[0], out[2])] == [(16,), (18,)]


def test_a_missing_template_id_names_the_id_label():
    [error] = build_requests(template("update_opportunity", "{opp}"), [(4, {})], BASE)
    assert error.message == "Record 4 has no attribute 'opp' for the Opportunity ID"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "has a null 'id'"),
        ([1], "has a list in 'id'"),
        ({"a": 1}, "has an object in 'id'"),
        ("", "has an empty value in 'id'"),
        ("..", "has '..' in 'id'"),
        (".", "has '.' in 'id'"),
        (float("nan"), "in 'id'; the URL needs text or a number"),
    ],
)
def test_unusable_macro_values_are_per_record_errors(value, expected):
    [error] = build_requests(advanced("/x/{id}/"), [(2, {"id": value})], BASE)
    assert isinstance(error, RecordError)
    assert expected in error.message


def test_a_nested_macro_through_a_non_object_is_missing():
    [error] = build_requests(advanced("/x/{a.b}/"), [(2, {"a": "text"})], BASE)
    assert error.message == "Record 2 has no attribute 'a.b' for the URL"


def test_a_record_that_is_not_an_object_is_an_error():
    [error] = build_requests(template("create_listing"), [(5, [1, 2])], BASE)
    assert error == RecordError(5, "Record 5 is not a JSON object, so it can't be sent")


def test_a_record_holding_nan_is_an_error():
    [error] = build_requests(template("create_listing"), [(5, {"x": float("inf")})], BASE)
    assert error.message == "Record 5 can't be sent as JSON: it holds NaN or Infinity"


def test_a_url_made_too_long_by_a_record_is_an_error():
    [error] = build_requests(advanced("/x/{id}/"), [(1, {"id": "é" * 700})], BASE)
    assert "longer than 2000" in error.message


def test_an_invalid_config_raises_config_error_with_the_field_messages():
    with pytest.raises(ConfigError) as caught:
        build_requests(DestinationConfig(mode="advanced", url="https://evil.com/x"), [], BASE)
    assert "url" in caught.value.errors


# --- bodies and excludes --------------------------------------------------------------------------------


def test_the_body_is_compact_utf8_json_in_the_records_key_order():
    record = {"zeta": 1, "alpha": "café ✓", "mid": [1, {"b": 2, "a": 1}]}
    [spec] = build_requests(template("create_listing"), [(1, record)], BASE)
    assert spec.body == '{"zeta":1,"alpha":"café ✓","mid":[1,{"b":2,"a":1}]}'.encode()


def test_excludes_remove_top_level_and_nested_attributes_and_ignore_missing_paths():
    record = {"id": 1, "name": "x", "meta": {"secret": "s", "keep": 2, "deep": {"x": 1, "y": 2}}}
    config = template("create_listing", exclude=("id", "meta.secret", "meta.deep.x", "nope", "meta.nope.z"))
    [spec] = build_requests(config, [(1, record)], BASE)
    assert body(spec) == {"name": "x", "meta": {"keep": 2, "deep": {"y": 2}}}
    assert record == {"id": 1, "name": "x", "meta": {"secret": "s", "keep": 2, "deep": {"x": 1, "y": 2}}}


def test_an_excluded_attribute_can_still_fill_the_url():
    [spec] = build_requests(
        template("update_listing", "{id}", exclude=("id",)), [(1, {"id": "L1", "n": 1})], BASE
    )
    assert spec.url.endswith("/listings/L1/")
    assert body(spec) == {"n": 1}


def test_excluding_every_attribute_sends_an_empty_object():
    [spec] = build_requests(template("create_listing", exclude=("a",)), [(1, {"a": 1})], BASE)
    assert spec.body == b"{}"


def test_record_like_objects_are_accepted():
    rows = [SimpleNamespace(seq=7, data={"a": 1})]
    [spec] = build_requests(template("create_listing"), rows, BASE)
    assert spec.seqs == (7,)


def test_building_twice_gives_the_same_bytes():
    rows = numbered({"b": 1, "a": [1.5, None, True]}, {"c": "ü"})
    config = template("create_listing")
    assert build_requests(config, rows, BASE) == build_requests(config, rows, BASE)


# --- batching by property -------------------------------------------------------------------------------


def test_property_batching_wraps_records_and_adds_other_props():
    config = template(
        "create_listing", batching=by_property(2, property_name="items", other_props='{"src": "crm"}')
    )
    out = build_requests(config, numbered({"n": 1}, {"n": 2}, {"n": 3}), BASE)
    assert [s.seqs for s in out] == [(1, 2), (3,)]
    assert out[0].body == b'{"items":[{"n":1},{"n":2}],"src":"crm"}'
    assert body(out[1]) == {"items": [{"n": 3}], "src": "crm"}


@pytest.mark.parametrize(
    ("count", "size", "expected"),
    [(0, 3, []), (1, 3, [1]), (3, 3, [3]), (4, 3, [3, 1]), (6, 3, [3, 3]), (5, 1, [1] * 5), (7, 1000, [7])],
)
def test_batches_fill_up_to_the_batch_size(count, size, expected):
    config = template("create_listing", batching=by_property(size))
    out = build_requests(config, [(i, {"i": i}) for i in range(count)], BASE)
    assert [len(s.seqs) for s in out] == expected
    assert [seq for s in out for seq in s.seqs] == list(range(count))


def test_batches_group_records_by_url_in_first_appearance_order():
    config = advanced("/offers/{o}/lines/", "POST", batching=by_property(2))
    rows = numbered({"o": "A"}, {"o": "B"}, {"o": "A"}, {"o": "A"}, {"o": "C"}, {"o": "B"})
    out = build_requests(config, rows, BASE)
    assert [(s.url.split("/")[-3], s.seqs) for s in out] == [
        ("A", (1, 3)),
        ("B", (2, 6)),
        ("A", (4,)),
        ("C", (5,)),
    ]


def test_a_record_error_keeps_its_place_among_batches():
    config = advanced("/offers/{o}/", "PATCH", batching=by_property(2))
    out = build_requests(config, numbered({"o": "A"}, {}, {"o": "A"}), BASE)
    assert [type(x).__name__ for x in out] == ["RequestSpec", "RecordError"]
    assert out[0].seqs == (1, 3)
    assert out[0].target_id == "/offers/A/"


def test_a_record_that_cant_be_json_is_dropped_from_its_batch_and_the_rest_is_sent():
    config = template("create_listing", batching=by_property(10))
    out = build_requests(config, numbered({"a": 1}, {"a": float("nan")}, {"a": 3}), BASE)
    errors = [x for x in out if isinstance(x, RecordError)]
    specs = [x for x in out if isinstance(x, RequestSpec)]
    assert [e.seq for e in errors] == [2]
    assert [s.seqs for s in specs] == [(1, 3)]


def test_batched_records_are_sent_after_excludes():
    config = template("create_listing", exclude=("secret",), batching=by_property(5))
    [spec] = build_requests(config, numbered({"a": 1, "secret": 2}), BASE)
    assert body(spec) == {"records": [{"a": 1}]}


# --- batching by code template --------------------------------------------------------------------------

CODE = """{
  "offers": [
  {% for r in records %}
    {"name": {{ r.name|tojson }}, "n": {{ loop.index }}}{% if not loop.last %},{% endif %}
  {% endfor %}
  ],
  "method": {{ config.method|tojson }},
  "count": {{ records|length }}
}"""


def test_a_code_template_renders_each_batch_as_compact_json():
    config = template("create_listing", batching=by_code(CODE, size=2))
    out = build_requests(config, numbered({"name": "a"}, {"name": "b"}, {"name": "ç"}), BASE)
    assert [s.seqs for s in out] == [(1, 2), (3,)]
    assert out[0].body == b'{"offers":[{"name":"a","n":1},{"name":"b","n":2}],"method":"POST","count":2}'
    assert body(out[1]) == {"offers": [{"name": "ç", "n": 1}], "method": "POST", "count": 1}


def test_code_templates_print_none_booleans_and_containers_as_json():
    config = template(
        "create_listing", batching=by_code("[{{ records[0].a }}, {{ records[0].b }}, {{ records }}]")
    )
    [spec] = build_requests(config, [(1, {"a": None, "b": True})], BASE)
    assert body(spec) == [None, True, [{"a": None, "b": True}]]


def test_the_code_template_sees_a_config_without_headers():
    config = template("create_listing", headers="X-Secret:s", batching=by_code("{{ config|tojson }}"))
    [spec] = build_requests(config, [(1, {})], BASE)
    assert "X-Secret" not in spec.body.decode()
    assert body(spec)["endpoint"] == "Create Listing"


def test_a_code_template_error_is_reported_for_every_record_of_the_batch_with_its_line():
    messages = code_errors('{\n"a": 1,\n"b": {{ recordz|tojson }}\n}', numbered({"x": 1}, {"x": 2}))
    assert messages == ["Code template line 3: 'recordz' is undefined"] * 2


def test_a_missing_attribute_inside_the_template_names_it():
    [message] = code_errors("{{ records[0].nope|tojson }}")
    assert message.startswith("Code template line 1:")
    assert "nope" in message


def test_output_that_is_not_json_is_reported_with_its_position():
    [message] = code_errors('{\n"a": 1\n    "b": 2}')
    assert message == "The code template did not produce JSON: Expecting ',' delimiter at line 3 column 5"


def test_a_runtime_error_in_a_template_is_that_batchs_error():
    [message] = code_errors("\n\n{{ 1 // 0 }}")
    assert message.startswith("Code template line 3:")


@pytest.mark.parametrize(
    "code",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ records.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__['os'] }}",
        "{{ records[0].__class__.__subclasses__() }}",
        "{{ config.items.__self__ }}",
        "{{ namespace.__init__ }}",
        "{{ (records|attr('__class__')) }}",
        "{{ ''['__class__'] }}",
        "{{ self.__init__.__globals__ }}",
        "{% set x = records.append(1) %}{{ records|tojson }}",
        "{% set x = records[0].update({'a': 2}) %}{{ records|tojson }}",
        "{{ '{0.__class__}'.format(records) }}",
        "{{ '%s'.__mod__ }}",
    ],
)
def test_sandbox_escapes_are_refused_not_executed(code):
    [message] = code_errors(code)
    assert message.startswith("Code template line 1: refused by the sandbox: access to attribute")


def test_the_sandbox_does_not_let_templates_change_the_records():
    rows = numbered({"a": 1})
    code_errors("{% set x = records[0].update({'a': 2}) %}{{ records|tojson }}", rows)
    assert rows == [(1, {"a": 1})]


@pytest.mark.parametrize(
    "code",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for r in records %}{% for i in range(99999) %}{% for j in range(99) %}{% endfor %}{% endfor %}"
        "{% endfor %}",
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    ],
)
def test_runaway_work_is_stopped(code):
    [message] = code_errors(code)
    assert message in (
        "Code template line 1: refused by the sandbox: the template does more than 1,000,000 steps of work; "
        "simplify it",
        "Code template line 1: too much recursion",
    )


@pytest.mark.parametrize(
    "code",
    [
        "{{ 'x' * 100000000 }}",
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{{ ('x' * 1000000)|replace('x', 'xxxxxxxxxx') }}",
        "{{ range(90000)|join('x' * 1000) }}",
        "{{ 'x'.center(1000000000) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ '%0999999999d' % 1 }}",
        "{{ 10 ** 10000000 }}",
        "{% for i in range(60) %}" + "{{ 'x' * 100000 }}" + "{% endfor %}",
    ],
)
def test_huge_values_and_output_are_refused(code):
    [message] = code_errors(code)
    assert "refused by the sandbox" in message or f"produced more than {MAX_OUTPUT:,}" in message


# --- preview --------------------------------------------------------------------------------------------


def endless(count: int, seen: list[int]):
    for i in range(count):
        seen.append(i)
        yield i, {"i": i, "name": f"n{i}"}


def test_preview_reads_only_the_records_it_shows():
    seen: list[int] = []
    shown = preview(template("create_listing"), endless(1_000_000, seen), BASE, limit=3)
    assert [s.seqs for s in shown] == [(0,), (1,), (2,)]
    assert len(seen) == 3


def test_a_batched_preview_reads_at_most_limit_batches_of_records():
    seen: list[int] = []
    config = template("create_listing", batching=by_property(10))
    shown = preview(config, endless(1_000_000, seen), BASE, limit=2)
    assert [s.seqs for s in shown] == [tuple(range(10)), tuple(range(10, 20))]
    assert len(seen) <= 30


def test_preview_shows_errors_in_place():
    shown = preview(advanced("/x/{id}/"), numbered({"id": 1}, {}, {"id": 3}, {"id": 4}), BASE, limit=3)
    assert [type(x).__name__ for x in shown] == ["RequestSpec", "RecordError", "RequestSpec"]


def test_iter_requests_raises_config_errors_before_iterating():
    with pytest.raises(ConfigError):
        iter_requests(DestinationConfig(), [], BASE)


# --- pretty ---------------------------------------------------------------------------------------------


def test_pretty_shows_the_headers_the_transport_adds_for_a_create():
    [spec] = build_requests(template("create_private_offer"), [(1, {"name": "x"})], BASE)
    shown = pretty(spec)
    assert shown["headers"] == [
        "Authorization: Bearer ****",
        "Accept: application/json",
        "Content-Type: application/json",
        "Idempotency-Key: <per delivery>",
    ]
    assert shown["body"] == '{\n  "name": "x"\n}'
    assert shown["method"] == "POST"
    assert shown["url"] == f"{BASE}/private_offers/"


def test_pretty_adds_no_idempotency_key_to_updates_and_no_content_type_to_deletes():
    [update] = build_requests(template("update_listing", "{id}"), [(1, {"id": 1})], BASE)
    [delete] = build_requests(template("delete_private_offer", "{id}"), [(1, {"id": 1})], BASE)
    [publish] = build_requests(template("publish_private_offer", "{id}"), [(1, {"id": 1})], BASE)
    assert "Idempotency-Key: <per delivery>" not in pretty(update)["headers"]
    assert pretty(delete)["headers"] == ["Authorization: Bearer ****", "Accept: application/json"]
    assert pretty(delete)["body"] is None
    assert "Idempotency-Key: <per delivery>" in pretty(publish)["headers"]


def test_pretty_lists_advanced_headers_after_the_transport_ones():
    [spec] = build_requests(advanced("/x/", "POST", headers="X-Team:ops"), [(1, {})], BASE)
    assert pretty(spec)["headers"][-2:] == ["Idempotency-Key: <per delivery>", "X-Team: ops"]


def test_pretty_shows_a_record_error_as_an_error():
    assert pretty(RecordError(3, "Record 3 has no attribute 'id' for the URL")) == {
        "error": "Record 3 has no attribute 'id' for the URL",
        "seqs": [3],
    }


# --- properties -----------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
records = st.dictionaries(
    st.sampled_from(["id", "o", "name", "meta", "x.y", "x"]) | st.text(max_size=5), values, max_size=5
)
data = records | st.lists(scalars, max_size=2)
batches = st.lists(data, max_size=25).map(lambda rows: list(enumerate(rows, start=100)))

CONFIGS = [
    template("create_listing"),
    template("update_private_offer", "{id}", exclude=("id", "meta.x")),
    template("delete_private_offer", "{id}"),
    advanced("/offers/{o}/lines/{x.y}/?n={name}", "PATCH", headers="X-A:1"),
    template("create_listing", exclude=("x.y",), batching=by_property(3, other_props='{"k": 1}')),
    advanced("/offers/{o}/", "POST", batching=by_property(2)),
    template(
        "create_listing", batching=by_code('{"items": {{ records|tojson }}, "first": {{ records[0] }}}', 4)
    ),
    advanced("/offers/{o}/", "PUT", batching=by_code("{{ records|map(attribute='o')|list|tojson }}", 2)),
]


@settings(max_examples=40, deadline=None)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.describe())
@given(rows=batches)
def test_any_records_build_without_raising_and_each_seq_lands_exactly_once(config, rows):
    out = build_requests(config, rows, BASE)
    covered = [seq for item in out for seq in (item.seqs if isinstance(item, RequestSpec) else (item.seq,))]
    assert sorted(covered) == [seq for seq, _ in rows]
    for item in out:
        if isinstance(item, RequestSpec):
            assert item.url.startswith(BASE + "/")
            if item.body is not None:
                json.loads(item.body)


@settings(max_examples=25, deadline=None)
@pytest.mark.parametrize("config", CONFIGS[:4], ids=lambda c: c.describe())
@given(rows=batches)
def test_unbatched_requests_follow_the_record_order_and_preview_is_their_prefix(config, rows):
    out = build_requests(config, rows, BASE)
    assert [item.seqs[0] if isinstance(item, RequestSpec) else item.seq for item in out] == [
        s for s, _ in rows
    ]
    assert preview(config, rows, BASE, limit=3) == out[:3]


@settings(max_examples=40, deadline=None)
@given(rows=batches, size=st.integers(1, 5))
def test_batches_never_exceed_the_size_and_share_one_url(rows, size):
    config = advanced("/offers/{o}/", "POST", batching=by_property(size))
    for item in build_requests(config, rows, BASE):
        if isinstance(item, RequestSpec):
            assert 1 <= len(item.seqs) <= size
            urls = {f"{BASE}/offers/{dict(rows)[s]['o']}/" for s in item.seqs}
            assert len(urls) == 1


@settings(max_examples=40, deadline=None)
@given(value=st.text(min_size=1, max_size=30).filter(lambda v: v not in (".", "..")))
def test_a_macro_value_never_changes_the_host_or_adds_path_segments(value):
    [spec] = build_requests(advanced("/x/{id}/y"), [(1, {"id": value})], BASE)
    assert spec.url.startswith(f"{BASE}/x/")
    assert spec.url.endswith("/y")
    assert spec.url.count("/") == 5
    assert "?" not in spec.url and "#" not in spec.url
