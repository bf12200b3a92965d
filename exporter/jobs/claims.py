"""Claiming jobs from the queue, and keeping their leases, each with one loop.

- ``Claimer``: while this process has a free slot (one of ``MAX_CONCURRENT_EXPORTS``), it
  claims the oldest waiting job (or one whose owner's lease ran out), woken by the ``new``
  notice another process sends on submit and otherwise looking every
  ``CLAIM_POLL_SECONDS`` (which is also how it finds jobs whose owner died), and runs it in
  the job manager's nursery, in the job's own cancel scope.
- ``Leases``: every third of ``LEASE_SECONDS`` it renews the leases of the jobs it runs
  (and of the ends it could not record yet). Each renewal moves the job's deadline to
  ``lease_deadline`` after it was sent; a job whose lease was not renewed in time stops
  before any other process may take it over, and one that is no longer this process's
  stops without touching anything. A renewal also brings cancel requests whose notice
  went missing.
"""

from __future__ import annotations

import logging
import uuid

import trio

from exporter.core.errors import QueueError
from exporter.jobs.counts import QueueCounts
from exporter.jobs.housekeeping import UnsavedEnds
from exporter.jobs.queue import JobQueue
from exporter.jobs.running import Job, JobRunner, RunningJobs, lease_deadline

__all__ = ["CLAIM_POLL_SECONDS", "Claimer", "Leases"]

log = logging.getLogger(__name__)

# How often an idle process looks for work nobody announced (jobs whose owner died).
CLAIM_POLL_SECONDS = 1.0


class Claimer:
    """Claims jobs for ``owner`` while a slot is free, and runs each with ``runner``."""

    def __init__(
        self,
        queue: JobQueue,
        runner: JobRunner,
        running: RunningJobs,
        unsaved: UnsavedEnds,
        counts: QueueCounts,
        *,
        slots: int,
        lease_seconds: float,
    ) -> None:
        self.queue = queue
        self.runner = runner
        self.running = running
        self.unsaved = unsaved
        self.counts = counts
        self.lease_seconds = lease_seconds
        self._slots = trio.Semaphore(slots)
        self._work = trio.Event()  # set when there may be work to claim

    def wake(self) -> None:
        """There may be work to claim (a notice, or notices missed): look at once."""
        self._work.set()

    async def run(self, recovered: trio.Event, nursery: trio.Nursery) -> None:
        """Claim until cancelled, once ``recovered``; each job runs in ``nursery``."""
        await recovered.wait()
        while True:
            await self._slots.acquire()
            self._work = trio.Event()
            sent = trio.current_time()
            try:
                claim = await self.queue.claim(
                    self.runner.owner, self.lease_seconds, skip=self.unsaved.ids()
                )
            except QueueError as exc:
                log.warning("could not claim work: %s", exc)
                claim = None
            if claim is None:
                self._slots.release()
                with trio.move_on_after(CLAIM_POLL_SECONDS):
                    await self._work.wait()
                continue
            if not claim.taken_over:
                self.counts.change("queued", -1)
            self.counts.change("running", +1)
            job = Job(claim.record, taken_over=claim.taken_over)
            # Stop a little before the lease runs out, unless it is renewed by then.
            job.scope.deadline = lease_deadline(sent, self.lease_seconds)
            self.running.add(job)
            nursery.start_soon(self._run, job, name=f"export {job.record.id}")
            self._work.set()  # a slot may still be free: look again at once

    async def _run(self, job: Job) -> None:
        try:
            await self.runner.run(job)
        except Exception:  # the slot must come back whatever went wrong at the end
            log.exception("export %s: could not finish its end", job.record.id)
        finally:
            self.running.remove(job)
            self.counts.change("running", -1)
            self._slots.release()
            job.done.set()


class Leases:
    """Renews the leases of ``owner``'s jobs every third of ``lease_seconds``."""

    def __init__(
        self,
        queue: JobQueue,
        running: RunningJobs,
        unsaved: UnsavedEnds,
        *,
        owner: str,
        lease_seconds: float,
    ) -> None:
        self.queue = queue
        self.running = running
        self.unsaved = unsaved
        self.owner = owner
        self.lease_seconds = lease_seconds

    async def run(self) -> None:
        while True:
            await trio.sleep(self.lease_seconds / 3)
            job_ids = [*self.running.ids(), *self.unsaved.ids()]
            if job_ids:
                await self.renew(job_ids)

    async def renew(self, job_ids: list[uuid.UUID]) -> None:
        """One renewal of ``job_ids``; the running jobs among them learn what it says."""
        sent = trio.current_time()
        held: dict[uuid.UUID, bool] | None = None
        try:
            with trio.move_on_after(self.lease_seconds / 3):
                held = await self.queue.renew(self.owner, job_ids, self.lease_seconds)
        except QueueError as exc:
            log.warning("could not renew leases: %s", exc)
        if held is None:
            return  # not renewed: the jobs' deadlines stay where they were
        for job in self.running:
            job_id = job.record.id
            if job_id not in job_ids:
                continue  # claimed after the renewal was sent
            if job_id not in held:
                log.error("export %s: lease lost; stopping without touching it", job_id)
                job.lose()
                continue
            job.scope.deadline = lease_deadline(sent, self.lease_seconds)
            if held[job_id] and not job.cancel_requested:
                job.cancel()  # a cancel whose notice went missing
