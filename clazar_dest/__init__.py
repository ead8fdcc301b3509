"""clazar-dest: push operations data into Clazar."""

from clazar_dest.celery import app as celery_app

__all__ = ("celery_app",)
