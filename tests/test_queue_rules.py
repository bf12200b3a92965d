"""The queue's rules, statement by statement, held by the real ``export_jobs`` table and by
the in-memory fake the job manager's unit tests use (``tests/test_job_rules.py``): the
same checks run against both, so the fake cannot drift from the real thing.

Leases here are a fraction of a second of real time; a check waits past one before it
expects a takeover, and never bounds how soon one happens."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import trio_asyncio
import pytest
import trio

from exporter.core.model import Checkpoint, ExportRequest, ExportStatus, JobRecord
from exporter.jobs.postgres_queue import PostgresQueue
from exporter.jobs.queue import JobQueue
from tests.support import abandon_queue
from tests.support.fake_queue import FakeQueue

LEASE = 0.3
CHECKPOINT = Checkpoint(rows=200, last_id=200, csv_bytes=2000, gzip_bytes=900, gzip_crc=7)


@pytest.fixture(params=["postgres", "fake"])
async def queue(request: pytest.FixtureRequest, database: str) -> AsyncIterator[JobQueue]:
    if request.param == "fake":
        yield FakeQueue()
        return
    await trio.to_thread.run_sync(abandon_queue, database)  # nothing else waits or runs
    async with trio_asyncio.open_loop():
        real = PostgresQueue(database)
        try:
            yield real
        finally:
            await real.close()
            await trio.to_thread.run_sync(abandon_queue, database)


async def submit(queue: JobQueue, max_queued: int = 100) -> JobRecord:
    record = JobRecord(id=uuid.uuid4(), request=ExportRequest(columns=("id",)))
    assert await queue.insert(record, max_queued=max_queued)
    return record


async def test_claims_take_the_oldest_waiting_job_once(queue: JobQueue) -> None:
    first, second = await submit(queue), await submit(queue)
    claim_a = await queue.claim("a", LEASE)
    claim_b = await queue.claim("b", LEASE)
    assert claim_a is not None and claim_b is not None
    assert (claim_a.record.id, claim_b.record.id) == (first.id, second.id)
    assert (claim_a.record.attempt, claim_a.taken_over) == (1, False)
    assert claim_a.record.status == ExportStatus.PROCESSING and claim_a.record.owner == "a"
    assert await queue.claim("c", LEASE) is None  # both held, nothing waits
    assert await queue.counts() == {"running": 2, "queued": 0}


async def test_a_job_is_taken_over_only_once_its_lease_ran_out(queue: JobQueue) -> None:
    record = await submit(queue)
    assert await queue.claim("a", LEASE) is not None
    assert await queue.claim("b", LEASE) is None  # its lease holds
    await trio.sleep(LEASE * 2)
    taken = await queue.claim("b", LEASE)
    assert taken is not None and taken.record.id == record.id
    assert (taken.record.attempt, taken.taken_over, taken.record.owner) == (2, True, "b")
    # The old owner has lost it: its renewal leaves it out, its statements change nothing.
    assert await queue.renew("a", [record.id], LEASE) == {}
    assert not await queue.checkpoint("a", record.id, CHECKPOINT)
    assert await queue.renew("b", [record.id], LEASE) == {record.id: False}


async def test_only_the_owner_changes_a_running_job(queue: JobQueue) -> None:
    record = await submit(queue)
    claim = await queue.claim("a", LEASE * 100)
    assert claim is not None
    running = claim.record
    running.processed_rows = 50
    for owner, expected in (("intruder", False), ("a", True)):
        assert await queue.start(owner, running) is expected
        assert await queue.save_progress(owner, running) is expected
        assert await queue.checkpoint(owner, record.id, CHECKPOINT) is expected
    stored = await queue.get(record.id)
    assert stored is not None and stored.checkpoint == CHECKPOINT and stored.processed_rows == 50
    done = JobRecord(id=record.id, request=record.request, status=ExportStatus.COMPLETED)
    done.file_size = 1234
    assert not await queue.release("intruder", record.id)
    assert not await queue.finish("intruder", done)
    assert await queue.finish("a", done)
    ended = await queue.get(record.id)
    assert ended is not None
    assert (ended.status, ended.owner, ended.file_size) == (ExportStatus.COMPLETED, None, 1234)
    assert not await queue.finish("a", done)  # once ended, never again


async def test_a_job_handed_back_keeps_its_attempt_and_checkpoint(queue: JobQueue) -> None:
    record = await submit(queue)
    assert await queue.claim("a", LEASE * 100) is not None
    assert await queue.checkpoint("a", record.id, CHECKPOINT)
    assert await queue.release("a", record.id)
    again = await queue.claim("b", LEASE * 100)
    assert again is not None and again.record.id == record.id
    assert (again.record.attempt, again.taken_over) == (1, False)
    assert again.record.checkpoint == CHECKPOINT
    await queue.forget_checkpoint("b", record.id)
    stored = await queue.get(record.id)
    assert stored is not None and stored.checkpoint is None


async def test_the_queue_limit_counts_waiting_jobs_and_one_may_always_wait(
    queue: JobQueue,
) -> None:
    refused = JobRecord(id=uuid.uuid4(), request=ExportRequest())
    await submit(queue, max_queued=0)  # a limit of 0 still lets one wait
    assert not await queue.insert(refused, max_queued=0)
    assert await queue.insert(refused, max_queued=2)
    assert await queue.get(refused.id) is not None
    assert (await queue.queue_position(refused)) == 2
    assert await queue.counts() == {"running": 0, "queued": 2}


async def test_cancel_stops_a_waiting_job_at_once_and_asks_a_running_ones_owner(
    queue: JobQueue,
) -> None:
    running, waiting = await submit(queue), await submit(queue)
    assert await queue.claim("a", LEASE * 100) is not None
    answer = await queue.request_cancel(waiting.id)
    assert answer is not None and answer[1] == ExportStatus.PENDING
    assert answer[0].status == ExportStatus.CANCELLED
    answer = await queue.request_cancel(running.id)
    assert answer is not None and answer[1] == ExportStatus.PROCESSING
    assert await queue.renew("a", [running.id], LEASE) == {running.id: True}
    assert await queue.request_cancel(uuid.uuid4()) is None


async def test_a_claim_skips_the_jobs_its_process_could_not_record(queue: JobQueue) -> None:
    record = await submit(queue)
    assert await queue.claim("a", LEASE) is not None
    await trio.sleep(LEASE * 2)
    assert await queue.claim("a", LEASE, skip=[record.id]) is None
    assert await queue.claim("a", LEASE) is not None
