"""The Celery app. Messages are only wake-ups: the database is the queue of record (DESIGN.md section 6).

Tasks take ids, re-read and claim their rows, so a duplicate or lost message never doubles or loses work;
that is why acks_late is safe here and results are never stored.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clazar_dest.settings")

app = Celery("clazar_dest")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,
    result_backend=None,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    timezone="UTC",
)


app.autodiscover_tasks(["flows"])
