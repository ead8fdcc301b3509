"""File imports into a Nexset: create (web), run (worker), report progress (web).

``run`` is two passes over the stored file (``flows.ingest.reader``): a checking pass that decides
everything and writes nothing, then a storing pass that writes every good record in ONE transaction
with the Nexset row locked, so an import is all-or-nothing even when the worker dies half-way. With
``partial_ok`` the good rows are stored and the rejected ones listed (status ``partial``).

Records go to PostgreSQL with COPY and to SQLite with batched ``executemany``; both take the JSON text
the storing pass produced, without building Python dicts. Live progress lives in the cache (the storing
transaction keeps the Import row out of reach on SQLite); the final counts land on the Import row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from queue import Queue
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import connection, transaction
from django.utils import timezone
from psycopg.copy import QueuedLibpqWriter

from flows import tasks
from flows.ingest import reader
from flows.ingest.errors import IngestError, Problem
from flows.ingest.schema import combine, conflicts
from flows.ingest.sniff import Sniffed
from flows.models import Import, Nexset, Record

log = logging.getLogger(__name__)

CHECK_SHARE = 0.35  # of the progress bar; measured: the checking pass takes about a third of the time
PROGRESS_TTL = 24 * 3600
STALE_SECONDS = 600  # a running import that reported no progress for this long is taken over
ANALYZE_AFTER = 50_000  # rows; PostgreSQL's statistics lag behind a bulk load that big


def limits() -> reader.Limits:
    return reader.Limits(max_rows=settings.UPLOAD_MAX_ROWS, max_record=settings.UPLOAD_MAX_RECORD_CHARS)


def create(
    *,
    user: Any,
    upload: UploadedFile,
    sniffed: Sniffed,
    nexset: Nexset | None = None,
    name: str = "",
    text: bool = False,
    partial_ok: bool = False,
) -> Import:
    """Store the uploaded file, create the Import (and the Nexset when ``nexset`` is None), and queue the
    import once the transaction commits."""
    imp = Import(
        filename=(upload.name or "upload")[:255],
        size_bytes=upload.size or 0,
        partial_ok=partial_ok,
        options={"text": text, **sniffed.as_dict()},
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    imp.stored_file = default_storage.save(f"imports/{imp.uuid}.upload", upload)
    try:
        with transaction.atomic():
            if nexset is None:
                nexset = Nexset.objects.create(name=name, kind=Nexset.Kind.UPLOAD, created_by=imp.created_by)
            imp.nexset = nexset
            imp.save()
            transaction.on_commit(lambda: tasks.run_import.delay(imp.pk))
    except BaseException:
        default_storage.delete(imp.stored_file)
        raise
    log.info(
        "import %s queued: %s (%s bytes) into nexset %s", imp.uuid, imp.filename, imp.size_bytes, nexset.uuid
    )
    return imp


def run(import_id: int) -> Import | None:
    """Claim an import and run it to the end. Returns None when there was nothing to claim (a duplicate
    message, a finished import, or one still running elsewhere)."""
    if not _claim(import_id):
        log.info("import %s is not queued (missing, done or running elsewhere): nothing to do", import_id)
        return None
    imp = Import.objects.select_related("nexset").get(pk=import_id)
    tracker = Tracker(imp)
    superseded = False
    try:
        _run(imp, tracker)
    except Superseded:
        superseded = True
        log.warning("import %s was taken over by another worker; this run stored nothing", imp.uuid)
    except Exception as exc:
        if not Import.objects.filter(pk=import_id).exists():
            log.info("import %s stopped: it was deleted with its Nexset (%s)", imp.uuid, type(exc).__name__)
        else:
            log.exception("import %s failed unexpectedly", imp.uuid)
            _finish(
                imp,
                Import.Status.FAILED,
                f"The import stopped on an unexpected error ({type(exc).__name__}); it was logged and "
                "nothing was stored.",
            )
    finally:
        if not superseded:
            if imp.stored_file:
                default_storage.delete(imp.stored_file)
                Import.objects.filter(pk=imp.pk).update(stored_file="")
            tracker.clear()
    return None if superseded else Import.objects.filter(pk=import_id).first()


class Superseded(Exception):
    """Another worker took the import over (this one looked dead); this run must not store anything."""


def _claim(import_id: int) -> bool:
    """queued -> running; or take over a running import whose worker stopped reporting progress (killed:
    its transaction rolled back, and the broker redelivered the message)."""
    now = timezone.now()
    fresh = Import.objects.filter(pk=import_id, status=Import.Status.QUEUED)
    if fresh.update(status=Import.Status.RUNNING, started_at=now, updated_at=now):
        return True
    running = (
        Import.objects.filter(pk=import_id, status=Import.Status.RUNNING).values("uuid", "started_at").first()
    )
    if running is None or running["started_at"] is None:
        return False
    state = cache.get(progress_key(running["uuid"]))
    heard = state["updated"] if state else running["started_at"].timestamp()
    if time.time() - heard < STALE_SECONDS:
        return False
    log.warning("import %s: no progress for %s s, taking it over", running["uuid"], int(time.time() - heard))
    same = Import.objects.filter(pk=import_id, status=Import.Status.RUNNING, started_at=running["started_at"])
    return bool(same.update(started_at=now, updated_at=now))


def _run(imp: Import, tracker: Tracker) -> None:
    def opener() -> Any:
        return default_storage.open(imp.stored_file, "rb")

    lim = limits()
    try:
        sniffed = reader.head(opener, imp.filename)
    except IngestError as exc:
        return _finish(
            imp, Import.Status.FAILED, "Nothing was imported: the file cannot be read.", [exc.problem]
        )
    checked = reader.check(
        opener, sniffed, lim, text=bool(imp.options.get("text")), progress=tracker.checking
    )
    imp.rows_read = checked.rows
    if checked.fatal is not None:
        return _finish(
            imp, Import.Status.FAILED, f"Nothing was imported: {checked.fatal}", [checked.fatal], checked
        )
    if checked.problem_total and not imp.partial_ok:
        return _finish(
            imp,
            Import.Status.FAILED,
            f"Nothing was imported: {checked.problem_total:,} of {checked.rows:,} rows have problems. Fix them "
            "and upload the file again, or upload it with “Import the good rows and list the rejected ones”.",
            checked=checked,
        )
    if checked.good == 0:
        return _finish(
            imp, Import.Status.FAILED, "Nothing was imported: every row was rejected.", checked=checked
        )
    tracker.storing_started(checked)
    with transaction.atomic():
        nexset = Nexset.objects.select_for_update().get(pk=imp.nexset_id)
        misfits = conflicts(nexset.schema, checked.schema) if nexset.record_count else []
        if not misfits:
            _store(imp, nexset, opener, checked, lim, tracker)
    if not misfits and connection.vendor == "postgresql" and checked.good >= ANALYZE_AFTER:
        with connection.cursor() as cursor:  # fresh statistics, so searches walk the seq index
            cursor.execute(f"ANALYZE {connection.ops.quote_name(Record._meta.db_table)}")
    if misfits:
        message = (
            f"Nothing was imported: the file does not fit the Nexset “{imp.nexset.name}”. {' '.join(misfits)}"
        )
        _finish(imp, Import.Status.FAILED, message, [Problem(text) for text in misfits], checked)
    return None


def _store(
    imp: Import,
    nexset: Nexset,
    opener: Callable[[], Any],
    checked: reader.Check,
    lim: reader.Limits,
    tracker: Tracker,
) -> None:
    """The storing pass, inside the transaction holding the Nexset's row lock."""
    mine = Import.objects.filter(pk=imp.pk, status=Import.Status.RUNNING, started_at=imp.started_at)
    if not mine.exists():
        raise Superseded
    stored = write(nexset.pk, nexset.last_seq, reader.encode(opener, checked, lim), tracker.storing)
    if stored != checked.good:
        raise RuntimeError(f"the storing pass found {stored} good rows, the checking pass {checked.good}")
    nexset.schema = combine(nexset.schema, nexset.record_count, checked.schema, stored)
    nexset.last_seq += stored
    nexset.record_count += stored
    nexset.last_record_at = timezone.now()
    nexset.save(update_fields=["schema", "last_seq", "record_count", "last_record_at", "updated_at"])
    tasks.wake_nexset(nexset.pk)  # after commit: active destinations deliver the new records
    imp.rows_stored = stored
    imp.options = {
        **imp.options,
        "first_seq": nexset.last_seq - stored + 1,
        "last_seq": nexset.last_seq,
        "encoding": checked.sniffed.encoding,
    }
    if checked.problem_total:
        message = (
            f"Imported {stored:,} rows; {checked.problem_total:,} rejected rows are listed below and "
            "were not imported."
        )
        _finish(imp, Import.Status.PARTIAL, message, checked=checked)
    else:
        _finish(imp, Import.Status.SUCCEEDED, f"Imported {stored:,} rows.", checked=checked)


