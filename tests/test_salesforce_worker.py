"""A Salesforce pull run by a real Celery worker subprocess over the configured broker and database."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse

from flows.models import Import, Record
from tests.sf_helpers import connect, sf_nexset, use_simulator

pytestmark = pytest.mark.slow

DONE = (Import.Status.SUCCEEDED, Import.Status.PARTIAL, Import.Status.FAILED)


def finished(imp: Import, worker, timeout: float = 90) -> Import:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        imp.refresh_from_db()
        if imp.status in DONE:
            return imp
        time.sleep(0.2)
    raise AssertionError(f"pull still {imp.status} after {timeout}s; worker said:\n{worker.output()[-3000:]}")


def test_a_real_worker_pulls_and_a_second_pull_reads_only_the_changes(
    settings, sf_sim, start_proc, make_client
):
    use_simulator(settings, sf_sim)
    admin = make_client("Admin")
    connect(admin, sf_sim)
    worker = start_proc(
        "worker",
        "celery",
        "-A",
        "clazar_dest",
        "worker",
        "--pool",
        "solo",
        "-l",
        "info",
        env={"SALESFORCE_SIMULATOR_URL": sf_sim.url},
    )
    worker.wait_for("ready", timeout=60)
    nexset = sf_nexset()
    admin.post(reverse("salesforce_nexset_pull", args=[nexset.uuid]))
    imp = finished(nexset.imports.get(), worker)
    assert imp.status == Import.Status.SUCCEEDED, imp.message
    total = len(sf_sim.records("Opportunity"))
    assert Record.objects.filter(nexset=nexset).count() == total

    sf_sim.expire_access_tokens()  # the worker refreshes the token on its own
    sf_sim.touch("Opportunity", count=2)
    admin.post(reverse("salesforce_nexset_pull", args=[nexset.uuid]))
    second = finished(nexset.imports.order_by("-created_at").first(), worker)
    assert second.status == Import.Status.SUCCEEDED, second.message
    assert "2 updated" in second.message
    assert Record.objects.filter(nexset=nexset).count() == total
    assert "Task flows.salesforce_pull" in worker.output()


REFRESH_SCRIPT = """
import time
from flows.salesforce import connection
start = {start}
time.sleep(max(0.0, start - time.time()))
names = [o["name"] for o in connection.client().describe_global()]
print("described", len(names), flush=True)
"""


def test_two_worker_processes_refreshing_at_once_share_one_rotation(
    settings, sf_sim, start_proc, make_client
):
    use_simulator(settings, sf_sim)
    connect(make_client("Admin"), sf_sim)
    sf_sim.expire_access_tokens()
    sf_sim.clear_log()
    start = time.time() + 4  # both processes are up and waiting by then
    env = {"SALESFORCE_SIMULATOR_URL": sf_sim.url}
    procs = [
        start_proc(f"refresher{i}", "django", "shell", "-c", REFRESH_SCRIPT.format(start=start), env=env)
        for i in range(2)
    ]
    for proc in procs:
        proc.wait_for("described", timeout=30)
    refreshes = [
        e
        for e in sf_sim.requests_log(path="/services/oauth2/token")
        if e.get("form", {}).get("grant_type") == "refresh_token"
    ]
    assert [e["status"] for e in refreshes] == [200]  # one rotation, no invalid_grant
    from flows.models import SalesforceConnection

    assert SalesforceConnection.objects.get().status == "ok"
