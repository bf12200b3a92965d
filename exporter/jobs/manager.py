"""The job manager: one nursery for the exports this process runs, each in its own cancel
scope, fed by the queue that every process sharing the database shares.

It lives in the app's serving lifespan (``exporter.http.app`` starts ``JobManager.run`` in
Quart-Trio's lifespan nursery), or in a worker process (``exporter.process.worker``), so
when the process stops, every export it runs is stopped and handed back to the queue
first. It is a facade over units that each keep their own state and run one loop:

- ``Claimer`` and ``Leases`` (``exporter.jobs.claims``): claiming jobs, keeping leases;
- ``JobRunner`` (``exporter.jobs.running``): one job from its start to its recorded end;
- ``Recovery``, ``Janitor``, ``UnsavedEnds`` (``exporter.jobs.housekeeping``);
- ``QueueCounts`` (``exporter.jobs.counts``) and ``JobViews`` (``exporter.jobs.views``),
  what ``/health``, ``/metrics`` and the API read;
- the queue's notices, dispatched here.

docs/ARCHITECTURE.md tells the whole protocol.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import uuid

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.jobs.postgres_queue)
import psycopg
import trio

from exporter.core.config import Settings
from exporter.core.datasets import DatasetError
from exporter.core.errors import NotReady, QueueFull, QueueUnavailable
from exporter.core.metrics import Metrics
from exporter.core.model import ExportRequest, ExportStatus, JobRecord, JobView
from exporter.export.catalog import DatasetCatalog
from exporter.export.pipeline import export_csv
from exporter.jobs.claims import Claimer, Leases
from exporter.jobs.counts import QueueCounts
from exporter.jobs.files import Blocking, JobFiles
from exporter.jobs.housekeeping import Janitor, Recovery, UnsavedEnds
from exporter.jobs.queue import JobQueue, Notice
from exporter.jobs.running import Export, JobRunner, RunningJobs, log_transition
from exporter.jobs.views import JobViews
from exporter.storage.base import ExportStorage

__all__ = ["REMOTE_CANCEL_WAIT", "JobManager"]

log = logging.getLogger(__name__)

# How long DELETE waits for another process to stop a job it runs.
REMOTE_CANCEL_WAIT = 5.0


async def _resolve(datasets: DatasetCatalog) -> None:
    """The datasets resolved at the first contact with the database; a bad one stops the
    service (the error names the file, the dataset and the key)."""
    try:
        await trio.to_thread.run_sync(datasets.resolve)
    except psycopg.OperationalError as error:
        raise QueueUnavailable(str(error).strip()) from error
    except DatasetError as error:
        log.error("the datasets cannot be exported:\n%s", error)
        raise


def _owner_name() -> str:
    """Who this process is, in export_jobs.owner: findable on the machine it names."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobManager:
    """The jobs of one process: ``run`` holds them, ``submit`` and ``cancel`` change them.

    ``queue`` is the queue every process shares (``PostgresQueue``), ``storage`` the export
    store; ``export`` runs one export (the pipeline), ``owner`` names this process in the
    queue, ``blocking`` runs the store's calls (``JobFiles``): the unit tests give their
    own of these three. With
    ``max_concurrent_exports`` 0 this process runs no export, and only serves the API.
    """

    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        queue: JobQueue,
        storage: ExportStorage,
        *,
        export: Export = export_csv,
        owner: str | None = None,
        blocking: Blocking | None = None,
        datasets: DatasetCatalog | None = None,
    ) -> None:
        self.settings = settings
        # None: the built-in dataset only, resolved by each export (unit tests' fakes).
        self.datasets = datasets
        self.queue = queue
        self.storage = storage
        self.owner = owner or _owner_name()
        self.runs_exports = settings.max_concurrent_exports > 0
        # Set once the database has been reached and old files looked at: no job is
        # accepted before (the service answers /health and /ready says why meanwhile).
        self.recovered = trio.Event()
        self.files = JobFiles(queue, storage, blocking)
        self.running = RunningJobs()
        self.unsaved = UnsavedEnds(queue, self.files, self.owner)
        self.queue_counts = QueueCounts(queue)
        self.views = JobViews(queue, self.running, self.unsaved)
        self.runner = JobRunner(
            settings,
            conninfo,
            queue,
            self.files,
            self.unsaved,
            owner=self.owner,
            export=export,
            datasets=datasets,
        )
        lease = settings.lease_seconds
        self.claimer = Claimer(
            queue,
            self.runner,
            self.running,
            self.unsaved,
            self.queue_counts,
            slots=settings.max_concurrent_exports,
            lease_seconds=lease,
        )
        self.leases = Leases(
            queue, self.running, self.unsaved, owner=self.owner, lease_seconds=lease
        )
        prepare = None if datasets is None else functools.partial(_resolve, datasets)
        self._recovery = Recovery(queue, self.files, self.recovered, prepare)
        self._janitor = Janitor(queue, self.files, settings.janitor_interval)

    @property
    def metrics(self) -> Metrics | None:
        return self.runner.metrics

    @metrics.setter
    def metrics(self, metrics: Metrics | None) -> None:
        """Where ended exports are counted (set by whoever serves ``/metrics``)."""
        self.runner.metrics = metrics

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the jobs' nursery until cancelled; claim, renew, expire and sweep meanwhile.

        Starts at once even when the database is down; the rest begins as soon as it
        answers. On cancellation every running job is handed back to the queue, and the
        queue's connection is closed last.
        """
        await self.files.prepare()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.queue.listen, self._on_notice, self._on_reconnect)
                await self._recovery.run(attempts=1)
                if not self.recovered.is_set():
                    nursery.start_soon(self._recovery.run)
                nursery.start_soon(self._janitor.run, self.recovered)
                nursery.start_soon(self.unsaved.run)
                nursery.start_soon(self.queue_counts.run)
                if self.runs_exports:
                    nursery.start_soon(self.claimer.run, self.recovered, nursery)
                    nursery.start_soon(self.leases.run)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.queue.close()

    def _on_notice(self, notice: Notice) -> None:
        if notice.what == "new":
            self.claimer.wake()
        elif notice.what == "cancel":
            job = self.running.get(notice.job_id)
            if job is not None:
                job.cancel()
        elif notice.what == "ended":
            self.views.ended(notice.job_id)

    def _on_reconnect(self) -> None:
        # Notices may have been missed while the connection was away: look again.
        self.claimer.wake()
        self.views.all_may_have_ended()

    # -- what the API reads --------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Exports running in this process, and waiting in all of them (from memory)."""
        return {"running": len(self.running), "queued": self.queue_counts.queued()}

    def global_counts(self) -> dict[str, int]:
        """Running and waiting in every process sharing the database (refreshed each second)."""
        return self.queue_counts.everywhere()

    async def view(self, job_id: uuid.UUID) -> JobView | None:
        """The job as the status endpoint shows it; None: there is no such job."""
        return await self.views.view(job_id)

    async def recent(self, limit: int) -> list[JobView]:
        """The ``limit`` most recent jobs, newest first."""
        return await self.views.recent(limit)

    async def wait_for_end(self, job_id: uuid.UUID) -> None:
        """Until the job has ended, wherever it runs."""
        await self.views.wait_for_end(job_id)

    # -- commands ----------------------------------------------------------------------

    async def submit(self, request: ExportRequest) -> JobRecord:
        """Record a new job in the queue.

        Raises ``NotReady`` before the job database was reached since the start,
        ``QueueFull`` when ``MAX_QUEUED_EXPORTS`` jobs wait already, and
        ``QueueUnavailable`` when the database cannot be reached.
        """
        if not self.recovered.is_set():
            raise NotReady("the job database has not been reached yet")
        record = JobRecord(id=uuid.uuid4(), request=request)
        if not await self.queue.insert(record, max_queued=self.settings.max_queued_exports):
            raise QueueFull(self.settings.max_queued_exports)
        self.queue_counts.change("queued", +1)
        self.claimer.wake()
        log_transition(record, request=request.to_json())
        return record

    async def cancel(self, job_id: uuid.UUID) -> bool:
        """Cancel a job wherever it runs, or withdraw a completed file; False when the id
        is unknown. Returns once the job has stopped, its query is gone and its files are
        removed (for a job another process runs: once that process says so, or after
        ``REMOTE_CANCEL_WAIT``). Raises ``QueueUnavailable`` when the database cannot be
        reached, and the export store's error if it cannot remove a completed file."""
        requested = await self.queue.request_cancel(job_id)
        if requested is None:
            return False
        record, was = requested
        if was == ExportStatus.PENDING:
            self.queue_counts.change("queued", -1)
            if self.metrics is not None:
                self.metrics.export_ended(ExportStatus.CANCELLED, 0, 0, None)
            # A waiting job may hold the partial files of an earlier attempt (handed back
            # to be continued); nobody will now, and nobody writes them meanwhile.
            await self.files.remove_or_leave(job_id)
        if record.status == ExportStatus.PROCESSING:
            job = self.running.get(job_id)
            if job is not None:
                job.cancel()
                await job.done.wait()
            else:
                with trio.move_on_after(REMOTE_CANCEL_WAIT):
                    await self.views.wait_for_end(job_id)
            record = await self.queue.get(job_id) or record
        if record.status == ExportStatus.COMPLETED:
            # Completed (perhaps just now, too late to notice the cancel): withdrawn.
            await self.files.remove(job_id)
            await self.queue.withdraw(job_id)
        return True