def _finish(
    imp: Import,
    status: str,
    message: str,
    problems: list[Problem] | None = None,
    checked: reader.Check | None = None,
) -> None:
    listed = list(problems or [])
    total = len(listed)
    if checked is not None:
        imp.rows_read = checked.rows
        imp.rows_rejected = checked.problem_total
        listed += checked.problems
        total += checked.problem_total
    imp.status = status
    imp.message = message
    imp.errors = [p.as_dict() for p in listed[: reader.MAX_PROBLEMS]]
    imp.error_total = total
    imp.finished_at = timezone.now()
    imp.save(
        update_fields=[
            "status",
            "message",
            "errors",
            "error_total",
            "finished_at",
            "rows_read",
            "rows_stored",
            "rows_rejected",
            "options",
            "updated_at",
        ]
    )
    log.info("import %s %s: %s", imp.uuid, status, message)


# Writing records ------------------------------------------------------------------------------------


def write(
    nexset_id: int,
    last_seq: int,
    batches: Iterable[list[str]],
    on_batch: Callable[[int], None] | None = None,
    *,
    method: str | None = None,
) -> int:
    """Append JSON texts as Records numbered from ``last_seq + 1``; return how many. Call inside the
    transaction that holds the Nexset row lock."""
    method = method or ("copy" if connection.vendor == "postgresql" else "insert")
    writer = _copy if method == "copy" else _insert
    return writer(nexset_id, last_seq, batches, on_batch or (lambda stored: None))


