"""The Nexset pages: upload through the real view (the import run in-process by the service), every bad
input with its message, imports that append, partial imports, the record browser, deleting."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from flows import imports, nexsets, records, tasks
from flows.models import AuditEvent, Import, Nexset, Record
from tests.factories import DestinationFactory, NexsetFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path},
        },
    }
    return tmp_path


def post_upload(client, content: bytes, name: str = "data.csv", **fields):
    upload = SimpleUploadedFile(name, content, content_type="application/octet-stream")
    return client.post(reverse("nexset_upload"), {"file": upload, **fields})


def upload(client, content: bytes, name: str = "data.csv", **fields) -> Import:
    """Upload through the view, then run the import here (the worker's job, tested elsewhere)."""
    response = post_upload(client, content, name, **fields)
    assert response.status_code == 302, response.content.decode()[:2000]
    imp = Import.objects.latest("created_at")
    assert response["Location"] == reverse("nexset_import", args=[imp.uuid])
    imports.run(imp.pk)
    imp.refresh_from_db()
    return imp


def form_errors(response) -> str:
    assert response.status_code == 200
    return " ".join(str(e) for errors in response.context["form"].errors.values() for e in errors)


CSV = b"id,name,price,active\n1,Acme,19.99,true\n2,Globex,5,false\n3,Initech,,true\n"


def test_an_operator_uploads_a_csv_into_a_new_nexset(operator_client, media):
    imp = upload(operator_client, CSV, "customers.csv")
    assert imp.status == Import.Status.SUCCEEDED
    assert imp.message == "Imported 3 rows."
    nexset = imp.nexset
    assert nexset.name == "customers" and nexset.kind == Nexset.Kind.UPLOAD
    assert nexset.record_count == 3 and nexset.last_seq == 3
    assert list(nexset.records.order_by("seq").values_list("seq", "data")) == [
        (1, {"id": 1, "name": "Acme", "price": 19.99, "active": True}),
        (2, {"id": 2, "name": "Globex", "price": 5, "active": False}),
        (3, {"id": 3, "name": "Initech", "price": None, "active": True}),
    ]
    assert nexset.schema["price"] == {"type": "number", "nullable": True, "example": "19.99", "count": 3}
    assert imp.stored_file == "" and not list(media.rglob("*.upload")), "the upload is removed once imported"
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"nexset.create", "nexset.upload"} <= actions


def test_the_import_page_shows_the_result_and_stops_polling(operator_client):
    imp = upload(operator_client, CSV)
    page = operator_client.get(reverse("nexset_import", args=[imp.uuid])).content.decode()
    assert "Imported 3 rows." in page
    assert "CSV, comma-separated, UTF-8" in page
    assert "hx-trigger" not in page


def test_a_queued_import_polls_its_progress_with_htmx(operator_client):
    response = post_upload(operator_client, CSV)
    imp = Import.objects.get()
    assert imp.status == Import.Status.QUEUED
    page = operator_client.get(response["Location"]).content.decode()
    assert 'hx-trigger="every 1s"' in page
    assert "Waiting for a worker" in page
    fragment = operator_client.get(response["Location"], headers={"HX-Request": "true"}).content.decode()
    assert fragment.lstrip().startswith('<div class="import-status"')
    assert "<html" not in fragment


def test_live_progress_shows_rows_rate_and_time_left(operator_client):
    post_upload(operator_client, CSV)
    imp = Import.objects.get()
    Import.objects.filter(pk=imp.pk).update(status=Import.Status.RUNNING)
    tracker = imports.Tracker(imp)
    tracker.state.update(phase="storing", total=1000, rows_read=1000, phase_started=tracker.started - 2)
    tracker.storing(400)
    tracker._save(force=True)
    imp.refresh_from_db()
    view = imports.progress(imp)
    assert view["phase"] == "storing" and view["rows_stored"] == 400
    assert 150 <= view["rate"] <= 200 and view["seconds_left"] is not None
    assert 35 < view["percent"] < 100
    fragment = operator_client.get(
        reverse("nexset_import", args=[imp.uuid]), headers={"HX-Request": "true"}
    ).content.decode()
    assert "Storing records" in fragment and "400</span> of 1,000 stored" in fragment
    assert "rows/s" in fragment and "left" in fragment


