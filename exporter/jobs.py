"""The job manager: one nursery for all exports, each export in its own cancel scope.

It lives in the app's serving lifespan (``app.create_app`` starts ``JobManager.run`` in
Quart-Trio's lifespan nursery), so when the server stops, every running export is
cancelled and cleaned up before the process exits.

A job is a value (its ``JobRecord``) plus a ``CancelScope``. At most
``max_concurrent_exports`` run at once; the others wait, first come first served, on a
``trio.Semaphore`` (trio's is FIFO) and show a ``queuePosition``. ``DELETE`` cancels the
scope, whether the job waits or runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import logging
import sys
import time
import uuid
from typing import Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.store)
import psycopg
import trio

from exporter.config import Settings
from exporter.metrics import Metrics
from exporter.pipeline import Progress, export_csv
from exporter.request import ExportRequest
from exporter.states import ExportStatus
from exporter.storage import ExportStorage
from exporter.store import JobRecord, JobStore, StoreUnavailable, utcnow

log = logging.getLogger(__name__)

RESTART_ERROR = "interrupted by a restart of the service; please start the export again"
SHUTDOWN_ERROR = "interrupted by a shutdown of the service; please start the export again"
# How long a stopping job may spend recording its final state.
FINAL_SAVE_TIMEOUT = 5.0
# Waits between attempts to reach the job database (start-up recovery, unsaved ends).
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)


class QueueFull(Exception):
    """No export slot is free and the queue holds ``max_queued_exports`` jobs already."""


class NotReady(StoreUnavailable):
    """The jobs of a previous run have not been recovered yet: the job database has not
    been reached since the start (answered like any other unreachable database)."""


@dataclasses.dataclass(eq=False, slots=True)
class Job:
    record: JobRecord
    progress: Progress = dataclasses.field(default_factory=Progress)
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    cancel_requested: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class JobView:
    """What the status endpoint shows: the record, fresh figures, the queue position."""

    record: JobRecord
    queue_position: int | None = None
    rows_per_second: float | None = None


def describe_error(exc: BaseException) -> str:
    """A sentence a user can act on; no SQL, no stack trace, no server paths."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, StoreUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__  # the job database's own error says more
    if isinstance(exc, OSError) and not isinstance(exc, psycopg.Error):
        if exc.errno == errno.ENOSPC:
            return "no space left on the device holding the export files"
        return f"could not write the export file: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, psycopg.errors.AdminShutdown):
        return "the database ended the export's connection (terminated by an administrator)"
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return "the export's query was cancelled on the database server"
    if isinstance(exc, psycopg.OperationalError):
        return "the connection to the database failed or was lost during the export"
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return f"the database reported an error: {exc.diag.message_primary}"
    return "the export failed because of an internal error; the server log has the details"


