"""One export, from a server-side cursor to a finished CSV file in the export store.

Three tasks, joined by bounded channels (docs/ARCHITECTURE.md draws the whole path)::

    read_batches                        bounded channel               write_batches
    fetchmany(batch_rows) in a thread ─► (channel_batches batches) ─► encode + write in a thread
                                                                      ─► the CSV's sink
                                                                         │ small channel
                                                     compress ◄──────────┘
                                                     deflate + write in a thread ─► gzip sink

The compressor makes the gzip copy (isal, in its own thread: it releases the GIL) while
the export runs, so gzip downloads need no compression per request.

The channel's capacity is the backpressure: when the writer falls behind, ``send`` blocks,
so the reader stops calling ``fetchmany`` and PostgreSQL keeps the rest of the result on
its side. At most ``channel_batches + 2`` batches are ever in memory (the channel's, the
one being written, the one the reader holds while it waits to send).

Cancellation: everything runs inside the caller's cancel scope. A thread cannot be
interrupted, so a cancelled wait on ``fetchmany`` (or on the DECLARE/EXPLAIN before it)
cancels the *query on the server*, which makes the blocked call return at once; the
connection is closed, and the files removed (or, with ``keep_partial``, closed for a later
attempt to continue). A finished file only appears on ``commit`` (``exporter.storage``),
so it is never partial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.jobs.postgres_queue)
import psycopg
import trio

from exporter.core.model import Checkpoint, ExportRequest, Progress
from exporter.export.connection import open_text_connection
from exporter.export.csvfmt import Dialect
from exporter.export.outputs import CsvOutput, GzipOutput, Outputs
from exporter.export.query import IdRange, export_select
from exporter.export.rows import (
    RANGE_BATCHES,
    Batch,
    RowSource,
    batch_size,
    estimate_rows,
    id_ranges,
    max_id,
)
from exporter.export.threads import background, run_cancellable
from exporter.storage.base import ExportStorage

if TYPE_CHECKING:
    from exporter.core.config import Settings

__all__ = ["OnCheckpoint", "PipelineOptions", "export_csv"]

# Encoded batches that may wait for the compressor.
GZIP_CHANNEL_BLOCKS = 2


@dataclasses.dataclass(frozen=True, slots=True)
class PipelineOptions:
    """How an export runs; ``from_settings`` takes each from the setting of the same name.

    ``batch_rows``: rows per FETCH (and per COPY block); ``channel_batches``: batches the
    rows channel holds; ``gzip_exports``: make the gzip copy; ``row_source``: ``cursor`` or
    ``copy``; ``checkpoint_interval``: seconds between checkpoints; ``keep_partial``: an
    export that does not complete keeps its files for a later attempt.
    """

    batch_rows: int = 10_000
    channel_batches: int = 0
    gzip_exports: bool = True
    row_source: str = "cursor"
    checkpoint_interval: float = 5.0
    keep_partial: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, **changes: Any) -> PipelineOptions:
        names = {field.name for field in dataclasses.fields(cls)}
        taken = {name: getattr(settings, name) for name in names if hasattr(settings, name)}
        return cls(**{**taken, **changes})


@dataclasses.dataclass(frozen=True, slots=True)
class RangeEnd:
    """Every row with ``id <= last_id`` has gone before this mark: a checkpoint may go here."""

    last_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class CheckpointMark:
    """A checkpoint on its way to the compressor: the CSV part of it is durable already."""

    rows: int
    last_id: int
    csv_bytes: int


# What the rows channel carries, and what the compressor's channel carries.
RowItem = Batch | RangeEnd
CsvItem = bytes | CheckpointMark
OnCheckpoint = Callable[[Checkpoint], Awaitable[None]]


async def read_batches(
    source: RowSource,
    ranges: list[IdRange],
    send_rows: trio.MemorySendChannel[RowItem],
    *,
    progress: Progress,
) -> None:
    """The reader: for each range of ids, fetch its batches in a worker thread and send
    them, then a ``RangeEnd``.

    ``send`` waits while the channel is full: that wait is the backpressure, and while it
    lasts nothing more is fetched.
    """
    async with send_rows:
        for ids in ranges:
            fetch = await source.open(ids)
            while True:
                batch = await run_cancellable(background(fetch), cancel=source.cancel)
                if batch_size(batch) == 0:
                    break
                progress.batches_fetched += 1
                await send_rows.send(batch)
                del batch  # the writer's thread frees it (see write_batches)
            await send_rows.send(RangeEnd(ids.up_to))


@dataclasses.dataclass(slots=True)
class Checkpoints:
    """When the writer takes a checkpoint (at a ``RangeEnd``, ``interval`` seconds after the
    last one), and whom it tells once the files are durable up to it."""

    interval: float
    record: OnCheckpoint | None = None
    last: float = dataclasses.field(default_factory=time.monotonic)

    def due(self) -> bool:
        return self.record is not None and time.monotonic() - self.last >= self.interval


async def write_batches(
    receive_rows: trio.MemoryReceiveChannel[RowItem],
    csv: CsvOutput,
    send_csv: trio.MemorySendChannel[CsvItem] | None,
    checkpoints: Checkpoints,
    *,
    progress: Progress,
) -> None:
    """The writer: encode and write each batch in a worker thread, then pass the CSV bytes
    on to the compressor (``send_csv``, if there is a gzip copy). At a due checkpoint it
    makes the CSV durable and passes the mark on (or, without a gzip copy, records it)."""
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(receive_rows)
        if send_csv is not None:
            stack.enter_context(send_csv)
        async for item in receive_rows:
            if isinstance(item, RangeEnd):
                if checkpoints.due():
                    csv_bytes = await trio.to_thread.run_sync(csv.sink.sync)
                    if csv_bytes is None:
                        continue  # not yet (an object store's part is not full): next range end
                    checkpoints.last = time.monotonic()
                    mark = CheckpointMark(progress.processed_rows, item.last_id, csv_bytes)
                    if send_csv is not None:
                        await send_csv.send(mark)
                    elif checkpoints.record is not None:
                        await checkpoints.record(
                            Checkpoint(mark.rows, mark.last_id, mark.csv_bytes, 0)
                        )
                continue
            rows = batch_size(item)
            # Handed over in a box that the thread empties, so that the batch's last
            # reference dies there: freeing a cursor batch's ~50,000 objects takes
            # milliseconds, which the event loop would otherwise spend.
            box = [item]
            del item
            data = await trio.to_thread.run_sync(background(csv.write_boxed), box)
            progress.bytes_written += len(data)
            progress.processed_rows += rows
            progress.batches_written += 1
            if send_csv is not None:
                await send_csv.send(data)


async def compress(
    receive_csv: trio.MemoryReceiveChannel[CsvItem], gz: GzipOutput, record: OnCheckpoint | None
) -> None:
    """The compressor: the gzip copy follows the CSV through a channel of its own, so that
    compressing runs beside writing instead of after it. At a checkpoint mark it flushes
    the deflate stream, makes the copy durable and records the checkpoint."""
    async with receive_csv:
        async for item in receive_csv:
            if isinstance(item, CheckpointMark):
                gzip_bytes = await trio.to_thread.run_sync(gz.checkpoint)
                if record is not None and gzip_bytes is not None:
                    done = Checkpoint(item.rows, item.last_id, item.csv_bytes, gzip_bytes, gz.crc)
                    await record(done)
            else:
                await trio.to_thread.run_sync(background(gz.write), item)


async def export_csv(
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
    """Export ``request`` into ``storage`` as the export ``export_id``; returns the CSV's size.

    ``progress`` is kept up to date as rows are written. ``options.row_source``: ``cursor``
    (a server-side cursor, values encoded here) or ``copy`` (``COPY … TO STDOUT`` writes
    the CSV lines): the same bytes. Every ``options.checkpoint_interval`` seconds (at a
    range's end) the files are made durable and ``on_checkpoint`` told how far;
    ``resume`` continues from such a checkpoint. Raises ``CannotResume`` if its files are
    not there, and whatever the database or the export store raised; on any failure the
    partial files are removed (kept with ``options.keep_partial``).
    """
    row_source = options.row_source
    if request.neutralize_formulas:
        row_source = "cursor"  # COPY's lines would have to be parsed again to change them
    dialect = Dialect.of(request.delimiter, request.quote_char, request.neutralize_formulas)
    gzip = storage.sink(export_id, gzip=True) if options.gzip_exports else None
    outputs = Outputs(storage.sink(export_id), gzip, dialect, keep_partial=options.keep_partial)
    conn = await trio.to_thread.run_sync(open_text_connection, conninfo, application_name)
    source = RowSource(
        conn,
        request,
        row_source,
        options.batch_rows,
        conninfo=conninfo,
        application_name=application_name,
    )
    try:
        ranges, header = await _begin(conn, request, outputs, resume, options, progress)
        await _copy_rows(
            source,
            ranges,
            outputs,
            header,
            channel_batches=options.channel_batches,
            checkpoints=Checkpoints(options.checkpoint_interval, on_checkpoint),
            progress=progress,
        )
        progress.total_rows = progress.processed_rows  # the estimate has served its purpose
        return await trio.to_thread.run_sync(outputs.commit)
    finally:
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(outputs.end)
            finally:
                # Closing ends the transactions and the backends with them.
                await trio.to_thread.run_sync(source.close)
                await trio.to_thread.run_sync(conn.close)


async def _begin(
    conn: psycopg.Connection[Any],
    request: ExportRequest,
    outputs: Outputs,
    resume: Checkpoint | None,
    options: PipelineOptions,
    progress: Progress,
) -> tuple[list[IdRange], bytes]:
    """The estimate, the ranges to read and the files opened (or continued at ``resume``);
    returns the ranges and the header written."""
    progress.total_rows = await run_cancellable(
        estimate_rows, conn, export_select(request), cancel=conn.cancel_safe
    )
    # One snapshot for every range: the ranges read the table as it was at the start.
    last_id = await run_cancellable(max_id, conn, cancel=conn.cancel_safe)
    header = await trio.to_thread.run_sync(outputs.open, request.columns, resume)
    progress.bytes_written = len(header)
    if resume is not None:
        progress.processed_rows, progress.bytes_written = resume.rows, resume.csv_bytes
    progress.started_at = time.monotonic()
    first = 0 if resume is None else resume.last_id
    return id_ranges(first, last_id, options.batch_rows * RANGE_BATCHES), header


async def _copy_rows(
    source: RowSource,
    ranges: list[IdRange],
    outputs: Outputs,
    header: bytes,
    *,
    channel_batches: int,
    checkpoints: Checkpoints,
    progress: Progress,
) -> None:
    """The reader, the writer and (for a gzip copy) the compressor, joined by channels."""
    send_rows, receive_rows = trio.open_memory_channel[RowItem](channel_batches)
    csv, gz = outputs.csv, outputs.gzip
    async with trio.open_nursery() as nursery:
        send_csv: trio.MemorySendChannel[CsvItem] | None = None
        if gz is not None:
            send_csv, receive_csv = trio.open_memory_channel[CsvItem](GZIP_CHANNEL_BLOCKS)
            if header:
                send_csv.send_nowait(header)  # the gzip copy begins with it too
            nursery.start_soon(compress, receive_csv, gz, checkpoints.record)
        nursery.start_soon(
            functools.partial(read_batches, progress=progress), source, ranges, send_rows
        )
        nursery.start_soon(
            functools.partial(write_batches, progress=progress),
            receive_rows,
            csv,
            send_csv,
            checkpoints,
        )