def test_the_nexset_page_reloads_itself_when_its_import_finishes(operator_client):
    imp = upload(operator_client, CSV)
    response = operator_client.get(
        reverse("nexset_import", args=[imp.uuid]) + "?on=nexset", headers={"HX-Request": "true"}
    )
    assert response["HX-Refresh"] == "true"


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"", "empty.csv", "The file is empty."),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image.csv", "This is a PNG image"),
        (bytes(range(256)) * 8, "random.bin", "The file looks binary"),
        (b"id,name\n1,Acme\x00\x00\n", "nul.csv", "The file looks binary: it has NUL"),
        (b"3.14", "number.json", "The file holds a single JSON value (3.14), not records"),
        (b"id,,price\n1,2,3\n", "noname.csv", "Column 2 has no name in the header row"),
        (b"id,price,id\n1,2,3\n", "dupe.csv", "names the column “id” twice (columns 1 and 3)"),
        (b"1,2\n3,4\n", "headless.csv", "The first row must name the columns"),
    ],
)
def test_files_that_cannot_be_read_are_refused_at_upload(operator_client, content, name, message):
    response = post_upload(operator_client, content, name)
    assert message in form_errors(response)
    assert not Import.objects.exists() and not Nexset.objects.exists()


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b'id,price\n1,2\n2,"3\n3,4\n', "quote.csv", "row 2 (line 3), column price: unterminated quote"),
        (b"a,b,c\n1,2,3\n4,5\n", "ragged.csv", "row 2 (line 3): has 2 values but the header has 3 columns"),
        (
            b"id,notes\n1," + b"x" * 1_048_576 + b"\n",
            "big.csv",
            "column notes: a value is longer than 262,144",
        ),
        (b'[{"a": ' + b"[" * 40 + b"]" * 40 + b"}]", "deep.json", "is nested more than 32 levels deep"),
        (b'[{"a": 1}, {"a": NaN}]', "nan.json", "row 2 (line 1): holds NaN or Infinity"),
        (b'{"a": Infinity}\n', "inf.ndjson", "row 1: holds NaN or Infinity"),
        (
            b'[{"a": 1}]\n}garbage',
            "trail.json",
            "line 2: there is more text after the JSON array's closing ]",
        ),
        (b'[{"a": 1}, 2]', "scalar.json", "row 2 (line 1): is a JSON number, not an object"),
        (b"id\n", "header.csv", "The file has a header row but no data rows."),
        (b"[]", "none.json", "The file holds no records."),
    ],
)
def test_bad_input_fails_the_import_naming_the_place_and_stores_nothing(
    operator_client, content, name, message
):
    imp = upload(operator_client, content, name)
    assert imp.status == Import.Status.FAILED
    assert imp.message.startswith("Nothing was imported")
    assert any(message in e["text"] for e in imp.errors), imp.errors
    assert imp.error_total >= 1
    assert Record.objects.count() == 0
    page = operator_client.get(reverse("nexset_import", args=[imp.uuid])).content.decode()
    assert escape(imp.errors[0]["message"]) in page


def test_an_import_is_all_or_nothing_and_reports_the_first_errors_and_the_total(operator_client):
    rows = b"".join(b"%d,ok\n" % i if i % 3 else b"%d\n" % i for i in range(1, 400))
    imp = upload(operator_client, b"id,note\n" + rows)
    assert imp.status == Import.Status.FAILED
    assert imp.error_total == 133 and len(imp.errors) == 100
    assert imp.rows_read == 399 and imp.rows_stored == 0
    assert "133 of 399 rows have problems" in imp.message
    assert Record.objects.count() == 0
    page = operator_client.get(reverse("nexset_import", args=[imp.uuid])).content.decode()
    assert "The first 100 of 133 problems" in page


