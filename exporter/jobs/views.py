"""What the API reads about a job: its view (from memory while this process runs it, else
from the queue), the recent jobs, and waiting for a job's end wherever it runs."""

from __future__ import annotations

import dataclasses
import time
import uuid

import trio

from exporter.core.model import ExportStatus, JobView
from exporter.jobs.housekeeping import UnsavedEnds
from exporter.jobs.queue import JobQueue
from exporter.jobs.running import Job, RunningJobs

__all__ = ["JobViews"]


class JobViews:
    """Views of the queue's jobs, fresh from memory for the ones this process runs."""

    def __init__(self, queue: JobQueue, running: RunningJobs, unsaved: UnsavedEnds) -> None:
        self.queue = queue
        self.running = running
        self.unsaved = unsaved
        self._ended: dict[uuid.UUID, trio.Event] = {}  # waiters for jobs run elsewhere

    async def view(self, job_id: uuid.UUID) -> JobView | None:
        """The job as the status endpoint shows it; None when there is no such job."""
        job = self.running.get(job_id)
        if job is not None:
            return _live_view(job)
        record = self.unsaved.get(job_id) or await self.queue.get(job_id)
        if record is None:
            return None
        position = None
        if record.status == ExportStatus.PENDING:
            position = await self.queue.queue_position(record)
        rate = record.final_rate or record.running_rate
        return JobView(record, queue_position=position, rows_per_second=rate)

    async def recent(self, limit: int) -> list[JobView]:
        """The most recent jobs, newest first, running ones with their live figures."""
        views = []
        for record in await self.queue.recent(limit):
            job = self.running.get(record.id)
            views.append(
                _live_view(job)
                if job is not None
                else JobView(record, rows_per_second=record.final_rate)
            )
        return views

    async def wait_for_end(self, job_id: uuid.UUID) -> None:
        """Until the job has ended here, or another process says it ended there."""
        job = self.running.get(job_id)
        if job is not None:
            await job.done.wait()
            return
        await self._ended.setdefault(job_id, trio.Event()).wait()

    def ended(self, job_id: uuid.UUID) -> None:
        """Another process says the job ended."""
        ended = self._ended.pop(job_id, None)
        if ended is not None:
            ended.set()

    def all_may_have_ended(self) -> None:
        """Notices may have been missed: every waiter looks again."""
        for ended in self._ended.values():
            ended.set()
        self._ended.clear()


def _live_view(job: Job) -> JobView:
    job.record.take_progress(job.progress)
    rate = None
    if job.progress.started_at is not None:
        elapsed = time.monotonic() - job.progress.started_at
        resumed = job.record.resumed_from_rows or 0
        if elapsed > 0:
            rate = (job.progress.processed_rows - resumed) / elapsed
    return JobView(dataclasses.replace(job.record), rows_per_second=rate)
