"""Uploads imported by a real Celery worker subprocess over the configured broker and database
(SQLite + filesystem broker by default; PostgreSQL + Redis with DATABASE_URL and REDIS_URL)."""

from __future__ import annotations

import json
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from flows.models import Import

pytestmark = pytest.mark.slow

DONE = (Import.Status.SUCCEEDED, Import.Status.PARTIAL, Import.Status.FAILED)


def finished(imp: Import, worker, timeout: float = 90) -> Import:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        imp.refresh_from_db()
        if imp.status in DONE:
            return imp
        time.sleep(0.2)
    raise AssertionError(
        f"import still {imp.status} after {timeout}s; worker said:\n{worker.output()[-3000:]}"
    )


def upload(client, name: str, content: bytes, **fields) -> Import:
    response = client.post(reverse("nexset_upload"), {"file": SimpleUploadedFile(name, content), **fields})
    assert response.status_code == 302, response.content.decode()[:1000]
    return Import.objects.get(uuid=response["Location"].rstrip("/").rsplit("/", 1)[-1])


@pytest.fixture
def worker(start_proc):
    proc = start_proc("worker", "celery", "-A", "clazar_dest", "worker", "--pool", "solo", "-l", "info")
    proc.wait_for("ready", timeout=60)
    return proc


def test_a_real_worker_imports_a_csv_upload(worker, operator_client):
    rows = b"".join(
        b"%d,Customer %d,%d.25,%s\n" % (i, i, i, b"true" if i % 2 else b"false") for i in range(1, 2001)
    )
    imp = upload(operator_client, "customers.csv", b"id,name,amount,active\n" + rows)
    imp = finished(imp, worker)
    assert imp.status == Import.Status.SUCCEEDED, imp.message
    assert imp.rows_stored == 2000 and imp.nexset.record_count == 2000
    assert imp.nexset.records.get(seq=2000).data == {
        "id": 2000,
        "name": "Customer 2000",
        "amount": 2000.25,
        "active": False,
    }
    assert "Task flows.run_import" in worker.output()
    assert imp.stored_file == ""


def test_a_real_worker_imports_an_ndjson_upload_with_rejected_lines_listed(worker, operator_client):
    lines = [json.dumps({"id": i, "tags": ["a", "b"], "meta": {"n": i}}) for i in range(1, 501)]
    lines[99] = '{"id": 100, "broken": '
    imp = upload(operator_client, "events.ndjson", "\n".join(lines).encode(), partial_ok="on")
    imp = finished(imp, worker)
    assert imp.status == Import.Status.PARTIAL, imp.message
    assert imp.rows_stored == 499 and imp.rows_rejected == 1
    assert imp.errors[0]["row"] == 100
    assert imp.nexset.records.get(seq=100).data == {"id": 101, "tags": ["a", "b"], "meta": {"n": 101}}
    assert imp.nexset.schema["meta"]["type"] == "object"
