"""What keeps the queue and the export store tidy while jobs come and go, each with one loop:

- ``Recovery``: at the start, wait for the job database, and sweep away the files earlier
  runs left; until then no job is accepted (``recovered``).
- ``Janitor``: completed exports older than ``EXPORT_TTL`` lose their files and say
  ``expired``; orphan files are swept.
- ``UnsavedEnds``: ends of jobs that could not be recorded (the database was away),
  recorded once it answers again.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Awaitable, Callable

import trio

from exporter.core.errors import ExportStoreError, QueueError
from exporter.core.model import ExportStatus, JobRecord
from exporter.jobs.files import JobFiles
from exporter.jobs.queue import JobQueue

__all__ = ["RETRY_DELAYS", "Janitor", "Recovery", "UnsavedEnds"]

log = logging.getLogger(__name__)

# Waits between attempts to reach the job database (start-up, unsaved ends).
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)


class Recovery:
    """Until the job database has been reached once (and the export store swept): no job
    is accepted, none claimed; ``recovered`` is set then."""

    def __init__(
        self,
        queue: JobQueue,
        files: JobFiles,
        on_recovered: trio.Event,
        prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.queue = queue
        self.files = files
        self.recovered = on_recovered
        # What else must be done once the database answers, before any job is accepted
        # (the datasets resolved); it raises QueueError while the database is away.
        self.prepare = prepare

    async def run(self, attempts: int = sys.maxsize) -> None:
        """Try ``attempts`` times, waiting longer after each failure."""
        for attempt in range(attempts):
            try:
                await self.queue.ping()
                if self.prepare is not None:
                    await self.prepare()
                try:
                    await self.files.sweep()
                except ExportStoreError as exc:
                    # Exports go ahead: each one that meets the store fails saying why, and
                    # the janitor sweeps once the store answers.
                    log.warning("could not look at the export store: %s", exc)
            except QueueError as exc:
                if attempt + 1 == attempts:
                    log.warning("job database unreachable (%s); will keep trying", exc)
                    return
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.warning("job database unreachable (%s); retrying in %.1f s", exc, delay)
                await trio.sleep(delay)
            else:
                self.recovered.set()
                return


class Janitor:
    """Every ``interval`` seconds: expire completed exports past their TTL, sweep orphans."""

    def __init__(self, queue: JobQueue, files: JobFiles, interval: float) -> None:
        self.queue = queue
        self.files = files
        self.interval = interval

    async def run(self, recovered: trio.Event) -> None:
        await recovered.wait()
        while True:
            due: list[uuid.UUID] = []
            try:
                due = await self.queue.due_to_expire()
                # Files first: once a job says expired, its files are gone.
                for job_id in due:
                    await self.files.remove(job_id)
                if due:
                    await self.queue.mark_expired(due)
                await self.files.sweep()
            except (QueueError, OSError) as exc:
                # The janitor must outlive a bad pass: the next one tries again.
                log.warning("could not expire exports: %s", exc)
            else:
                for job_id in due:
                    log.info(
                        "export %s expired; its files are removed",
                        job_id,
                        extra={"event": "export.expired", "export_id": str(job_id)},
                    )
            await trio.sleep(self.interval)


class UnsavedEnds:
    """Ends of jobs this process ran that the database could not take: shown from here
    (``get``), their leases kept renewed, not taken over by this process (``ids``), and
    recorded as soon as the database answers again."""

    def __init__(self, queue: JobQueue, files: JobFiles, owner: str) -> None:
        self.queue = queue
        self.files = files
        self.owner = owner
        self._records: dict[uuid.UUID, JobRecord] = {}

    def keep(self, record: JobRecord) -> None:
        self._records[record.id] = record

    def get(self, job_id: uuid.UUID) -> JobRecord | None:
        return self._records.get(job_id)

    def ids(self) -> list[uuid.UUID]:
        return [*self._records]

    async def run(self) -> None:
        while True:
            await trio.sleep(RETRY_DELAYS[-1] if not self._records else RETRY_DELAYS[0])
            for job_id, record in list(self._records.items()):
                try:
                    recorded = await self.queue.finish(self.owner, record)
                except QueueError:
                    break  # still away: the next round tries again
                if recorded:
                    log.info("recorded the end of export %s (%s)", job_id, record.status)
                    if record.status != ExportStatus.COMPLETED:
                        await self.files.remove_or_leave(job_id)
                else:  # its lease ran out meanwhile and another process took it over
                    log.warning("export %s was taken over before its end was recorded", job_id)
                del self._records[job_id]
