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
import trio

from exporter.core.datasets import USERS, Dataset, DatasetError, DatasetProblem, Datasets
from exporter.core.errors import TooManyRows
from exporter.core.model import Checkpoint, ExportRequest, Progress
from exporter.export.connection import open_text_connection
from exporter.export.csvfmt import Dialect
from exporter.export.outputs import CsvOutput, GzipOutput, Outputs
from exporter.export.query import export_select
from exporter.export.rows import (
    RANGE_BATCHES,
    Batch,
    RowSource,
    batch_size,
    estimate_rows,
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
    export that does not complete keeps its files for a later attempt; ``datasets``: what
    can be exported (the service resolves them once at its start; without them the
    built-in ``users`` is resolved for each export).
    """

    batch_rows: int = 10_000
    channel_batches: int = 0
    gzip_exports: bool = True
    row_source: str = "cursor"
    checkpoint_interval: float = 5.0
    keep_partial: bool = False
    datasets: Datasets = dataclasses.field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, **changes: Any) -> PipelineOptions:
        names = {field.name for field in dataclasses.fields(cls)}
        taken = {name: getattr(settings, name) for name in names if hasattr(settings, name)}
        return cls(**{**taken, **changes})


@dataclasses.dataclass(frozen=True, slots=True)
class RangeEnd:
    """Every row with a key up to ``last_key`` has gone before this mark: a checkpoint
    may go here."""

    last_key: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CheckpointMark:
    """A checkpoint on its way to the compressor: the CSV part of it is durable already."""

    rows: int
    last_key: tuple[str, ...]
    csv_bytes: int


# What the rows channel carries, and what the compressor's channel carries.
RowItem = Batch | RangeEnd
CsvItem = bytes | CheckpointMark
OnCheckpoint = Callable[[Checkpoint], Awaitable[None]]


async def read_batches(
    source: RowSource,
    range_rows: int,
    after: tuple[str, ...] | None,
    send_rows: trio.MemorySendChannel[RowItem],
    *,
    progress: Progress,
    max_rows: int | None = None,
) -> None:
    """The reader: the rows after the key ``after``, fetched batch by batch in a worker
    thread and sent on, and after every ``range_rows`` of them a ``RangeEnd`` with the key
    they reached (the cursor knows it from its rows; COPY reads range after range of
    ``range_rows`` rows and asks the database where each ended; COPY of a dataset that is
    not ranged sends none). Raises ``TooManyRows`` once more than ``max_rows`` rows were
    read.

    ``send`` waits while the channel is full: that wait is the backpressure, and while it
    lasts nothing more is fetched.
    """
    total = progress.processed_rows
    async with send_rows:
        fetch = await source.open(after, range_rows if source.ranges else None)
        rows = 0  # since the last RangeEnd
        while True:
            batch = await run_cancellable(background(fetch), cancel=source.cancel)
            size = batch_size(batch)
            if size == 0:
                if not source.ranges or rows < range_rows:
                    return  # the statement read everything, or a range short of its rows
                find = functools.partial(source.find_last_key, after, rows)
                after = await run_cancellable(find, cancel=source.conn.cancel_safe)
                await send_rows.send(RangeEnd(after))
                fetch, rows = await source.open(after, range_rows), 0
                continue
            rows, total = rows + size, total + size
            if max_rows is not None and total > max_rows:
                raise TooManyRows(max_rows)
            progress.batches_fetched += 1
            await send_rows.send(batch)
            del batch  # the writer's thread frees it (see write_batches)
            if source.keyed and rows >= range_rows and source.last_key is not None:
                await send_rows.send(RangeEnd(source.last_key))
                rows = 0


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
                    mark = CheckpointMark(progress.processed_rows, item.last_key, csv_bytes)
                    if send_csv is not None:
                        await send_csv.send(mark)
                    elif checkpoints.record is not None:
                        await checkpoints.record(
                            Checkpoint(mark.rows, csv_bytes=mark.csv_bytes, last_key=mark.last_key)
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
                    done = Checkpoint(
                        item.rows,
                        csv_bytes=item.csv_bytes,
                        gzip_bytes=gzip_bytes,
                        gzip_crc=gz.crc,
                        last_key=item.last_key,
                    )
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
    """Export ``request`` (of one of ``options.datasets``) into ``storage`` as the export
    ``export_id``; returns the CSV's size.

    ``progress`` is kept up to date as rows are written. ``options.row_source``: ``cursor``
    (a server-side cursor, values encoded here) or ``copy`` (``COPY … TO STDOUT`` writes
    the CSV lines): the same bytes. Every ``options.checkpoint_interval`` seconds (at a
    range's end) the files are made durable and ``on_checkpoint`` told how far;
    ``resume`` continues from such a checkpoint. Raises ``CannotResume`` if its files are
    not there, ``TooManyRows`` past the dataset's ``max_rows``, and whatever the database
    or the export store raised; on any failure the partial files are removed (kept with
    ``options.keep_partial``).
    """
    dataset = await _dataset(conninfo, request, options)
    # COPY's lines would have to be parsed again to neutralise formulas: the cursor then.
    row_source = "cursor" if request.neutralize_formulas else options.row_source
    dialect = Dialect.of(request.delimiter, request.quote_char, request.neutralize_formulas)
    gzip = storage.sink(export_id, gzip=True) if options.gzip_exports else None
    outputs = Outputs(storage.sink(export_id), gzip, dialect, keep_partial=options.keep_partial)
    conn = await trio.to_thread.run_sync(open_text_connection, conninfo, application_name)
    source = RowSource(
        conn, dataset, request, row_source, options.batch_rows,
        conninfo=conninfo, application_name=application_name,
    )  # fmt: skip
    try:
        range_rows, header = await _begin(source, outputs, resume, options, progress)
        await _copy_rows(
            source,
            range_rows,
            None if resume is None else resume.last_key,
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


async def _dataset(conninfo: str, request: ExportRequest, options: PipelineOptions) -> Dataset:
    """The request's dataset, resolved (``DatasetError`` if it is not declared)."""
    dataset = options.datasets.get(request.dataset)
    if dataset is not None:
        return dataset
    if request.dataset == USERS.name and not options.datasets:
        from exporter.export.catalog import resolve_datasets

        return (await trio.to_thread.run_sync(resolve_datasets, conninfo, [USERS]))[USERS.name]
    problem = DatasetProblem("(the datasets)", request.dataset, None, "is not declared")
    raise DatasetError([problem])


async def _begin(
    source: RowSource,
    outputs: Outputs,
    resume: Checkpoint | None,
    options: PipelineOptions,
    progress: Progress,
) -> tuple[int, bytes]:
    """The estimate and the files opened (or continued at ``resume``); returns the rows
    between checkpoint marks and the header written."""
    conn, dataset, request = source.conn, source.dataset, source.request
    progress.total_rows = await run_cancellable(
        estimate_rows,
        conn,
        export_select(dataset, request, source.source),
        cancel=conn.cancel_safe,
    )
    header = await trio.to_thread.run_sync(outputs.open, request.columns, resume)
    progress.bytes_written = len(header)
    if resume is not None:
        progress.processed_rows, progress.bytes_written = resume.rows, resume.csv_bytes
    progress.started_at = time.monotonic()
    return options.batch_rows * RANGE_BATCHES, header


async def _copy_rows(
    source: RowSource,
    range_rows: int,
    after: tuple[str, ...] | None,
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
        read = functools.partial(read_batches, progress=progress, max_rows=source.dataset.max_rows)
        nursery.start_soon(read, source, range_rows, after, send_rows)
        nursery.start_soon(
            functools.partial(write_batches, progress=progress),
            receive_rows,
            csv,
            send_csv,
            checkpoints,
        )