def test_the_good_rows_option_imports_them_and_lists_the_rejected_ones(operator_client):
    imp = upload(operator_client, b"id,note\n1,ok\n2\n3,ok\n4,a,b\n", partial_ok="on")
    assert imp.status == Import.Status.PARTIAL
    assert imp.rows_stored == 2 and imp.rows_rejected == 2
    assert [e["row"] for e in imp.errors] == [2, 4]
    assert sorted(r["id"] for r in imp.nexset.records.values_list("data", flat=True)) == [1, 3]
    page = operator_client.get(reverse("nexset_import", args=[imp.uuid])).content.decode()
    assert "Imported with rejected rows" in page
    assert "Rejected rows" in page and "2 rejected rows are listed below and were not imported" in page


def test_keep_everything_as_text(operator_client):
    imp = upload(operator_client, b"zip,amount\n02134,10\n10001,\n", text="on")
    assert list(imp.nexset.records.values_list("data", flat=True).order_by("seq")) == [
        {"zip": "02134", "amount": "10"},
        {"zip": "10001", "amount": ""},
    ]


def test_encodings_and_dialects_are_detected(operator_client):
    latin = "name;city;amount\nJosé;Zürich;1,5\nFrançois;Besançon;2\n".encode("cp1252")
    imp = upload(operator_client, latin, "export.txt")
    assert imp.status == Import.Status.SUCCEEDED
    assert imp.nexset.records.get(seq=1).data == {"name": "José", "city": "Zürich", "amount": "1,5"}
    bom = b'\xef\xbb\xbfid\tname\n1\t"Tab, quoted"\n'
    imp = upload(operator_client, bom, "tabs.tsv")
    assert imp.nexset.records.get().data == {"id": 1, "name": "Tab, quoted"}


def test_json_and_ndjson_upload(operator_client):
    imp = upload(operator_client, b'[{"id": 1, "tags": ["a"]}, {"id": 2}]', "a.json")
    assert imp.nexset.record_count == 2
    imp = upload(operator_client, b'{"id": 1}\n{"id": 2}\n{"id": 3}\n', "a.ndjson")
    assert imp.nexset.record_count == 3


def test_an_upload_appends_to_a_nexset_with_a_compatible_schema(operator_client):
    first = upload(operator_client, CSV, "customers.csv")
    nexset = first.nexset
    second = upload(operator_client, b"id,name,price,region\n4,Umbrella,7.5,eu\n", nexset=str(nexset.uuid))
    assert second.status == Import.Status.SUCCEEDED
    nexset.refresh_from_db()
    assert nexset.record_count == 4 and nexset.last_seq == 4
    assert nexset.records.get(seq=4).data == {"id": 4, "name": "Umbrella", "price": 7.5, "region": "eu"}
    assert nexset.schema["region"]["nullable"] is True
    assert nexset.schema["active"]["nullable"] is True


def test_an_incompatible_upload_says_which_field_does_not_fit(operator_client):
    nexset = upload(operator_client, CSV).nexset
    imp = upload(operator_client, b"id,price\n4,call us\n", nexset=str(nexset.uuid))
    assert imp.status == Import.Status.FAILED
    assert "Field “price” holds text in the file but numbers in the Nexset." in imp.message
    nexset.refresh_from_db()
    assert nexset.record_count == 3


def test_a_file_over_the_size_limit_is_refused_with_the_limit(operator_client, settings):
    settings.UPLOAD_MAX_BYTES = 2048
    response = post_upload(operator_client, b"id,note\n" + b"1,xxxxxxxx\n" * 400)
    assert "larger than 2.0\xa0KB, the limit (UPLOAD_MAX_BYTES)" in form_errors(response)
    assert not Import.objects.exists()


def test_a_file_over_the_row_limit_fails_with_the_limit(operator_client, settings):
    settings.UPLOAD_MAX_ROWS = 5
    imp = upload(operator_client, b"id\n" + b"".join(b"%d\n" % i for i in range(10)))
    assert imp.status == Import.Status.FAILED
    assert "more than 5 rows, the limit (UPLOAD_MAX_ROWS)" in imp.message


def test_uploads_go_only_into_upload_nexsets(operator_client):
    response_nexset = NexsetFactory(kind=Nexset.Kind.RESPONSE)
    response = post_upload(operator_client, CSV, nexset=str(response_nexset.uuid))
    assert "Select a valid choice" in form_errors(response)


