"""Running one claimed job, from its start to its recorded end.

``JobRunner.run`` runs the export inside the job's cancel scope (whose deadline follows
the lease: ``exporter.jobs.claims``), records where it starts and its progress, its
checkpoints, and finally how it ended:

- completed, failed or cancelled: its files are removed unless completed, and the end
  is recorded (or, if the database cannot take it, kept in memory: ``UnsavedEnds``);
- stopped from outside (the process stops): handed back to the queue, to be continued;
- lost (its lease ran out, or another process owns it now): nothing of it is touched.

``RunningJobs`` is the registry of the jobs this process runs, read by the leases, the
views and the notices.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import trio

from exporter.core.config import Settings
from exporter.core.datasets import Datasets
from exporter.core.errors import CannotResume, QueueError
from exporter.core.metrics import Metrics
from exporter.core.model import Checkpoint, ExportRequest, ExportStatus, JobRecord, Progress, utcnow
from exporter.export.pipeline import OnCheckpoint, PipelineOptions
from exporter.jobs.failures import describe_error, gave_up_error
from exporter.jobs.files import JobFiles
from exporter.jobs.housekeeping import UnsavedEnds
from exporter.jobs.queue import JobQueue
from exporter.storage.base import ExportStorage

__all__ = ["Export", "Job", "JobRunner", "RunningJobs", "lease_deadline", "log_transition"]

log = logging.getLogger(__name__)
# The line per state a job enters: under the jobs' own logger, whichever unit makes it.
transitions = logging.getLogger("exporter.jobs")

# How long a stopping job may spend recording its final state.
FINAL_SAVE_TIMEOUT = 5.0


class Export(Protocol):
    """What runs a job's export: ``exporter.export.pipeline.export_csv``."""

    def __call__(
        self,
        conninfo: str,
        request: ExportRequest,
        storage: ExportStorage,
        export_id: uuid.UUID,
        *,
        progress: Progress,
        options: PipelineOptions,
        application_name: str = ...,
        resume: Checkpoint | None = ...,
        on_checkpoint: OnCheckpoint | None = ...,
    ) -> Awaitable[int]: ...


def lease_deadline(sent: float, lease_seconds: float) -> float:
    """Until when a job may go on writing after a lease renewal sent at ``sent`` (trio's
    clock): the lease, less a fifth of it for the stop to take effect (a write in a thread
    finishes first). Counted from when the renewal was sent, since the lease began at some
    moment after."""
    return sent + lease_seconds * 0.8


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

    def cancel(self) -> None:
        """Stop it because a user asked: it ends ``cancelled``."""
        self.cancel_requested = True
        self.scope.cancel()

    def lose(self) -> None:
        """Stop it without touching anything of it: another process may own it now."""
        self.lost = True
        self.scope.cancel()


class RunningJobs:
    """The jobs this process runs, by id."""

    def __init__(self) -> None:
        self._jobs: dict[uuid.UUID, Job] = {}

    def add(self, job: Job) -> None:
        self._jobs[job.record.id] = job

    def remove(self, job: Job) -> None:
        del self._jobs[job.record.id]

    def get(self, job_id: uuid.UUID) -> Job | None:
        return self._jobs.get(job_id)

    def ids(self) -> list[uuid.UUID]:
        return [*self._jobs]

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs.values()))


