"""An in-memory job queue with the rules of ``PostgresQueue``, on trio's clock.

With trio's ``MockClock`` it lets the job manager's lease, claim, hand-back and takeover
rules be tested in milliseconds; ``tests/test_queue_rules.py`` runs the same checks
against it and against the real ``export_jobs`` table, so the two cannot drift apart.
Faults a test may make: ``down`` (every statement fails as an unreachable database
would), ``deliver_notices = False`` (notices go missing), ``give_to`` (another process
took a job over).
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Callable

import trio

from exporter.core.errors import QueueUnavailable
from exporter.core.model import Checkpoint, ExportStatus, JobRecord, utcnow
from exporter.jobs.queue import Claim, Notice


@dataclasses.dataclass
class _Row:
    record: JobRecord
    order: int  # the queue's own order of creation
    lease_until: float | None = None  # trio's clock


Listener = tuple[Callable[[Notice], None], Callable[[], None]]


class FakeQueue:
    """``JobQueue`` in memory. Every record handed out is a copy, as from a database."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, _Row] = {}
        self.down = False
        self.deliver_notices = True
        self._order = itertools.count()
        self._listeners: list[Listener] = []

    # -- for tests -----------------------------------------------------------------------

    def record(self, job_id: uuid.UUID) -> JobRecord:
        return dataclasses.replace(self.rows[job_id].record)

    def lease_left(self, job_id: uuid.UUID) -> float | None:
        until = self.rows[job_id].lease_until
        return None if until is None else until - trio.current_time()

    def give_to(self, job_id: uuid.UUID, owner: str) -> None:
        """Another process took the job over (its lease ran out unseen)."""
        self.rows[job_id].record.owner = owner

    # -- the interface -------------------------------------------------------------------

    def _reachable(self) -> None:
        if self.down:
            raise QueueUnavailable("the fake queue is down")

    def _notify(self, what: str, job_id: uuid.UUID) -> None:
        if self.deliver_notices:
            for on_notice, _ in list(self._listeners):
                on_notice(Notice(what, job_id))

    def _owned(self, owner: str, job_id: uuid.UUID) -> JobRecord | None:
        self._reachable()
        row = self.rows.get(job_id)
        if row is None or row.record.owner != owner:
            return None
        return row.record if row.record.status == ExportStatus.PROCESSING else None

    async def ping(self) -> None:
        self._reachable()

    async def close(self) -> None:
        pass

    async def listen(
        self, on_notice: Callable[[Notice], None], on_reconnect: Callable[[], None]
    ) -> None:
        listener = (on_notice, on_reconnect)
        self._listeners.append(listener)
        try:
            on_reconnect()
            await trio.sleep_forever()
        finally:
            self._listeners.remove(listener)

    async def insert(self, record: JobRecord, *, max_queued: int) -> bool:
        self._reachable()
        waiting = sum(r.record.status == ExportStatus.PENDING for r in self.rows.values())
        if waiting >= max(max_queued, 1):
            return False
        record.created_at = utcnow()
        stored = dataclasses.replace(record, status=ExportStatus.PENDING)
        self.rows[record.id] = _Row(stored, next(self._order))
        self._notify("new", record.id)
        return True

    async def claim(
        self, owner: str, lease_seconds: float, skip: list[uuid.UUID] | None = None
    ) -> Claim | None:
        self._reachable()
        now = trio.current_time()

        def claimable(row: _Row) -> bool:
            status = row.record.status
            expired = row.lease_until is None or row.lease_until < now
            return status == ExportStatus.PENDING or (
                status == ExportStatus.PROCESSING and expired and row.record.id not in (skip or [])
            )

        candidates = sorted(
            (r for r in self.rows.values() if claimable(r)), key=lambda r: (r.order, r.record.id)
        )
        if not candidates:
            return None
        row = candidates[0]
        record, was = row.record, row.record.status
        record.status, record.owner = ExportStatus.PROCESSING, owner
        row.lease_until = now + lease_seconds
        record.attempt = (
            max(record.attempt, 1) if was == ExportStatus.PENDING else record.attempt + 1
        )
        record.started_at = record.started_at or utcnow()
        return Claim(dataclasses.replace(record), taken_over=was == ExportStatus.PROCESSING)

    async def renew(
        self, owner: str, job_ids: list[uuid.UUID], lease_seconds: float
    ) -> dict[uuid.UUID, bool]:
        held = {}
        for job_id in job_ids:
            record = self._owned(owner, job_id)
            if record is not None:
                self.rows[job_id].lease_until = trio.current_time() + lease_seconds
                held[job_id] = record.cancel_requested
        return held

    async def release(self, owner: str, job_id: uuid.UUID) -> bool:
        record = self._owned(owner, job_id)
        if record is None:
            return False
        record.status, record.owner = ExportStatus.PENDING, None
        self.rows[job_id].lease_until = None
        self._notify("new", job_id)
        return True

    async def start(self, owner: str, record: JobRecord) -> bool:
        stored = self._owned(owner, record.id)
        if stored is None:
            return False
        stored.resumed_from_rows = record.resumed_from_rows
        stored.processed_rows, stored.bytes_written = record.processed_rows, record.bytes_written
        stored.total_rows = record.total_rows
        return True

    async def save_progress(self, owner: str, record: JobRecord) -> bool:
        stored = self._owned(owner, record.id)
        if stored is None:
            return False
        stored.processed_rows, stored.bytes_written = record.processed_rows, record.bytes_written
        stored.total_rows = record.total_rows
        return True

    async def checkpoint(self, owner: str, job_id: uuid.UUID, checkpoint: Checkpoint) -> bool:
        stored = self._owned(owner, job_id)
        if stored is None:
            return False
        stored.checkpoint = checkpoint
        return True

    async def forget_checkpoint(self, owner: str, job_id: uuid.UUID) -> None:
        self._reachable()
        row = self.rows.get(job_id)
        if row is not None and row.record.owner == owner:
            row.record.checkpoint = None

    async def finish(self, owner: str, record: JobRecord) -> bool:
        stored = self._owned(owner, record.id)
        if stored is None:
            return False
        for name in ("status", "error", "processed_rows", "total_rows", "bytes_written"):
            setattr(stored, name, getattr(record, name))
        for name in ("file_size", "completed_at", "expires_at"):
            setattr(stored, name, getattr(record, name))
        stored.owner = None
        self.rows[record.id].lease_until = None
        self._notify("ended", record.id)
        return True

    async def request_cancel(self, job_id: uuid.UUID) -> tuple[JobRecord, ExportStatus] | None:
        self._reachable()
        row = self.rows.get(job_id)
        if row is None:
            return None
        record, was = row.record, row.record.status
        record.cancel_requested = was == ExportStatus.PROCESSING
        if was == ExportStatus.PENDING:
            record.status, record.completed_at = ExportStatus.CANCELLED, utcnow()
        self._notify("ended" if was == ExportStatus.PENDING else "cancel", job_id)
        return dataclasses.replace(record), was

    async def withdraw(self, job_id: uuid.UUID) -> bool:
        return self._move(job_id, ExportStatus.COMPLETED, ExportStatus.CANCELLED)

    async def mark_expired(self, job_ids: list[uuid.UUID]) -> None:
        for job_id in job_ids:
            self._move(job_id, ExportStatus.COMPLETED, ExportStatus.EXPIRED)

    def _move(self, job_id: uuid.UUID, was: ExportStatus, to: ExportStatus) -> bool:
        self._reachable()
        row = self.rows.get(job_id)
        if row is None or row.record.status != was:
            return False
        row.record.status = to
        return True

    async def get(self, job_id: uuid.UUID) -> JobRecord | None:
        self._reachable()
        return self.record(job_id) if job_id in self.rows else None

    async def queue_position(self, record: JobRecord) -> int:
        self._reachable()
        mine = self.rows[record.id].order
        waiting = [r for r in self.rows.values() if r.record.status == ExportStatus.PENDING]
        return sum(r.order < mine for r in waiting) + 1

    async def counts(self) -> dict[str, int]:
        self._reachable()
        statuses = [r.record.status for r in self.rows.values()]
        return {
            "running": statuses.count(ExportStatus.PROCESSING),
            "queued": statuses.count(ExportStatus.PENDING),
        }

    async def statuses(self, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, ExportStatus]:
        self._reachable()
        return {i: self.rows[i].record.status for i in job_ids if i in self.rows}

    async def recent(self, limit: int) -> list[JobRecord]:
        self._reachable()
        newest = sorted(self.rows.values(), key=lambda r: r.order, reverse=True)[:limit]
        return [dataclasses.replace(r.record) for r in newest]

    async def due_to_expire(self) -> list[uuid.UUID]:
        self._reachable()
        now = utcnow()
        return [
            i
            for i, r in self.rows.items()
            if r.record.status == ExportStatus.COMPLETED
            and r.record.expires_at is not None
            and r.record.expires_at <= now
        ]
