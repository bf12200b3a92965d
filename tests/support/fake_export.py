"""A stand-in for the pipeline, for the job manager's unit tests: an export that runs for
as long as the test says, records a checkpoint when told, and shows what it was asked."""

from __future__ import annotations

import dataclasses
import uuid

import trio

from exporter.core.model import Checkpoint, ExportRequest, Progress
from exporter.export.pipeline import OnCheckpoint, PipelineOptions
from exporter.storage.base import ExportStorage

# What the fake export says it wrote: its CSV's size.
FILE_SIZE = 4096


@dataclasses.dataclass
class Run:
    """One call of the export: where it started from, and how it ended."""

    export_id: uuid.UUID
    resume: Checkpoint | None
    on_checkpoint: OnCheckpoint | None
    progress: Progress
    started_at: float  # trio's clock
    ended_at: float | None = None
    outcome: str = "running"  # completed, cancelled or failed


class FakeExport:
    """``export_csv``'s shape. Each run writes ``rows_per_second`` rows (on trio's clock)
    until ``finish()`` lets it complete, or ``fail(exc)`` makes it raise."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.started = trio.Event()
        self._finish = trio.Event()
        self._error: BaseException | None = None

    def finish(self) -> None:
        self._finish.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._finish.set()

    async def wait_started(self, count: int = 1) -> Run:
        while len(self.runs) < count:
            await trio.sleep(0.01)
        return self.runs[count - 1]

    async def checkpoint(self, run: Run, rows: int) -> Checkpoint:
        """Tell the job manager the files are durable up to ``rows`` rows."""
        checkpoint = Checkpoint(rows=rows, last_id=rows, csv_bytes=rows * 10, gzip_bytes=rows)
        run.progress.processed_rows = rows
        assert run.on_checkpoint is not None
        await run.on_checkpoint(checkpoint)
        return checkpoint

    async def __call__(
        self,
        conninfo: str,
        request: ExportRequest,
        storage: ExportStorage,
        export_id: uuid.UUID,
        *,
        progress: Progress,
        options: PipelineOptions,
        application_name: str = "exporter",
        resume: Checkpoint | None = None,
        on_checkpoint: OnCheckpoint | None = None,
    ) -> int:
        run = Run(export_id, resume, on_checkpoint, progress, trio.current_time())
        self.runs.append(run)
        progress.total_rows = 1000
        progress.started_at = trio.current_time()
        try:
            await self._finish.wait()
        except trio.Cancelled:
            run.outcome, run.ended_at = "cancelled", trio.current_time()
            raise
        run.ended_at = trio.current_time()
        if self._error is not None:
            run.outcome = "failed"
            raise self._error
        run.outcome = "completed"
        progress.processed_rows = 1000
        return FILE_SIZE