def log_transition(record: JobRecord, event: str | None = None, **facts: Any) -> None:
    """One line per state a job enters (or ``event``, such as handed_back); with
    LOG_FORMAT=json its facts are keys."""
    event = event or str(record.status)
    shown = ", ".join(f"{name} {value}" for name, value in facts.items() if value is not None)
    transitions.info(
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


class JobRunner:
    """Runs the jobs ``owner`` claimed, one call of ``run`` each."""

    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        queue: JobQueue,
        files: JobFiles,
        unsaved: UnsavedEnds,
        *,
        owner: str,
        export: Export,
        datasets: Datasets | None = None,
    ) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.queue = queue
        self.files = files
        self.unsaved = unsaved
        self.owner = owner
        self.export = export
        self.options = PipelineOptions.from_settings(
            settings, keep_partial=True, datasets={} if datasets is None else datasets
        )
        self.metrics: Metrics | None = None

    async def run(self, job: Job) -> None:
        """Run a claimed job to its end, and record how it ended (unless it was lost)."""
        status: ExportStatus | None = None  # None: stopped from outside (hand it back)
        error: str | None = None
        try:
            status, error = await self._outcome(job)
        except Exception as exc:
            log.warning("export %s raised", job.record.id, exc_info=True)
            status, error = ExportStatus.FAILED, describe_error(exc)
        finally:
            if job.scope.cancelled_caught and not job.cancel_requested and status is None:
                job.lost = True  # its deadline passed: the lease could not be renewed
            if job.cancel_requested:
                status, error = ExportStatus.CANCELLED, None
            with trio.CancelScope(shield=True) as final_scope:
                final_scope.deadline = trio.current_time() + FINAL_SAVE_TIMEOUT
                await self._end(job, status, error)

    async def _outcome(self, job: Job) -> tuple[ExportStatus | None, str | None]:
        """The job's export, in its cancel scope: how it ended (None: it was stopped)."""
        record = job.record
        with job.scope:
            if record.cancel_requested:
                job.cancel_requested = True
            elif record.attempt > self.settings.max_attempts:
                return ExportStatus.FAILED, gave_up_error(record.attempt - 1)
            else:
                log_transition(record, attempt=record.attempt, owner=self.owner)
                await self._export(job)
                return ExportStatus.COMPLETED, None
        return None, None

    async def _export(self, job: Job) -> None:
        """The files, from the checkpoint if there is one, else (or if its files are not
        there) from the first row."""
        record = job.record
        resume = record.checkpoint
        if resume is None:  # whatever an earlier start left, this one writes anew
            await self.files.remove(record.id)
        cannot: list[CannotResume] = []
        try:
            size = await self._pipeline(job, resume)
        except* CannotResume as group:  # raised inside the pipeline's nursery
            cannot = [e for e in group.exceptions if isinstance(e, CannotResume)]
        if cannot:
            log.warning("export %s starts over: %s", record.id, cannot[0])
            await self.files.remove(record.id)
            await self.queue.forget_checkpoint(self.owner, record.id)
            job.progress = Progress()
            size = await self._pipeline(job, None)
        record.take_progress(job.progress)
        record.file_size = size
        record.completed_at = utcnow()
        record.expires_at = record.completed_at + dt.timedelta(seconds=self.settings.export_ttl)

    async def _pipeline(self, job: Job, resume: Checkpoint | None) -> int:
        """One run of the export from ``resume``, its progress saved meanwhile."""
        record = job.record
        record.resumed_from_rows = None if resume is None else resume.rows
        if resume is not None:
            job.progress.processed_rows, job.progress.bytes_written = resume.rows, resume.csv_bytes
        record.take_progress(job.progress)
        await self._owned(job, self.queue.start, self.owner, record)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._save_progress, job)
            size = await self.export(
                self.conninfo,
                record.request,
                self.files.storage,
                record.id,
                progress=job.progress,
                options=self.options,
                application_name=f"exporter {record.id}",
                resume=resume,
                on_checkpoint=functools.partial(self._checkpoint, job),
            )
            nursery.cancel_scope.cancel()
        return size

    async def _checkpoint(self, job: Job, checkpoint: Checkpoint) -> None:
        await self._owned(job, self.queue.checkpoint, self.owner, job.record.id, checkpoint)

    async def _save_progress(self, job: Job) -> None:
        """Write the running figures a few times a second, never once per batch."""
        while True:
            await trio.sleep(self.settings.progress_interval)
            job.record.take_progress(job.progress)
            await self._owned(job, self.queue.save_progress, self.owner, job.record)

    async def _owned(self, job: Job, statement: Callable[..., Awaitable[bool]], *args: Any) -> None:
        """Run an owner's statement, shielded (a query cut half-way would break the queue's
        connection) but bounded; if the job is no longer ours, stop it at once."""
        owned = None  # no answer in time: as if it could not be recorded
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + FINAL_SAVE_TIMEOUT
            try:
                owned = await statement(*args)
            except QueueError as exc:
                log.warning("export %s: could not record its state: %s", job.record.id, exc)
                return
        if owned is False:
            log.error("export %s is no longer this process's; stopping", job.record.id)
            job.lose()

    # -- the end -------------------------------------------------------------------------

    async def _end(self, job: Job, status: ExportStatus | None, error: str | None) -> None:
        job.record.take_progress(job.progress)
        if job.lost:
            # Another process may own it now: nothing of it may be touched from here.
            log.warning("export %s left to the process that takes it over", job.record.id)
        elif status is None:
            await self._hand_back(job.record)
        else:
            await self._record_end(job, status, error)

    async def _hand_back(self, record: JobRecord) -> None:
        try:
            await self.queue.release(self.owner, record.id)
        except QueueError:
            log.warning("could not hand export %s back; its lease will run out", record.id)
        else:
            log_transition(record, "handed_back", rows=record.processed_rows)

    async def _record_end(self, job: Job, status: ExportStatus, error: str | None) -> None:
        # The end is made on a copy: the status shows it (from memory) only once it holds.
        record = dataclasses.replace(job.record, status=status, error=error)
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
                await self.files.remove_or_leave(record.id)
        if self.metrics is not None:
            size = record.file_size or 0
            self.metrics.export_ended(status, record.processed_rows, size, record.duration)
        try:
            if not await self.queue.finish(self.owner, record):
                log.warning("export %s was no longer this process's at its end", record.id)
        except Exception:
            log.exception("could not record the end of export %s; will retry", record.id)
            self.unsaved.keep(record)
        job.record = record
        log_transition(
            record,
            rows=record.processed_rows,
            bytes=record.bytes_written if record.file_size is None else record.file_size,
            duration_s=None if (took := record.duration) is None else round(took, 3),
            error=error,
            attempt=record.attempt,
        )

    async def _holds(self, job_id: uuid.UUID) -> bool | None:
        """Whether the job is still this process's (its lease renewed now); None when the
        database cannot say."""
        try:
            held = await self.queue.renew(self.owner, [job_id], self.settings.lease_seconds)
        except QueueError as exc:
            log.warning("export %s: cannot tell whether it is still ours: %s", job_id, exc)
            return None
        return job_id in held
