"""A cross-process exclusive lock for the embedded default (SQLite has no row locks).

SQLite means one machine, so an ``flock`` on a file next to the database covers every process. The file
name carries a hash of the database path, so two data folders never share a lock.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection


@contextmanager
def file_lock(name: str, *, wait: float, on_timeout: Callable[[], Exception]) -> Iterator[None]:
    """Hold the exclusive lock ``name``; raise ``on_timeout()`` after ``wait`` seconds of waiting."""
    import fcntl  # POSIX only, like the embedded SQLite deployment it serves

    database = str(connection.settings_dict["NAME"])
    tag = hashlib.sha256(database.encode()).hexdigest()[:12]
    folder = Path(settings.DATA_DIR) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}-{tag}.lock", "a+b") as handle:
        give_up = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > give_up:
                    raise on_timeout() from None
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