def test_the_upload_form_needs_the_csrf_token(make_client):
    from django.test import Client

    from tests.factories import UserFactory

    client = Client(enforce_csrf_checks=True)
    client.force_login(UserFactory(role="Operator"), backend="django.contrib.auth.backends.ModelBackend")
    response = client.post(reverse("nexset_upload"), {"file": SimpleUploadedFile("a.csv", CSV)})
    assert response.status_code == 403


def test_a_viewer_cannot_upload(viewer_client):
    response = post_upload(viewer_client, CSV)
    assert response.status_code == 403
    assert not Import.objects.exists()
    assert not default_storage.exists("imports")


def test_a_duplicate_task_finds_nothing_to_do(operator_client):
    imp = upload(operator_client, CSV)
    assert imports.run(imp.pk) is None
    assert Record.objects.count() == 3


# The record browser ---------------------------------------------------------------------------------


@pytest.fixture
def big_nexset():
    nexset = NexsetFactory(name="Orders")
    rows = [
        {
            "id": i,
            "sku": f"SKU-{i % 7}",
            "zip": f"{i:05d}",
            "vip": i % 10 == 0,
            "note": None if i % 2 else "x",
        }
        for i in range(1, 131)
    ]
    records.append(nexset.pk, rows)
    nexset.refresh_from_db()
    return nexset


def page_seqs(response) -> list[int]:
    return [r.seq for r in response.context["page"].records]


def test_records_are_paged_by_seq_without_offsets(viewer_client, big_nexset):
    url = reverse("nexset_detail", args=[big_nexset.uuid])
    first = viewer_client.get(url)
    assert page_seqs(first) == list(range(1, 51))
    assert first.context["page"].has_next and not first.context["page"].has_prev
    second = viewer_client.get(url, {"after": 50})
    assert page_seqs(second) == list(range(51, 101))
    assert second.context["page"].has_prev and second.context["page"].has_next
    back = viewer_client.get(url, {"before": 51})
    assert page_seqs(back) == list(range(1, 51))
    last = viewer_client.get(url, {"last": 1})
    assert page_seqs(last) == list(range(81, 131))
    assert not last.context["page"].has_next and last.context["page"].has_prev
    assert viewer_client.get(url, {"after": "junk"}).status_code == 200


def test_the_pager_and_search_answer_htmx_with_the_records_fragment(viewer_client, big_nexset):
    url = reverse("nexset_detail", args=[big_nexset.uuid])
    fragment = viewer_client.get(
        url, {"after": 50}, headers={"HX-Request": "true", "HX-Target": "records"}
    ).content.decode()
    assert fragment.lstrip().startswith('<div id="records">')
    assert "?after=100" in fragment and "?before=51" in fragment


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("id", "42", [42]),
        ("sku", "SKU-3", [3, 10, 17, 24, 31, 38, 45, 52, 59, 66, 73, 80, 87, 94, 101, 108, 115, 122, 129]),
        ("zip", "00007", [7]),
        ("vip", "true", list(range(10, 131, 10))),
        ("note", "null", list(range(1, 131, 2))),
        ("id", "nope", []),
    ],
)
def test_search_finds_records_by_a_field_value_typed_from_the_schema(
    viewer_client, big_nexset, field, value, expected
):
    response = viewer_client.get(
        reverse("nexset_detail", args=[big_nexset.uuid]), {"field": field, "value": value}
    )
    assert page_seqs(response) == expected[:50]
    if not expected:
        assert "No record has" in response.content.decode()


def test_search_results_page_with_the_search_kept(viewer_client, big_nexset):
    url = reverse("nexset_detail", args=[big_nexset.uuid])
    first = viewer_client.get(url, {"field": "note", "value": "null"})
    assert first.context["page"].has_next
    second = viewer_client.get(url, {"field": "note", "value": "null", "after": page_seqs(first)[-1]})
    assert page_seqs(second) == list(range(101, 131, 2))
    assert "field=note&amp;value=null" in first.content.decode()


