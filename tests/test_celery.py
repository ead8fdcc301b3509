"""The Celery wiring with real worker and beat processes over the configured broker."""

from __future__ import annotations

import pytest

from clazar_dest.celery import app
from flows.models import Delivery
from tests.factories import DestinationFactory

pytestmark = pytest.mark.slow


def test_the_app_serialises_json_ignores_results_and_acks_late():
    assert app.conf.task_serializer == "json"
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_ignore_result is True
    assert app.conf.task_acks_late is True
    assert app.conf.beat_schedule["sweep"]["task"] == "flows.sweep"


def test_a_real_worker_runs_the_sweeper_sent_through_the_broker(start_proc):
    destination = DestinationFactory()
    Delivery.objects.create(destination=destination, method="POST", url="/listings/")
    worker = start_proc("worker", "celery", "-A", "clazar_dest", "worker", "--pool", "solo", "-l", "info")
    worker.wait_for("ready", timeout=60)
    app.send_task("flows.sweep")
    out = worker.wait_for("sweep: open deliveries {'queued': 1}", timeout=30)
    assert "Task flows.sweep" in out


def test_beat_schedules_the_sweeper_every_few_seconds(start_proc):
    worker = start_proc("worker", "celery", "-A", "clazar_dest", "worker", "--pool", "solo", "-l", "info")
    worker.wait_for("ready", timeout=60)
    beat = start_proc(
        "beat", "celery", "-A", "clazar_dest", "beat", "-l", "info", env={"CELERY_SWEEP_SECONDS": "1"}
    )
    beat.wait_for("Scheduler: Sending due task sweep (flows.sweep)", timeout=30)
    worker.wait_for("sweep: open deliveries none", timeout=30)
