"""The job manager: one nursery for the exports this process runs, each in its own cancel
scope, fed by the queue that every process sharing the database shares.

It lives in the app's serving lifespan (``app.create_app`` starts ``JobManager.run`` in
Quart-Trio's lifespan nursery), or in a worker process (``exporter.worker``), so when the
process stops, every export it runs is stopped and handed back to the queue first.

A process with free slots claims the oldest waiting job (``JobStore.claim``), woken by the
``new`` notice another process sends on submit, and otherwise looking every second (which
is also how it finds jobs whose owner died). While it runs a job it renews the job's
lease; the job's cancel scope has a deadline a little before the lease runs out, so a
process that cannot renew (the database is away) stops writing before anyone else may
take the job over. docs/ARCHITECTURE.md tells the whole protocol.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import functools
import logging
import os
import socket
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
from exporter.states import LIVE_STATUSES, Checkpoint, ExportStatus
from exporter.storage import CannotResume, ExportFile, ExportStorage, ExportStoreError
from exporter.store import JobRecord, JobStore, Notice, Notifications, StoreUnavailable, utcnow

log = logging.getLogger(__name__)

# How long a stopping job may spend recording its final state.
FINAL_SAVE_TIMEOUT = 5.0
# Waits between attempts to reach the job database (start-up, unsaved ends).
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)
# How often an idle process looks for work nobody announced (jobs whose owner died).
CLAIM_POLL_SECONDS = 1.0
# How often the global running and queued counts (for /health, /metrics) are refreshed.
COUNTS_INTERVAL = 1.0
# A file of a finished or unknown export is removed only once it is this old: a process
# that has just claimed a job, or just finished one, may not have said so yet.
ORPHAN_GRACE_SECONDS = 600.0
# How long DELETE waits for another process to stop a job it runs.
REMOTE_CANCEL_WAIT = 5.0


def gave_up_error(attempts: int) -> str:
    return (
        f"the export was interrupted {attempts} times (the process running it stopped"
        " without handing it back); not trying again"
    )


class QueueFull(Exception):
    """``max_queued_exports`` jobs wait already, in all the processes together."""


class NotReady(StoreUnavailable):
    """The job database has not been reached since the start (answered like any other
    unreachable database)."""


@dataclasses.dataclass(eq=False, slots=True)
class Job:
    """A job this process runs: its record, live figures and cancel scope."""

    record: JobRecord
    taken_over: bool = False
    progress: Progress = dataclasses.field(default_factory=Progress)
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    cancel_requested: bool = False
    # The lease ran out (or another process owns the job now): hands off everything.
    lost: bool = False


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
    if isinstance(exc, ExportStoreError):
        return str(exc)  # a sentence naming the store already
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
    if isinstance(exc, psycopg.Error) and (exc.diag.message_primary or str(exc)):
        # (An error of the COPY reader's connection carries its message, not a diag.)
        return f"the database reported an error: {exc.diag.message_primary or exc}"
    return "the export failed because of an internal error; the server log has the details"


class JobManager:
    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        store: JobStore,
        storage: ExportStorage,
    ) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.store = store
        self.storage = storage
        # Who this process is, in export_jobs.owner: findable on the machine it names.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.runs_exports = settings.max_concurrent_exports > 0
        self._running: dict[uuid.UUID, Job] = {}
        self._slots = trio.Semaphore(settings.max_concurrent_exports)
        self._work = trio.Event()  # set when there may be work to claim
        self._ended: dict[uuid.UUID, trio.Event] = {}  # waiters for jobs run elsewhere
        self._global = {"running": 0, "queued": 0}
        self._local_changes = 0  # what this process did to the queue since it started
        self._nursery: trio.Nursery | None = None
        # Set once the database has been reached and old files looked at: no job is
        # accepted before (the service answers /health and /ready says why meanwhile).
        self.recovered = trio.Event()
        # Ends of jobs that could not be recorded (the database was away), saved later.
        self._unsaved: dict[uuid.UUID, JobRecord] = {}
        self.metrics: Metrics | None = None  # set by the app

    @property
    def lease(self) -> float:
        return self.settings.lease_seconds

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the jobs' nursery until cancelled; claim, renew, expire and sweep meanwhile.

        Starts at once even when the database is down; the rest begins as soon as it
        answers. On cancellation every running job is handed back to the queue, and the
        store is closed last.
        """
        await trio.to_thread.run_sync(self.storage.prepare)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._listen)
                await self._recover_when_reachable(attempts=1)
                if not self.recovered.is_set():
                    nursery.start_soon(self._recover_when_reachable)
                nursery.start_soon(self._janitor)
                nursery.start_soon(self._save_unsaved)
                nursery.start_soon(self._refresh_counts)
                if self.runs_exports:
                    nursery.start_soon(self._claim_loop)
                    nursery.start_soon(self._renew_leases)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._nursery = None
        finally:
            with trio.CancelScope(shield=True):
                await self.store.close()

    async def _recover_when_reachable(self, attempts: int = sys.maxsize) -> None:
        for attempt in range(attempts):
            try:
                await self.store.ping()
                try:
                    await self._sweep_files()
                except ExportStoreError as exc:
                    # Exports go ahead: each one that meets the store fails saying why, and
                    # the janitor sweeps once the store answers.
                    log.warning("could not look at the export store: %s", exc)
            except StoreUnavailable as exc:
                if attempt + 1 == attempts:
                    log.warning("job database unreachable (%s); will keep trying", exc)
                    return
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.warning("job database unreachable (%s); retrying in %.1f s", exc, delay)
                await trio.sleep(delay)
            else:
                self.recovered.set()
                self._work.set()
                return

    async def _sweep_files(self) -> None:
        """Remove files no job will use: of exports that are gone, failed, cancelled or
        expired (and partial files of completed ones), once older than the grace period.
        Files of a waiting or running job are never touched, wherever it runs."""
        files = await trio.to_thread.run_sync(self.storage.export_files)
        if not files:
            return
        statuses = await self.store.statuses(sorted({f.export_id for f in files}))
        for file in files:
            if _orphaned(file, statuses.get(file.export_id)):
                log.info("removing orphan export file %s", file.name)
                await trio.to_thread.run_sync(self.storage.remove_file, file)

    async def _janitor(self) -> None:
        """Completed exports older than EXPORT_TTL lose their files; orphans are swept."""
        await self.recovered.wait()
        while True:
            due: list[uuid.UUID] = []
            try:
                due = await self.store.due_to_expire()
                # Files first: once a job says expired, its files are gone.
                for job_id in due:
                    await trio.to_thread.run_sync(self.storage.remove, job_id)
                if due:
                    await self.store.mark_expired(due)
                await self._sweep_files()
            except (StoreUnavailable, psycopg.Error, OSError) as exc:
                # The janitor must outlive a bad pass: the next one tries again.
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
                    recorded = await self.store.finish(self.owner, record)
                except (StoreUnavailable, psycopg.Error):
                    break  # still away: the next round tries again
                if recorded:
                    log.info("recorded the end of export %s (%s)", job_id, record.status)
                    await self._remove_unwanted_files(record)
                else:  # its lease ran out meanwhile and another process took it over
                    log.warning("export %s was taken over before its end was recorded", job_id)
                del self._unsaved[job_id]

    async def _refresh_counts(self) -> None:
        while True:
            # On failure /health and /metrics show the last figures there were.
            with (
                trio.move_on_after(COUNTS_INTERVAL * 5),
                contextlib.suppress(StoreUnavailable, psycopg.Error),
            ):
                changes = self._local_changes
                counted = await self.store.counts()
                if changes == self._local_changes:  # else older than what this process did
                    self._global = counted
            await trio.sleep(COUNTS_INTERVAL)

    async def _listen(self) -> None:
        await Notifications(self.conninfo).run(self._on_notice, self._on_reconnect)

    def _on_notice(self, notice: Notice) -> None:
        if notice.what == "new":
            self._work.set()
        elif notice.what == "cancel":
            job = self._running.get(notice.job_id)
            if job is not None:
                job.cancel_requested = True
                job.scope.cancel()
        elif notice.what == "ended":
            ended = self._ended.pop(notice.job_id, None)
            if ended is not None:
                ended.set()

    def _on_reconnect(self) -> None:
        # Notices may have been missed while the connection was away: look again.
        self._work.set()
        for ended in self._ended.values():
            ended.set()
        self._ended.clear()

    # -- claiming and leases ----------------------------------------------------------

    async def _claim_loop(self) -> None:
        await self.recovered.wait()
        while True:
            await self._slots.acquire()
            self._work = trio.Event()
            sent = trio.current_time()
            try:
                claim = await self.store.claim(self.owner, self.lease, skip=[*self._unsaved])
            except (StoreUnavailable, psycopg.Error) as exc:
                log.warning("could not claim work: %s", exc)
                claim = None
            if claim is None:
                self._slots.release()
                with trio.move_on_after(CLAIM_POLL_SECONDS):
                    await self._work.wait()
                continue
            assert self._nursery is not None
            if not claim.taken_over:
                self._count("queued", -1)
            self._count("running", +1)
            job = Job(claim.record, taken_over=claim.taken_over)
            # Stop a little before the lease runs out, unless it is renewed by then: counted
            # from when the claim was sent, since the lease began at some moment after.
            job.scope.deadline = sent + self._lease_margin()
            self._running[job.record.id] = job
            self._nursery.start_soon(self._run, job, name=f"export {job.record.id}")
            self._work.set()  # a slot may still be free: look again at once

    def _lease_margin(self) -> float:
        """How long after a renewal was sent the job may go on writing: the lease, less a
        fifth of it for the stop to take effect (a write in a thread finishes first)."""
        return self.lease * 0.8

    async def _renew_leases(self) -> None:
        while True:
            await trio.sleep(self.lease / 3)
            job_ids = [*self._running, *self._unsaved]
            if not job_ids:
                continue
            sent = trio.current_time()
            held: dict[uuid.UUID, bool] | None = None
            try:
                with trio.move_on_after(self.lease / 3):
                    held = await self.store.renew(self.owner, job_ids, self.lease)
            except (StoreUnavailable, psycopg.Error) as exc:
                log.warning("could not renew leases: %s", exc)
            if held is None:
                continue  # not renewed: the jobs' deadlines stay where they were
            for job_id, job in list(self._running.items()):
                if job_id not in job_ids:
                    continue  # claimed after the renewal was sent
                if job_id not in held:
                    log.error("export %s: lease lost; stopping without touching it", job_id)
                    job.lost = True
                    job.scope.cancel()
                    continue
                job.scope.deadline = sent + self._lease_margin()
                if held[job_id] and not job.cancel_requested:
                    job.cancel_requested = True  # a cancel whose notice went missing
                    job.scope.cancel()

    # -- queries -----------------------------------------------------------------------

    def _count(self, status: str, change: int) -> None:
        """What this process just did to the queue, shown at once (the database's count
        follows within ``COUNTS_INTERVAL``)."""
        self._global[status] = max(self._global[status] + change, 0)
        self._local_changes += 1

    def counts(self) -> dict[str, int]:
        """Exports running in this process, and waiting in all of them (from memory)."""
        return {"running": len(self._running), "queued": self._global["queued"]}

    def global_counts(self) -> dict[str, int]:
        """Running and waiting in every process sharing the database (refreshed each second)."""
        return dict(self._global)

    async def view(self, job_id: uuid.UUID) -> JobView | None:
        job = self._running.get(job_id)
        if job is None:
            record = self._unsaved.get(job_id) or await self.store.get(job_id)
            if record is None:
                return None
            position = None
            if record.status == ExportStatus.PENDING:
                position = await self.store.queue_position(record)
            rate = _final_rate(record) or _running_rate(record)
            return JobView(record, queue_position=position, rows_per_second=rate)
        self._copy_progress(job)
        rate = None
        if job.progress.started_at is not None:
            elapsed = time.monotonic() - job.progress.started_at
            resumed = job.record.resumed_from_rows or 0
            if elapsed > 0:
                rate = (job.progress.processed_rows - resumed) / elapsed
        return JobView(dataclasses.replace(job.record), rows_per_second=rate)

    async def recent(self, limit: int) -> list[JobView]:
        """The most recent jobs, newest first, running ones with their live figures."""
        views = []
        for record in await self.store.recent(limit):
            view = await self.view(record.id) if record.id in self._running else None
            views.append(view or JobView(record, rows_per_second=_final_rate(record)))
        return views

    async def wait_for_end(self, job_id: uuid.UUID) -> None:
        """Until the job has ended here, or another process says it ended there."""
        job = self._running.get(job_id)
        if job is not None:
            await job.done.wait()
            return
        await self._ended.setdefault(job_id, trio.Event()).wait()

    # -- commands ----------------------------------------------------------------------

    async def submit(self, request: ExportRequest) -> JobRecord:
        """Record a new job in the queue. Raises ``QueueFull`` when there is no room."""
        if not self.recovered.is_set():
            raise NotReady("the job database has not been reached yet")
        record = JobRecord(id=uuid.uuid4(), request=request)
        if not await self.store.insert(record, max_queued=self.settings.max_queued_exports):
            raise QueueFull
        self._count("queued", +1)
        self._work.set()
        _log_transition(record, request=request.to_json())
        return record

    async def cancel(self, job_id: uuid.UUID) -> bool:
        """Cancel a job wherever it runs, or withdraw a completed file; False when the id
        is unknown. Returns once the job has stopped, its query is gone and its files are
        removed (for a job another process runs: once that process says so, or after
        ``REMOTE_CANCEL_WAIT``)."""
        requested = await self.store.request_cancel(job_id)
        if requested is None:
            return False
        record, was = requested
        if was == ExportStatus.PENDING:
            self._count("queued", -1)
            if self.metrics is not None:
                self.metrics.export_ended(ExportStatus.CANCELLED, 0, 0, None)
            # A waiting job may hold the partial files of an earlier attempt (handed back
            # to be continued); nobody will now, and nobody writes them meanwhile.
            await self._remove_files(job_id)
        if record.status == ExportStatus.PROCESSING:
            job = self._running.get(job_id)
            if job is not None:
                job.cancel_requested = True
                job.scope.cancel()
                await job.done.wait()
            else:
                with trio.move_on_after(REMOTE_CANCEL_WAIT):
                    await self.wait_for_end(job_id)
            record = await self.store.get(job_id) or record
        if record.status == ExportStatus.COMPLETED:
            # Completed (perhaps just now, too late to notice the cancel): withdrawn.
            await trio.to_thread.run_sync(self.storage.remove, job_id)
            await self.store.withdraw(job_id)
        return True

    # -- one job -----------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        """Run a claimed job to its end, and record how it ended (unless it was lost)."""
        record = job.record
        status: ExportStatus | None = None  # None: stopped from outside (hand it back)
        error: str | None = None
        try:
            with job.scope:
                if record.cancel_requested:
                    job.cancel_requested = True
                elif record.attempt > self.settings.max_attempts:
                    status, error = ExportStatus.FAILED, gave_up_error(record.attempt - 1)
                else:
                    _log_transition(record, attempt=record.attempt, owner=self.owner)
                    await self._export(job)
                    status = ExportStatus.COMPLETED
        except Exception as exc:
            log.warning("export %s raised", record.id, exc_info=True)
            status, error = ExportStatus.FAILED, describe_error(exc)
        finally:
            if job.scope.cancelled_caught and not job.cancel_requested and status is None:
                job.lost = True  # its deadline passed: the lease could not be renewed
            if job.cancel_requested:
                status, error = ExportStatus.CANCELLED, None
            try:
                with trio.CancelScope(shield=True) as final_scope:
                    final_scope.deadline = trio.current_time() + FINAL_SAVE_TIMEOUT
                    await self._end(job, status, error)
            except Exception:  # the slot must come back whatever went wrong here
                log.exception("export %s: could not finish its end", record.id)
            finally:
                del self._running[record.id]
                self._count("running", -1)
                self._slots.release()
                job.done.set()

    async def _end(self, job: Job, status: ExportStatus | None, error: str | None) -> None:
        record = job.record
        self._copy_progress(job)
        if job.lost:
            # Another process may own it now: nothing of it may be touched from here.
            log.warning("export %s left to the process that takes it over", record.id)
            return
        if status is None:
            try:
                await self.store.release(self.owner, record.id)
            except (StoreUnavailable, psycopg.Error):
                log.warning("could not hand export %s back; its lease will run out", record.id)
            else:
                _log_transition(record, "handed_back", rows=record.processed_rows)
            return
        # The end is made on a copy: the status shows it (from memory) only once it holds.
        record = dataclasses.replace(record, status=status, error=error)
        if status != ExportStatus.COMPLETED:
            record.completed_at = utcnow()
            record.file_size = None
            # Files first, so that once it says failed or cancelled they are gone; but only
            # while the job is still this process's and its end can be recorded: else a
            # process that takes it over when its lease runs out continues from them.
            held = await self._holds(record.id)
            if held is False:
                log.warning("export %s was no longer this process's at its end", record.id)
                return
            if held:
                await self._remove_files(record.id)
        if self.metrics is not None:
            self.metrics.export_ended(
                status, record.processed_rows, record.file_size or 0, _duration(record)
            )
        try:
            if not await self.store.finish(self.owner, record):
                log.warning("export %s was no longer this process's at its end", record.id)
        except Exception:
            log.exception("could not record the end of export %s; will retry", record.id)
            self._unsaved[record.id] = record
        job.record = record
        _log_transition(
            record,
            rows=record.processed_rows,
            bytes=record.bytes_written if record.file_size is None else record.file_size,
            duration_s=None if (took := _duration(record)) is None else round(took, 3),
            error=error,
            attempt=record.attempt,
        )

    async def _remove_unwanted_files(self, record: JobRecord) -> None:
        if record.status != ExportStatus.COMPLETED:
            await self._remove_files(record.id)

    async def _remove_files(self, job_id: uuid.UUID) -> None:
        """Remove the files of a job that ended without them (or will not continue).

        If the export store itself fails, what it still holds of the export (never a
        finished file) is left for the janitor's sweep once the store is back: the job's
        end is recorded all the same.
        """
        try:
            await trio.to_thread.run_sync(self.storage.remove, job_id)
        except OSError as exc:
            log.warning("export %s: its files stay for now: %s", job_id, exc)

    async def _holds(self, job_id: uuid.UUID) -> bool | None:
        """Whether the job is still this process's (its lease renewed now); None when the
        database cannot say."""
        try:
            held = await self.store.renew(self.owner, [job_id], self.lease)
        except (StoreUnavailable, psycopg.Error) as exc:
            log.warning("export %s: cannot tell whether it is still ours: %s", job_id, exc)
            return None
        return job_id in held

    async def _export(self, job: Job) -> None:
        record = job.record
        resume = record.checkpoint
        if resume is None:  # whatever an earlier start left, this one writes anew
            await trio.to_thread.run_sync(self.storage.remove, record.id)
        cannot: list[CannotResume] = []
        try:
            size = await self._pipeline(job, resume)
        except* CannotResume as group:  # raised inside the pipeline's nursery
            cannot = [e for e in group.exceptions if isinstance(e, CannotResume)]
        if cannot:
            log.warning("export %s starts over: %s", record.id, cannot[0])
            await trio.to_thread.run_sync(self.storage.remove, record.id)
            await self.store.forget_checkpoint(self.owner, record.id)
            job.progress = Progress()
            size = await self._pipeline(job, None)
        self._copy_progress(job)
        record.file_size = size
        record.completed_at = utcnow()
        record.expires_at = record.completed_at + dt.timedelta(seconds=self.settings.export_ttl)

    async def _pipeline(self, job: Job, resume: Checkpoint | None) -> int:
        record = job.record
        record.resumed_from_rows = None if resume is None else resume.rows
        if resume is not None:
            job.progress.processed_rows, job.progress.bytes_written = resume.rows, resume.csv_bytes
        self._copy_progress(job)
        await self._owned(self.store.start(self.owner, record), job)
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
                resume=resume,
                on_checkpoint=functools.partial(self._checkpoint, job),
                checkpoint_interval=self.settings.checkpoint_interval,
                keep_partial=True,
            )
            nursery.cancel_scope.cancel()
        return size

    async def _checkpoint(self, job: Job, checkpoint: Checkpoint) -> None:
        await self._owned(self.store.checkpoint(self.owner, job.record.id, checkpoint), job)

    async def _owned(self, statement: Any, job: Job) -> None:
        """Run an owner's statement, shielded (a query cut half-way would break the store's
        connection) but bounded; if the job is no longer ours, stop it at once."""
        owned = None  # no answer in time: as if it could not be recorded
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + FINAL_SAVE_TIMEOUT
            try:
                owned = await statement
            except (StoreUnavailable, psycopg.Error) as exc:
                log.warning("export %s: could not record its state: %s", job.record.id, exc)
                return
        if owned is False:
            log.error("export %s is no longer this process's; stopping", job.record.id)
            job.lost = True
            job.scope.cancel()

    def _copy_progress(self, job: Job) -> None:
        job.record.processed_rows = job.progress.processed_rows
        job.record.bytes_written = job.progress.bytes_written
        job.record.total_rows = job.progress.total_rows

    async def _save_progress(self, job: Job) -> None:
        """Write the running figures a few times a second, never once per batch."""
        while True:
            await trio.sleep(self.settings.progress_interval)
            self._copy_progress(job)
            await self._owned(self.store.save_progress(self.owner, job.record), job)


def _orphaned(file: ExportFile, status: ExportStatus | None) -> bool:
    if status in LIVE_STATUSES:
        return False  # a job that waits or runs: its files are its own, wherever it runs
    if status == ExportStatus.COMPLETED and not file.partial:
        return False
    return file.age_seconds >= ORPHAN_GRACE_SECONDS


def _running_rate(record: JobRecord) -> float | None:
    if record.status != ExportStatus.PROCESSING or record.started_at is None:
        return None
    elapsed = (utcnow() - record.started_at).total_seconds()
    return record.processed_rows / elapsed if elapsed > 0 else None


def _log_transition(record: JobRecord, event: str | None = None, **facts: Any) -> None:
    """One line per state a job enters (or ``event``, such as handed_back); with
    LOG_FORMAT=json its facts are keys."""
    event = event or str(record.status)
    shown = ", ".join(f"{name} {value}" for name, value in facts.items() if value is not None)
    log.info(
        "export %s %s%s",
        record.id,
        event.replace("_", " "),
        f": {shown}" if shown else "",
        extra={
            "event": f"export.{event}",
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
