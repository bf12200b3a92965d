"""The job queue's interface: every transition of a job is one named statement.

``JobQueue`` is what the job manager calls; ``exporter.jobs.postgres_queue`` implements it
on the ``export_jobs`` table that every process sharing the database shares (and the
tests have an in-memory fake of the same rules, for unit tests on trio's ``MockClock``).
This module imports neither.

The rules every implementation keeps:

- ``claim`` takes the oldest waiting job, or one whose owner's lease ran out (a takeover);
  a first start and a takeover count one more ``attempt``, a job handed back keeps its
  own. Two processes claiming at once never get the same job.
- Every statement a running job's owner makes (``renew``, ``release``, ``start``,
  ``save_progress``, ``checkpoint``, ``finish``) names the owner and changes nothing of a
  job that is no longer its own (answering False, or leaving the job out of ``renew``'s
  answer): a process that lost its lease can change nothing any more.
- Lease times are the queue's own clock, never a process's.
- ``listen`` tells of new work, cancel requests and ends made by any process.

Every method raises ``QueueUnavailable`` when the queue cannot be reached and
``QueueError`` when a statement fails otherwise.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Protocol

from exporter.core.model import Checkpoint, ExportStatus, JobRecord

__all__ = ["Claim", "JobQueue", "Notice"]


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """A job a process has just claimed, and whether it took it over from a dead owner."""

    record: JobRecord
    taken_over: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """What a process said to the others: ``new`` work, a ``cancel`` request for a running
    job, or a job that ``ended``."""

    what: str
    job_id: uuid.UUID


class JobQueue(Protocol):
    """The statements the job manager makes; see the module's rules."""

    async def ping(self) -> None:
        """Return once the queue answers."""
        ...

    async def close(self) -> None: ...

    async def listen(
        self, on_notice: Callable[[Notice], None], on_reconnect: Callable[[], None]
    ) -> None:
        """Call ``on_notice`` for every notice, until cancelled; ``on_reconnect`` whenever
        notices may have been missed (look at the queue instead)."""
        ...

    # -- transitions ---------------------------------------------------------------------

    async def insert(self, record: JobRecord, *, max_queued: int) -> bool:
        """Queue a new job (and set its ``created_at``), unless ``max_queued`` jobs wait
        already in every process together (then False). One may always wait."""
        ...

    async def claim(
        self, owner: str, lease_seconds: float, skip: list[uuid.UUID] | None = None
    ) -> Claim | None:
        """Take the oldest job that waits, or whose lease ran out, for ``owner``; ``skip``:
        jobs the caller ended but could not record yet (never taken over from itself)."""
        ...

    async def renew(
        self, owner: str, job_ids: list[uuid.UUID], lease_seconds: float
    ) -> dict[uuid.UUID, bool]:
        """Extend the leases of the owner's jobs: which are still its own, and whether a
        cancel has been asked for each. A job missing from the answer is lost."""
        ...

    async def release(self, owner: str, job_id: uuid.UUID) -> bool:
        """Hand a running job back to the queue with its attempt and checkpoint."""
        ...

    async def start(self, owner: str, record: JobRecord) -> bool:
        """Record what the owner starts from: the rows resumed from and the figures."""
        ...

    async def save_progress(self, owner: str, record: JobRecord) -> bool:
        """The running figures."""
        ...

    async def checkpoint(self, owner: str, job_id: uuid.UUID, checkpoint: Checkpoint) -> bool:
        """How far the job's files are durable."""
        ...

    async def forget_checkpoint(self, owner: str, job_id: uuid.UUID) -> None:
        """The files are not there to resume from: the job starts over."""
        ...

    async def finish(self, owner: str, record: JobRecord) -> bool:
        """The job's end (completed, failed or cancelled), as ``record`` says; notifies."""
        ...

    async def request_cancel(self, job_id: uuid.UUID) -> tuple[JobRecord, ExportStatus] | None:
        """Cancel a waiting job at once, or ask a running one's owner to stop; the job and
        the status it had before, or None: no such job."""
        ...

    async def withdraw(self, job_id: uuid.UUID) -> bool:
        """A completed export's files were removed on request: it is cancelled now."""
        ...

    async def mark_expired(self, job_ids: list[uuid.UUID]) -> None:
        """Completed jobs whose files were removed after their TTL."""
        ...

    # -- questions -----------------------------------------------------------------------

    async def get(self, job_id: uuid.UUID) -> JobRecord | None: ...

    async def queue_position(self, record: JobRecord) -> int:
        """1 for the next job to be claimed, among the waiting jobs of every process."""
        ...

    async def counts(self) -> dict[str, int]:
        """Jobs ``running`` and ``queued`` in every process."""
        ...

    async def statuses(self, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, ExportStatus]: ...

    async def recent(self, limit: int) -> list[JobRecord]:
        """The ``limit`` most recently created jobs, newest first."""
        ...

    async def due_to_expire(self) -> list[uuid.UUID]:
        """Completed jobs whose ``expires_at`` has passed."""
        ...