class JobManager:
    def __init__(
        self, settings: Settings, conninfo: str, store: JobStore, storage: ExportStorage
    ) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.store = store
        self.storage = storage
        self._live: dict[uuid.UUID, Job] = {}
        self._waiting: list[Job] = []  # FIFO, for queuePosition
        self._slots = trio.Semaphore(settings.max_concurrent_exports)
        self._nursery: trio.Nursery | None = None
        # Set once start-up recovery has run: no job is accepted before, since recovery
        # fails every pending job it finds.
        self.recovered = trio.Event()
        # Ends of jobs that could not be recorded (the database was away), saved later.
        self._unsaved: dict[uuid.UUID, JobRecord] = {}
        self.metrics: Metrics | None = None  # set by the app

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the jobs' nursery until cancelled; recover, expire and save in the background.

        Starts at once even when the database is down (the service answers /health and
        /ready says why it is not ready); recovery runs as soon as the database answers.
        The store is closed last, once every job has recorded how it ended.
        """
        await trio.to_thread.run_sync(self.storage.prepare)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # Recovered before the first request when the database is up; else later.
                await self._recover_when_reachable(attempts=1)
                if not self.recovered.is_set():
                    nursery.start_soon(self._recover_when_reachable)
                nursery.start_soon(self._expire_files)
                nursery.start_soon(self._save_unsaved)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._nursery = None
        finally:
            with trio.CancelScope(shield=True):
                await self.store.close()

    async def recover(self) -> None:
        """Fail jobs a previous process left unfinished and remove files no job owns.

        Failing (rather than re-queueing) is the honest choice: the client that asked
        may be long gone, and a re-run would export a different snapshot of the table.
        """
        failed = await self.store.fail_interrupted(RESTART_ERROR)
        if failed:
            log.warning("marked %d interrupted export(s) as failed", len(failed))
        completed = await self.store.completed_ids()
        for name in await trio.to_thread.run_sync(self.storage.remove_orphans, completed):
            log.info("removed orphan export file %s", name)

    async def _recover_when_reachable(self, attempts: int = sys.maxsize) -> None:
        for attempt in range(attempts):
            try:
                await self.recover()
            except StoreUnavailable as exc:
                if attempt + 1 == attempts:
                    log.warning("job database unreachable (%s); will keep trying", exc)
                    return
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.warning("job database unreachable (%s); retrying in %.1f s", exc, delay)
                await trio.sleep(delay)
            else:
                self.recovered.set()
                return

    async def _expire_files(self) -> None:
        """The janitor: completed exports older than EXPORT_TTL lose their files."""
        await self.recovered.wait()
        while True:
            try:
                due = await self.store.due_to_expire()
                # Files first: once a job says expired, its files are gone.
                for job_id in due:
                    await trio.to_thread.run_sync(self.storage.remove, job_id)
                if due:
                    await self.store.mark_expired(due)
            except (
                StoreUnavailable,
                psycopg.Error,
                OSError,
            ) as exc:  # the janitor must outlive a bad pass
                log.warning("could not expire exports: %s", exc)
            else:
                for job_id in due:
                    log.info(
                        "export %s expired; its files are removed",
                        job_id,
                        extra={"event": "export.expired", "export_id": str(job_id)},
                    )
            await trio.sleep(self.settings.janitor_interval)

    async def _save_unsaved(self) -> None:
        """Record the ends of jobs that finished while the database was away."""
        while True:
            await trio.sleep(RETRY_DELAYS[-1] if not self._unsaved else RETRY_DELAYS[0])
            for job_id, record in list(self._unsaved.items()):
                try:
                    await self.store.save(record)
                except (StoreUnavailable, psycopg.Error):
                    break  # still away: the next round tries again
                log.info("recorded the end of export %s (%s)", job_id, record.status)
                del self._unsaved[job_id]

    # -- queries -----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {"running": len(self._live) - len(self._waiting), "queued": len(self._waiting)}

    async def view(self, job_id: uuid.UUID) -> JobView | None:
        job = self._live.get(job_id)
        if job is None:
            record = self._unsaved.get(job_id) or await self.store.get(job_id)
            if record is None:
                return None
            return JobView(record, rows_per_second=_final_rate(record))
        record = dataclasses.replace(
            job.record,
            processed_rows=job.progress.processed_rows,
            bytes_written=job.progress.bytes_written,
            total_rows=job.progress.total_rows,
        )
        position = self._waiting.index(job) + 1 if job in self._waiting else None
        rate = None
        if job.progress.started_at is not None:
            elapsed = time.monotonic() - job.progress.started_at
            if elapsed > 0:
                rate = job.progress.processed_rows / elapsed
        return JobView(record, queue_position=position, rows_per_second=rate)

    async def recent(self, limit: int) -> list[JobView]:
        """The most recent jobs, newest first, running ones with their live figures."""
        views = []
        for record in await self.store.recent(limit):
            view = await self.view(record.id) if record.id in self._live else None
            views.append(view or JobView(record, rows_per_second=_final_rate(record)))
        return views

    async def wait_for_end(self, job_id: uuid.UUID) -> None:
        """Until the job has ended (at once if it is not running or queued)."""
        job = self._live.get(job_id)
        if job is not None:
            await job.done.wait()

    # -- commands ----------------------------------------------------------------------

    async def submit(self, request: ExportRequest) -> JobRecord:
        """Record a new job and queue it. Raises ``QueueFull`` when there is no room."""
        if self._nursery is None:
            raise RuntimeError("the job manager is not running")
        if not self.recovered.is_set():
            raise NotReady("the job database has not been reached yet")
        if self._slots.value == 0 and len(self._waiting) >= self.settings.max_queued_exports:
            raise QueueFull
        job = Job(JobRecord(id=uuid.uuid4(), request=request))
        await self.store.save(job.record)
        self._live[job.record.id] = job
        self._waiting.append(job)
        self._nursery.start_soon(self._run, job, name=f"export {job.record.id}")
        _log_transition(job.record, request=request.to_json())
        return job.record

    async def cancel(self, job_id: uuid.UUID) -> bool:
        """Cancel a job or withdraw a completed file; False when the id is unknown.

        Returns once the job has stopped, its query is gone and its files are removed.
        """
        job = self._live.get(job_id)
        if job is not None:
            job.cancel_requested = True
            job.scope.cancel()
            await job.done.wait()
            if job.record.status != ExportStatus.COMPLETED:
                return True
            # It completed while recording its end, too late to notice the cancel: it is a
            # completed export now, withdrawn below like any other.
        record = await self.store.get(job_id)
        if record is None:
            return False
        if record.status == ExportStatus.COMPLETED:
            await trio.to_thread.run_sync(self.storage.remove, job_id)
            record.status = ExportStatus.CANCELLED
            await self.store.save(record)
        return True

    # -- one job -----------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        record = job.record
        # What the job ends as if nothing below says otherwise: only a cancellation from
        # outside (the server stopping) leaves the body without setting it.
        status = ExportStatus.FAILED
        error: str | None = SHUTDOWN_ERROR
        try:
            with job.scope:
                async with self._slots:
                    self._waiting.remove(job)
                    record.status, record.started_at = ExportStatus.PROCESSING, utcnow()
                    _log_transition(record)
                    await self.store.save(record)
                    await self._export(job)
                    status, error = ExportStatus.COMPLETED, None
        except Exception as exc:
            log.warning("export %s raised", record.id, exc_info=True)
            status, error = ExportStatus.FAILED, describe_error(exc)
        finally:
            if job in self._waiting:
                self._waiting.remove(job)
            if job.cancel_requested:
                status, error = ExportStatus.CANCELLED, None
            record.status, record.error = status, error
            self._copy_progress(job)
            if self.metrics is not None:
                self.metrics.export_ended(
                    status, record.processed_rows, record.file_size or 0, _duration(record)
                )
            # Shielded: when the server stops, this cleanup must still run to the end.
            with trio.CancelScope(shield=True) as final_scope:
                final_scope.deadline = trio.current_time() + FINAL_SAVE_TIMEOUT
                if status != ExportStatus.COMPLETED:
                    record.completed_at = utcnow()
                    record.file_size = None
                    await trio.to_thread.run_sync(self.storage.remove, record.id)
                try:
                    await self.store.save(record)
                except Exception:
                    log.exception("could not record the end of export %s; will retry", record.id)
                    self._unsaved[record.id] = record
            _log_transition(
                record,
                rows=record.processed_rows,
                bytes=record.file_size
                if status == ExportStatus.COMPLETED
                else record.bytes_written,
                duration_s=None if (took := _duration(record)) is None else round(took, 3),
                error=error,
            )
            del self._live[record.id]
            job.done.set()

    async def _export(self, job: Job) -> None:
        record = job.record
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._save_progress, job)
            size = await export_csv(
                self.conninfo,
                record.request,
                self.storage,
                record.id,
                progress=job.progress,
                batch_rows=self.settings.batch_rows,
                channel_batches=self.settings.channel_batches,
                gzip=self.settings.gzip_exports,
                row_source=self.settings.row_source,
                application_name=f"exporter {record.id}",
            )
            nursery.cancel_scope.cancel()
        self._copy_progress(job)
        record.file_size = size
        record.completed_at = utcnow()
        record.expires_at = record.completed_at + dt.timedelta(seconds=self.settings.export_ttl)

    def _copy_progress(self, job: Job) -> None:
        job.record.processed_rows = job.progress.processed_rows
        job.record.bytes_written = job.progress.bytes_written
        job.record.total_rows = job.progress.total_rows

    async def _save_progress(self, job: Job) -> None:
        """Write the running figures a few times a second, never once per batch."""
        while True:
            await trio.sleep(self.settings.progress_interval)
            self._copy_progress(job)
            # Shielded: cancelling a query half-way would break the store's connection for
            # the final save that follows; a deadline still bounds a hung database.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + FINAL_SAVE_TIMEOUT
                try:
                    await self.store.save(job.record)
                except (StoreUnavailable, psycopg.Error):
                    log.warning("could not save progress of export %s", job.record.id)


def _log_transition(record: JobRecord, **facts: Any) -> None:
    """One line per state a job enters; with LOG_FORMAT=json its facts are keys."""
    shown = ", ".join(f"{name} {value}" for name, value in facts.items() if value is not None)
    log.info(
        "export %s %s%s",
        record.id,
        record.status,
        f": {shown}" if shown else "",
        extra={
            "event": f"export.{record.status}",
            "export_id": str(record.id),
            "status": record.status,
            **facts,
        },
    )


def _duration(record: JobRecord) -> float | None:
    if record.started_at is None or record.completed_at is None:
        return None
    return (record.completed_at - record.started_at).total_seconds()


def _final_rate(record: JobRecord) -> float | None:
    if record.started_at is None or record.completed_at is None:
        return None
    elapsed = (record.completed_at - record.started_at).total_seconds()
    return record.processed_rows / elapsed if elapsed > 0 else None


__all__: list[Any] = ["Job", "JobManager", "JobView", "NotReady", "QueueFull", "describe_error"]