class _Writer(QueuedLibpqWriter):
    """psycopg's threaded COPY writer with a short queue (64 chunks of at most 128 KB), so a server slower
    than the parser cannot grow the worker's memory."""

    def __init__(self, cursor: Any) -> None:
        super().__init__(cursor)
        self._queue = Queue(maxsize=64)


_COLUMNS = ("nexset_id", "seq", "data", "source_ref", "created_at", "updated_at")


def _table() -> tuple[str, str]:
    quote = connection.ops.quote_name
    return quote(Record._meta.db_table), ", ".join(quote(c) for c in _COLUMNS)


def _copy(
    nexset_id: int, last_seq: int, batches: Iterable[list[str]], on_batch: Callable[[int], None]
) -> int:
    table, columns = _table()
    now = timezone.now().isoformat()
    seq = last_seq
    suffix = f"\t\\N\t{now}\t{now}\n"
    with connection.cursor() as cursor:
        # Check the records' foreign key while copying, when the server has time to spare, instead of
        # a million deferred checks at COMMIT.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        raw = cursor.cursor
        # A writer thread feeds the server while this thread parses and encodes the next batch.
        with raw.copy(f"COPY {table} ({columns}) FROM STDIN", writer=_Writer(raw)) as copy:
            for texts in batches:
                first = seq + 1
                seq += len(texts)
                # COPY's text format: JSON text has no tabs or line breaks, only backslashes to double.
                block = "".join(
                    [
                        f"{nexset_id}\t{n}\t{t.replace(chr(92), chr(92) * 2) if chr(92) in t else t}{suffix}"
                        for n, t in zip(range(first, seq + 1), texts, strict=True)
                    ]
                )
                copy.write(block.encode())
                on_batch(seq - last_seq)
    return seq - last_seq