def test_a_record_opens_as_json(viewer_client, big_nexset):
    url = reverse("nexset_record", args=[big_nexset.uuid, 7])
    page = viewer_client.get(url).content.decode()
    assert "&quot;sku&quot;: &quot;SKU-0&quot;" in page
    row = viewer_client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert row.lstrip().startswith('<tr class="json-row">')
    assert viewer_client.get(reverse("nexset_record", args=[big_nexset.uuid, 999])).status_code == 404


def test_the_nexset_page_shows_schema_counts_and_recent_imports(operator_client):
    imp = upload(operator_client, CSV, "customers.csv")
    page = operator_client.get(reverse("nexset_detail", args=[imp.nexset.uuid])).content.decode()
    for text in (
        "customers",
        "Schema",
        "<code>price</code>",
        "number",
        "19.99",
        "customers.csv",
        "Imported",
        "Globex",
    ):
        assert text in page
    assert "Upload more" in page and "Delete…" in page


def test_the_nexsets_list_links_to_pages_and_offers_actions_by_role(
    operator_client, viewer_client, big_nexset
):
    page = operator_client.get(reverse("nexset_list")).content.decode()
    assert reverse("nexset_detail", args=[big_nexset.uuid]) in page
    assert "Upload file" in page and "New webhook" in page
    page = viewer_client.get(reverse("nexset_list")).content.decode()
    assert reverse("nexset_detail", args=[big_nexset.uuid]) in page
    assert "Upload file" not in page


def test_a_response_nexset_displays_read_only(operator_client):
    destination = DestinationFactory(name="Offers to AWS")
    nexset = NexsetFactory(name="Responses", kind=Nexset.Kind.RESPONSE, feeding_destination=destination)
    records.append(nexset.pk, [{"status": 201, "id": "abc"}])
    page = operator_client.get(reverse("nexset_detail", args=[nexset.uuid])).content.decode()
    assert "The API responses of the destination <strong>Offers to AWS</strong>" in page
    assert "Upload more" not in page and "Rotate secret" not in page
    assert "abc" in page


# Deleting ------------------------------------------------------------------------------------------


def test_a_nexset_in_use_cannot_be_deleted_and_the_page_names_the_destinations(operator_client):
    destination = DestinationFactory(name="Offers to AWS")
    url = reverse("nexset_delete", args=[destination.nexset.uuid])
    page = operator_client.get(url).content.decode()
    assert "cannot be deleted while these destinations use it" in page and "Offers to AWS" in page
    operator_client.post(url, {"confirm": destination.nexset.name})
    assert Nexset.objects.filter(pk=destination.nexset.pk).exists()


def test_deleting_needs_the_name_typed_and_removes_records_and_imports(operator_client):
    imp = upload(operator_client, CSV, "customers.csv")
    url = reverse("nexset_delete", args=[imp.nexset.uuid])
    response = operator_client.post(url, {"confirm": "wrong"})
    assert "Type “customers” exactly to delete it." in response.content.decode()
    response = operator_client.post(url, {"confirm": "customers"})
    assert response.status_code == 302 and response["Location"] == reverse("nexset_list")
    assert not Nexset.objects.exists() and not Record.objects.exists() and not Import.objects.exists()
    event = AuditEvent.objects.get(action="nexset.delete")
    assert event.changes["details"] == {"records": 3}


def test_audit_entries_never_hold_a_secret(operator_client):
    response = operator_client.post(reverse("nexset_webhook_new"), {"name": "Orders feed"})
    secret = response.context["secret"]
    nexset = Nexset.objects.get()
    operator_client.post(reverse("nexset_webhook_rotate", args=[nexset.uuid]))
    dumped = json.dumps(list(AuditEvent.objects.values("changes", "object_repr")))
    assert secret not in dumped and "whsec_" not in dumped


def test_an_import_whose_nexset_was_deleted_meanwhile_does_nothing(operator_client, media):
    post_upload(operator_client, CSV)
    imp = Import.objects.get()
    nexsets.delete(imp.nexset)
    assert imports.run(imp.pk) is None
    assert not list(media.rglob("*.upload"))


