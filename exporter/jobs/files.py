"""The job manager's side of the export store: removing a job's files, and sweeping away
files no job will use."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from exporter.core.model import LIVE_STATUSES, ExportStatus
from exporter.jobs.queue import JobQueue
from exporter.storage.base import ExportFile, ExportStorage

__all__ = ["ORPHAN_GRACE_SECONDS", "JobFiles"]

log = logging.getLogger(__name__)

# A file of a finished or unknown export is removed only once it is this old: a process
# that has just claimed a job, or just finished one, may not have said so yet.
ORPHAN_GRACE_SECONDS = 600.0


T = TypeVar("T")
# How a blocking call of the store is made from trio.
Blocking = Callable[..., Awaitable[Any]]


class JobFiles:
    """The files of the jobs in ``queue``, in ``storage``.

    The store's calls block (disk or network I/O): they run in worker threads
    (``blocking``, by default ``trio.to_thread.run_sync``). The job manager's unit tests
    run them inline instead: on trio's ``MockClock`` time jumps ahead whenever every task
    waits, a wait for a thread included.
    """

    def __init__(
        self, queue: JobQueue, storage: ExportStorage, blocking: Blocking | None = None
    ) -> None:
        self.queue = queue
        self.storage = storage
        self._blocking = blocking or trio.to_thread.run_sync

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, a blocking call of the store."""
        result: T = await self._blocking(fn, *args)
        return result

    async def prepare(self) -> None:
        """Make the store ready to take files."""
        await self.call(self.storage.prepare)

    async def remove(self, job_id: uuid.UUID) -> None:
        """Remove every file of the job, finished or partial; raises the store's error."""
        await self.call(self.storage.remove, job_id)

    async def remove_or_leave(self, job_id: uuid.UUID) -> None:
        """Remove the files of a job that ended without them (or will not continue).

        If the export store itself fails, what it still holds of the export (never a
        finished file) is left for the janitor's sweep once the store is back: the job's
        end is recorded all the same.
        """
        try:
            await self.remove(job_id)
        except OSError as exc:
            log.warning("export %s: its files stay for now: %s", job_id, exc)

    async def sweep(self) -> None:
        """Remove files no job will use: of exports that are gone, failed, cancelled or
        expired (and partial files of completed ones), once older than the grace period.
        Files of a waiting or running job are never touched, wherever it runs. Raises the
        queue's and the store's errors."""
        files = await self.call(self.storage.export_files)
        if not files:
            return
        statuses = await self.queue.statuses(sorted({f.export_id for f in files}))
        for file in files:
            if _orphaned(file, statuses.get(file.export_id)):
                log.info("removing orphan export file %s", file.name)
                await self.call(self.storage.remove_file, file)


def _orphaned(file: ExportFile, status: ExportStatus | None) -> bool:
    if status in LIVE_STATUSES:
        return False  # a job that waits or runs: its files are its own, wherever it runs
    if status == ExportStatus.COMPLETED and not file.partial:
        return False
    return file.age_seconds >= ORPHAN_GRACE_SECONDS