def _insert(
    nexset_id: int, last_seq: int, batches: Iterable[list[str]], on_batch: Callable[[int], None]
) -> int:
    table, columns = _table()
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    sql = f"INSERT INTO {table} ({columns}) VALUES (%s, %s, %s, NULL, %s, %s)"  # noqa: S608 (model names)
    seq = last_seq
    with connection.cursor() as cursor:
        for texts in batches:
            first = seq + 1
            seq += len(texts)
            cursor.executemany(
                sql, [(nexset_id, n, t, now, now) for n, t in zip(range(first, seq + 1), texts, strict=True)]
            )
            on_batch(seq - last_seq)
    return seq - last_seq


# Progress -------------------------------------------------------------------------------------------


def progress_key(uuid: Any) -> str:
    return f"flows:import:{uuid}:progress"


class Tracker:
    """Writes live progress to the cache, at most twice a second."""

    def __init__(self, imp: Import) -> None:
        self.key = progress_key(imp.uuid)
        self.size = imp.size_bytes
        self.started = time.time()
        self.state: dict[str, Any] = {
            "phase": "checking",
            "started": self.started,
            "phase_started": self.started,
            "size": self.size,
            "bytes": 0,
            "rows_read": 0,
            "rows_stored": 0,
            "total": 0,
        }
        self.last = 0.0
        self._save(force=True)

    def checking(self, rows: int, position: int) -> None:
        self.state.update(rows_read=rows, bytes=position)
        self._save(force=True)

    def storing_started(self, checked: reader.Check) -> None:
        self.state.update(
            phase="storing",
            phase_started=time.time(),
            total=checked.good,
            rows_read=checked.rows,
            bytes=self.size,
        )
        self._save(force=True)

    def storing(self, stored: int) -> None:
        self.state["rows_stored"] = stored
        self._save()

    def _save(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self.last >= 0.5:
            self.last = now
            self.state["updated"] = now
            cache.set(self.key, dict(self.state), PROGRESS_TTL)

    def clear(self) -> None:
        cache.delete(self.key)


def read_as(imp: Import) -> str:
    """How the file was read, e.g. "CSV, semicolon-separated, UTF-8"."""
    options = imp.options
    if "format" not in options:
        return "not yet known"
    return Sniffed(options["format"], options.get("encoding", "utf-8"), options.get("delimiter", ",")).label


def progress(imp: Import) -> dict[str, Any]:
    """What the progress bar shows: phase, percent, rows read/stored, rate (rows/s), seconds left."""
    done = imp.status in (Import.Status.SUCCEEDED, Import.Status.PARTIAL, Import.Status.FAILED)
    view: dict[str, Any] = {
        "done": done,
        "phase": "done" if done else "queued" if imp.status == Import.Status.QUEUED else "starting",
        "percent": 100 if done else 0,
        "rows_read": imp.rows_read,
        "rows_stored": imp.rows_stored,
        "total": imp.rows_stored,
        "rate": None,
        "seconds_left": None,
    }
    if done:
        if imp.started_at and imp.finished_at:
            seconds = max((imp.finished_at - imp.started_at).total_seconds(), 0.001)
            view["rate"] = int((imp.rows_stored or imp.rows_read) / seconds)
            view["seconds"] = seconds
        return view
    state = cache.get(progress_key(imp.uuid))
    if not state:
        return view
    now = time.time()
    in_phase = max(now - state["phase_started"], 0.001)
    overall = max(now - state["started"], 0.001)
    view.update(
        phase=state["phase"],
        rows_read=state["rows_read"],
        rows_stored=state["rows_stored"],
        total=state["total"],
    )
    if state["phase"] == "checking":
        share = state["bytes"] / state["size"] if state["size"] else 0
        fraction = CHECK_SHARE * min(share, 1)
        view["rate"] = int(state["rows_read"] / in_phase)
        if fraction > 0.01:
            view["seconds_left"] = int(overall / fraction * (1 - fraction))
    else:
        share = state["rows_stored"] / state["total"] if state["total"] else 0
        fraction = CHECK_SHARE + (1 - CHECK_SHARE) * min(share, 1)
        rate = state["rows_stored"] / in_phase
        view["rate"] = int(rate)
        if rate > 0:
            view["seconds_left"] = int((state["total"] - state["rows_stored"]) / rate)
    view["percent"] = round(100 * fraction)
    return view