def test_an_import_wakes_the_destinations_of_its_nexset(operator_client, monkeypatch):
    calls = []
    monkeypatch.setattr(tasks, "wake_nexset", calls.append)
    imp = upload(operator_client, CSV)
    assert calls == [imp.nexset.pk]


def test_the_nexset_page_offers_to_send_it_to_a_destination(operator_client, big_nexset):
    page = operator_client.get(reverse("nexset_detail", args=[big_nexset.uuid])).content.decode()
    link = f"{reverse('destination_new')}?nexset={big_nexset.uuid}"
    assert link in page
    assert operator_client.get(link).status_code == 200


def test_an_import_whose_worker_went_silent_is_taken_over(operator_client):
    post_upload(operator_client, CSV)
    imp = Import.objects.get()
    long_ago = timezone.now() - timedelta(seconds=imports.STALE_SECONDS + 60)
    Import.objects.filter(pk=imp.pk).update(status=Import.Status.RUNNING, started_at=long_ago)
    finished = imports.run(imp.pk)
    assert finished.status == Import.Status.SUCCEEDED and finished.rows_stored == 3


def test_a_running_import_that_reports_progress_is_left_alone(operator_client):
    post_upload(operator_client, CSV)
    imp = Import.objects.get()
    Import.objects.filter(pk=imp.pk).update(status=Import.Status.RUNNING, started_at=timezone.now())
    imports.Tracker(imp)  # a live worker's heartbeat
    assert imports.run(imp.pk) is None
    assert Record.objects.count() == 0


def test_a_run_taken_over_meanwhile_stores_nothing_and_keeps_the_file(operator_client, monkeypatch, media):
    post_upload(operator_client, CSV)
    imp = Import.objects.get()
    real = imports.reader.check

    def taken_over(*args, **kwargs):  # another worker claims the import while this one checks the file
        Import.objects.filter(pk=imp.pk).update(started_at=timezone.now() + timedelta(seconds=1))
        return real(*args, **kwargs)

    monkeypatch.setattr(imports.reader, "check", taken_over)
    assert imports.run(imp.pk) is None
    assert Record.objects.count() == 0
    assert Import.objects.get(pk=imp.pk).status == Import.Status.RUNNING
    assert list(media.rglob("*.upload")), "the worker that took over still needs the file"


def test_the_upload_form_answers_htmx_with_a_redirect_or_the_form_fragment(operator_client):
    good = operator_client.post(
        reverse("nexset_upload"), {"file": SimpleUploadedFile("a.csv", CSV)}, headers={"HX-Request": "true"}
    )
    assert good["HX-Redirect"] == reverse("nexset_import", args=[Import.objects.get().uuid])
    bad = operator_client.post(
        reverse("nexset_upload"), {"file": SimpleUploadedFile("a.csv", b"")}, headers={"HX-Request": "true"}
    )
    fragment = bad.content.decode()
    assert fragment.lstrip().startswith('<form id="upload-form"') and "The file is empty." in fragment


def test_a_big_file_is_stored_in_batches_with_consecutive_seqs(operator_client):
    rows = b"".join(b"%d,name %d\n" % (i, i) for i in range(1, 12_346))
    imp = upload(operator_client, b"id,name\n" + rows)
    assert imp.status == Import.Status.SUCCEEDED and imp.rows_stored == 12_345
    seqs = list(imp.nexset.records.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 12_346))
    assert imp.nexset.records.get(seq=12_345).data == {"id": 12_345, "name": "name 12345"}


@pytest.mark.parametrize("method", [None, "insert"])
def test_the_writers_number_records_after_the_last_seq(method):
    nexset = NexsetFactory()
    batches = [['{"a": 1}', '{"a": "x\\\\y"}'], ['{"b": null}']]
    assert imports.write(nexset.pk, 10, iter(batches), method=method) == 3
    stored = list(Record.objects.filter(nexset=nexset).order_by("seq").values_list("seq", "data"))
    assert stored == [(11, {"a": 1}), (12, {"a": "x\\y"}), (13, {"b": None})]
