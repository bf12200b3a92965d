"""The job manager's rules, on an in-memory queue and trio's MockClock: leases, claims,
hand-back, takeover, missed notices and unrecorded ends, each in milliseconds.

The queue is ``tests/support/fake_queue.FakeQueue`` (held to the real table's rules by
``tests/test_queue_rules.py``) and the export a stand-in that runs until the test lets it
end (``FakeExport``): what these tests check is what the job manager does around an
export, whatever the export is. The same rules are tested with real processes, a real
database and real exports in ``tests/test_scaleout.py``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from exporter.core.config import Settings
from exporter.core.errors import QueueFull
from exporter.core.model import ExportRequest, ExportStatus, JobRecord
from exporter.jobs.claims import CLAIM_POLL_SECONDS
from exporter.jobs.failures import gave_up_error
from exporter.jobs.manager import JobManager
from exporter.storage.folder import FolderStorage
from tests.support.fake_export import FILE_SIZE, FakeExport
from tests.support.fake_queue import FakeQueue

LEASE = 15.0
T = TypeVar("T")


async def start(
    nursery: trio.Nursery,
    queue: FakeQueue,
    export: FakeExport,
    folder: Path,
    owner: str = "a",
    **overrides: object,
) -> tuple[JobManager, trio.CancelScope]:
    """A job manager (a process) named ``owner``; cancel the scope to stop it."""
    settings = Settings(export_dir=folder, lease_seconds=LEASE).replace(**overrides)
    storage = FolderStorage(folder)
    jobs = JobManager(
        settings, "unused", queue, storage, export=export, owner=owner, blocking=inline
    )
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await jobs.run(task_status=task_status)

    await nursery.start(run)
    return jobs, scope


async def inline(fn: Callable[..., T], *args: Any) -> T:
    """A blocking call of the export store, made here: a wait for a worker thread would
    let the MockClock jump ahead (the folder's calls take microseconds)."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


async def until(condition: Callable[[], bool], within: float = 60.0) -> None:
    """Wait (on trio's clock) until ``condition()`` holds; fail after ``within`` seconds."""
    with trio.fail_after(within):
        while not condition():
            await trio.sleep(0.01)


# Each test takes trio's MockClock that jumps ahead whenever every task waits: minutes of
# leases pass in milliseconds.


def status_of(queue: FakeQueue, job_id: uuid.UUID) -> ExportStatus:
    return queue.record(job_id).status


def partial_file(folder: Path, job_id: uuid.UUID) -> Path:
    """A partial file of the job's, as an export would leave it."""
    path = folder / f"{job_id}.csv.part"
    path.write_bytes(b"id\n1\n")
    return path


async def test_a_job_is_claimed_its_lease_renewed_while_it_runs_and_its_end_recorded(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    queue, export = FakeQueue(), FakeExport()
    jobs, _ = await start(nursery, queue, export, tmp_path)
    record = await jobs.submit(ExportRequest())
    await export.wait_started()
    lowest = LEASE
    for _ in range(300):  # ten leases
        await trio.sleep(LEASE / 30)
        lease_left = queue.lease_left(record.id)
        assert lease_left is not None
        lowest = min(lowest, lease_left)
    assert status_of(queue, record.id) == ExportStatus.PROCESSING
    assert lowest >= LEASE * 2 / 3 - 0.1  # renewed every third of it

    export.finish()
    await until(lambda: status_of(queue, record.id) == ExportStatus.COMPLETED)
    done = queue.record(record.id)
    assert (done.owner, done.attempt, done.file_size, done.processed_rows) == (
        None,
        1,
        FILE_SIZE,
        1000,
    )
    assert done.completed_at is not None and done.expires_at is not None
    assert done.expires_at - done.completed_at == dt.timedelta(seconds=jobs.settings.export_ttl)


async def test_a_job_that_cannot_renew_stops_before_its_lease_runs_out_and_is_taken_over(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    queue, export = FakeQueue(), FakeExport()
    _, process_a = await start(nursery, queue, export, tmp_path, owner="a")
    record = await _submit(queue)
    run = await export.wait_started()
    checkpoint = await export.checkpoint(run, 500)
    part = partial_file(tmp_path, record.id)

    queue.down = True  # every renewal fails from now on
    await until(lambda: run.outcome == "cancelled", within=LEASE)
    lease_until = queue.rows[record.id].lease_until
    assert lease_until is not None and run.ended_at is not None
    # Stopped a fifth of a lease before anyone else may take the job.
    assert run.ended_at <= lease_until - LEASE / 5 + 0.01
    left = queue.record(record.id)
    assert (left.status, left.owner, left.checkpoint) == (ExportStatus.PROCESSING, "a", checkpoint)
    assert part.exists()  # nothing of it touched

    process_a.cancel()  # it never comes back
    queue.down = False
    await start(nursery, queue, export, tmp_path, owner="b")
    taken = await export.wait_started(2)
    assert lease_until <= taken.started_at <= lease_until + CLAIM_POLL_SECONDS + 0.1
    assert taken.resume == checkpoint
    now = queue.record(record.id)
    assert (now.owner, now.attempt) == ("b", 2)


async def test_a_stopping_process_hands_its_job_back_to_be_continued(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    queue, export = FakeQueue(), FakeExport()
    _, process_a = await start(nursery, queue, export, tmp_path, owner="a")
    record = await _submit(queue)
    run = await export.wait_started()
    checkpoint = await export.checkpoint(run, 300)

    process_a.cancel()  # SIGTERM
    await until(lambda: status_of(queue, record.id) == ExportStatus.PENDING)
    handed = queue.record(record.id)
    assert (handed.owner, handed.attempt, handed.checkpoint) == (None, 1, checkpoint)
    assert run.outcome == "cancelled"

    await start(nursery, queue, export, tmp_path, owner="b")
    again = await export.wait_started(2)
    assert again.resume == checkpoint
    assert queue.record(record.id).attempt == 1  # a hand-back is no attempt


async def test_a_job_interrupted_max_attempts_times_fails_saying_so(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    queue, export = FakeQueue(), FakeExport()
    record = await _submit(queue)
    # Its owner died twice: processing, attempt 2, its lease long gone.
    row = queue.rows[record.id]
    row.record.status, row.record.owner, row.record.attempt = ExportStatus.PROCESSING, "dead", 2
    row.lease_until = trio.current_time() - 1

    await start(nursery, queue, export, tmp_path, max_attempts=2)
    await until(lambda: status_of(queue, record.id) == ExportStatus.FAILED)
    failed = queue.record(record.id)
    assert (failed.attempt, failed.error) == (3, gave_up_error(2))
    assert export.runs == []


async def test_a_cancel_whose_notice_went_missing_stops_the_job_at_the_next_renewal(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    queue, export = FakeQueue(), FakeExport()
    await start(nursery, queue, export, tmp_path)
    record = await _submit(queue)
    run = await export.wait_started()
    part = partial_file(tmp_path, record.id)

    queue.deliver_notices = False
    asked = trio.current_time()
    await queue.request_cancel(record.id)  # a DELETE on another process
    await until(lambda: status_of(queue, record.id) == ExportStatus.CANCELLED, within=LEASE)
    assert run.ended_at is not None and run.ended_at - asked <= LEASE / 3 + 0.1
    assert not part.exists()


async def test_a_job_another_process_took_over_is_stopped_without_being_touched(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    queue, export = FakeQueue(), FakeExport()
    await start(nursery, queue, export, tmp_path, owner="a")
    record = await _submit(queue)
    run = await export.wait_started()
    part = partial_file(tmp_path, record.id)

    queue.give_to(record.id, "b")  # its lease ran out unseen; b claimed it
    await until(lambda: run.outcome == "cancelled", within=LEASE / 3 + 0.1)
    await trio.sleep(1)  # its end, had it been made, would have been recorded by now
    now = queue.record(record.id)
    assert (now.status, now.owner) == (ExportStatus.PROCESSING, "b")
    assert part.exists()


async def test_an_end_the_database_cannot_take_is_shown_and_recorded_once_it_is_back(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    queue, export = FakeQueue(), FakeExport()
    jobs, _ = await start(nursery, queue, export, tmp_path)
    record = await _submit(queue)
    await export.wait_started()

    queue.down = True
    export.finish()
    with trio.fail_after(10):
        while (view := await jobs.view(record.id)) is None or view.record.status.is_live:
            await trio.sleep(0.01)
    assert view.record.status == ExportStatus.COMPLETED  # shown from memory
    assert queue.rows[record.id].record.status == ExportStatus.PROCESSING

    await trio.sleep(LEASE * 2)  # long enough for its lease to run out meanwhile
    queue.down = False
    await until(lambda: status_of(queue, record.id) == ExportStatus.COMPLETED, within=LEASE)
    assert len(export.runs) == 1  # never taken over by its own process
    assert queue.record(record.id).attempt == 1


async def test_the_queue_limit_counts_the_jobs_of_every_process(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    queue, export = FakeQueue(), FakeExport()
    api_a, _ = await start(
        nursery, queue, export, tmp_path, "a", max_concurrent_exports=0, max_queued_exports=2
    )
    api_b, _ = await start(
        nursery, queue, export, tmp_path, "b", max_concurrent_exports=0, max_queued_exports=2
    )
    await api_a.submit(ExportRequest())
    await api_b.submit(ExportRequest())
    with pytest.raises(QueueFull, match="2 exports are already waiting"):
        await api_a.submit(ExportRequest())
    assert await queue.counts() == {"running": 0, "queued": 2}


async def _submit(queue: FakeQueue) -> JobRecord:
    """A job submitted by another process (an API process, say)."""
    record = JobRecord(id=uuid.uuid4(), request=ExportRequest())
    assert await queue.insert(record, max_queued=100)
    return record
