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
connection is closed, the sinks discarded. A finished file only appears on ``commit``
(``exporter.storage``), so it is never partial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.store)
import psycopg
import trio
from isal import isal_zlib
from psycopg.adapt import AdaptersMap
from psycopg.rows import tuple_row
from psycopg.types.string import TextLoader

from exporter.csvfmt import Dialect, Row, encode_header, encode_rows
from exporter.query import IdRange, Select, export_select
from exporter.request import ExportRequest
from exporter.states import Checkpoint
from exporter.storage import CannotResume, ExportStorage, Sink

if TYPE_CHECKING:
    from exporter.copy_source import CopyReader

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class CopyBlock:
    """CSV lines as COPY wrote them, and how many rows they are (a quoted value may hold a
    newline, so lines cannot be counted afterwards)."""

    data: bytes
    rows: int


# A cursor's rows, to be encoded, or a block COPY wrote.
Batch = Sequence[Row] | CopyBlock


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

# Ids per query, in batches: the rows are read in ranges of ids, in order, so that a
# checkpoint can say "every row up to this id is written" (at the default BATCH_ROWS, 500,000
# ids: about two seconds of a full export).
RANGE_BATCHES = 50

# isal's default level: its best speed for its size here (level 3 halves the speed for
# a 1% smaller file). Raw deflate: the gzip header and trailer are GzipOutput's own.
GZIP_LEVEL = isal_zlib.ISAL_DEFAULT_COMPRESSION
RAW_DEFLATE = -15
# RFC 1952: magic, deflate, no flags, no modification time, no extra flags, unknown OS.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

# How much lower than the event loop the export threads run (see _background).
EXPORT_THREAD_NICE = 10

# Encoded batches that may wait for the compressor.
GZIP_CHANNEL_BLOCKS = 2

# How long a cancelled export waits for its blocked database call to return after the
# query was cancelled on the server; in practice that takes milliseconds.
CANCEL_GRACE = 5.0


def _text_adapters() -> AdaptersMap:
    """Adapters that hand back every value as PostgreSQL's text output, untouched.

    With the connection's client encoding at SQL_ASCII (see ``open_text_connection``), psycopg's C
    text loader returns the bytes as they came from the server: no parsing into
    datetimes or Decimals and back, no decoding and re-encoding. Those bytes are exactly
    what COPY would write for the value.
    """
    adapters = AdaptersMap(psycopg.adapters)
    for info in psycopg.adapters.types:
        for oid in (info.oid, info.array_oid):
            if oid:
                adapters.register_loader(oid, TextLoader)
    return adapters


TEXT_ADAPTERS = _text_adapters()


@dataclasses.dataclass(slots=True)
class Progress:
    """Figures of a running export, updated by the pipeline and read by anyone.

    Only trio tasks write them (never the worker threads), so no lock is needed.
    """

    total_rows: int | None = None
    processed_rows: int = 0
    bytes_written: int = 0
    batches_fetched: int = 0
    batches_written: int = 0
    started_at: float | None = None  # time.monotonic() when rows began to flow


class CsvOutput:
    """The export's CSV going into its sink: rows are encoded here, in the writer's thread."""

    def __init__(self, sink: Sink, dialect: Dialect) -> None:
        self.sink = sink
        self.dialect = dialect

    def open_with_header(self, columns: Sequence[str]) -> bytes:
        self.sink.open()
        header = encode_header(columns, self.dialect)
        self.sink.write(header)
        return header

    def resume(self, at: int) -> None:
        self.sink.open(resume_at=at)

    def write_boxed(self, box: list[Batch]) -> bytes:
        """Encode (unless COPY did) and write ``box.pop()``; returns the CSV bytes (for the
        gzip copy). The batch is popped here so that it is freed in this worker thread."""
        batch = box.pop()
        data = batch.data if isinstance(batch, CopyBlock) else encode_rows(batch, self.dialect)
        self.sink.write(data)
        return data


class GzipOutput:
    """The gzip copy of the CSV, made while the export runs so downloads need not compress.

    isal's igzip deflate: about 4 times zlib's speed at a like ratio, and it releases the
    GIL while it works, so it runs beside the CSV writer on the other core.

    One gzip member, whatever happens: the header is written here, the body is raw deflate,
    and the trailer (CRC-32 and length of the CSV) is written at the end from figures kept
    here. A checkpoint is a full flush: the deflate stream is byte-aligned there and owes
    nothing to what came before, so a later attempt can cut the file there and go on with
    a compressor of its own, given the CRC so far (kept in the checkpoint). Some clients
    (curl --compressed, httpx) read only the first member of a multi-member gzip file.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._deflate = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, RAW_DEFLATE)
        self.crc = 0
        self.size = 0

    def open(self, resume: Checkpoint | None = None) -> None:
        if resume is None:
            self.sink.open()
            self.sink.write(GZIP_HEADER)
            return
        self.sink.open(resume_at=resume.gzip_bytes)
        self.crc, self.size = resume.gzip_crc, resume.csv_bytes

    def write(self, data: bytes) -> None:
        self.crc = isal_zlib.crc32(data, self.crc)
        self.size += len(data)
        self.sink.write(self._deflate.compress(data))

    def checkpoint(self) -> int | None:
        """Flush the deflate stream to a point a later attempt can continue from, and make
        the file durable up to there; returns its length (None: not durable yet)."""
        self.sink.write(self._deflate.flush(isal_zlib.Z_FULL_FLUSH))
        return self.sink.sync()

    def commit(self) -> int:
        self.sink.write(self._deflate.flush(isal_zlib.Z_FINISH))
        self.sink.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))
        return self.sink.commit()


_niced = threading.local()


def _background(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn``, run at a lower CPU priority (nice +EXPORT_THREAD_NICE) in its worker thread.

    On two cores, two exports' threads and their PostgreSQL backends want more CPU than
    there is; the event loop thread, at normal priority, then wins the CPU when it wakes,
    which keeps /health and the API answering quickly (bench/health.py).
    """

    def run(*args: Any) -> T:
        if not getattr(_niced, "done", False):
            lower_thread_priority()
            _niced.done = True
        return fn(*args)

    return run


def lower_thread_priority() -> None:
    """Run the calling thread at nice +EXPORT_THREAD_NICE from now on (Linux sets it per
    thread; elsewhere nothing happens)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), EXPORT_THREAD_NICE)


async def run_cancellable(fn: Callable[..., T], *args: Any, cancel: Callable[[], None]) -> T:
    """Run blocking ``fn(*args)`` in a worker thread; on cancellation, make it return.

    When the surrounding scope is cancelled, ``cancel()`` is called (in another thread)
    to make ``fn`` return early, e.g. by cancelling its query on the server, and only
    once ``fn`` has really returned does ``Cancelled`` propagate, so the caller may then
    close what ``fn`` was using.
    """
    token = trio.lowlevel.current_trio_token()
    finished = trio.Event()
    # Whether fn started, decided under a lock: a call cancelled before its thread picked
    # it up must never start later, on a connection the caller is about to close.
    lock = threading.Lock()
    state = {"started": False, "withdrawn": False}

    def work() -> T:
        with lock:
            if state["withdrawn"]:
                raise RuntimeError("withdrawn")  # never seen: the caller has moved on
            state["started"] = True
        try:
            return fn(*args)
        finally:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finished.set)

    try:
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    except trio.Cancelled:
        with lock:
            started, state["withdrawn"] = state["started"], True
        if started:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(cancel)
                with trio.move_on_after(CANCEL_GRACE):
                    await finished.wait()
                if not finished.is_set():
                    log.error(
                        "%s did not return %.0f s after its cancel",
                        getattr(fn, "__qualname__", fn),
                        CANCEL_GRACE,
                    )
        raise


def open_text_connection(conninfo: str, application_name: str) -> psycopg.Connection[Any]:
    """A connection whose rows are tuples of PostgreSQL's text output, as bytes."""
    conn = psycopg.connect(
        conninfo,
        autocommit=False,  # a server-side cursor lives in a transaction
        context=TEXT_ADAPTERS,
        row_factory=tuple_row,
        application_name=application_name,
        connect_timeout=10,
        # UTC and ISO dates make the text of timestamps independent of the server's
        # settings; SQL_ASCII makes the server send its UTF-8 bytes unconverted.
        options="-c TimeZone=UTC -c DateStyle=ISO,MDY -c statement_timeout=0",
        client_encoding="SQL_ASCII",
    )
    # Every range of ids of the export is read in this one transaction: one snapshot.
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    encoding = conn.info.parameter_status("server_encoding")
    if encoding != "UTF8":
        conn.close()
        raise RuntimeError(f"the database's encoding is {encoding!r}; exports need a UTF8 database")
    return conn


def _estimate_rows(conn: psycopg.Connection[Any], select: Select) -> int:
    """The planner's row estimate for the export: free, and exact enough for a progress bar."""
    query, params = select
    row = conn.execute(psycopg.sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query), params).fetchone()
    assert row is not None
    plan = json.loads(row[0])
    return int(plan[0]["Plan"]["Plan Rows"])


def batch_size(batch: Batch) -> int:
    return batch.rows if isinstance(batch, CopyBlock) else len(batch)


def _max_id(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM users").fetchone()
    assert row is not None
    return int(row[0])


def id_ranges(after: int, last: int, step: int) -> list[IdRange]:
    """``after < id <= last`` in consecutive ranges of ``step`` ids."""
    return [IdRange(low, min(low + step, last)) for low in range(after, last, step)]


class RowSource:
    """The export's rows, one range of ids at a time, from a server-side cursor or COPY.

    The cursor reads on the export's connection. COPY is read by a ``CopyReader`` (asyncpg,
    on a connection of its own in the export's snapshot), started with the first range;
    ``close`` ends it.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        request: ExportRequest,
        row_source: str,
        batch_rows: int,
        *,
        conninfo: str,
        application_name: str,
    ) -> None:
        self.conn, self.request, self.copy = conn, request, row_source == "copy"
        self.batch_rows = batch_rows
        self.conninfo, self.application_name = conninfo, application_name
        self.cancel: Callable[[], None] = conn.cancel_safe
        # The cursor's statement is built once; COPY takes no parameters, so its bounds
        # are written into each range's statement.
        self.select = export_select(request, ids=IdRange(0, 0))[0]
        self._cursor: psycopg.ServerCursor[Any] | None = None
        self._reader: CopyReader | None = None

    async def open(self, ids: IdRange) -> Callable[[], Batch]:
        """Start the range's query; returns the blocking call that reads its next batch."""
        if self.copy:
            reader = self._reader or await self._start_reader()
            select, _ = export_select(self.request, inline=True, ids=ids)
            reader.open(
                select.as_string(self.conn), self.request.delimiter, self.request.quote_char
            )

            def read_block() -> Batch:
                rows, data = reader.read()
                return CopyBlock(data, rows)

            return read_block
        if self._cursor is not None:
            await run_cancellable(self._cursor.close, cancel=self.cancel)
        params = {**export_select(self.request, ids=ids)[1]}
        self._cursor = cursor = self.conn.cursor(name="export")
        await run_cancellable(cursor.execute, self.select, params, cancel=self.cancel)
        return functools.partial(cursor.fetchmany, self.batch_rows)

    async def _start_reader(self) -> CopyReader:
        # Imported here: asyncpg (4 MB) only for an export that reads COPY.
        from exporter.copy_source import CopyReader, connect_arguments

        row = await run_cancellable(
            lambda: self.conn.execute("SELECT pg_export_snapshot()").fetchone(),
            cancel=self.cancel,
        )
        assert row is not None
        snapshot = row[0].decode() if isinstance(row[0], bytes) else str(row[0])
        connect = connect_arguments(self.conninfo, self.application_name)
        self._reader = reader = CopyReader(connect, snapshot, self.batch_rows)
        self.cancel = reader.cancel
        await run_cancellable(reader.start, cancel=reader.cancel)
        return reader

    def close(self) -> None:
        """End the COPY reader's connection and thread, if it was started (blocking)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()


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
                batch = await run_cancellable(_background(fetch), cancel=source.cancel)
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
            data = await trio.to_thread.run_sync(_background(csv.write_boxed), box)
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
                await trio.to_thread.run_sync(_background(gz.write), item)


async def export_csv(
    conninfo: str,
    request: ExportRequest,
    storage: ExportStorage,
    export_id: uuid.UUID,
    *,
    progress: Progress,
    batch_rows: int,
    channel_batches: int,
    gzip: bool = True,
    row_source: str = "cursor",
    application_name: str = "exporter",
    resume: Checkpoint | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    checkpoint_interval: float = 5.0,
    keep_partial: bool = False,
) -> int:
    """Export ``request`` into ``storage`` as the export ``export_id``; returns the CSV's size.

    ``row_source``: ``cursor`` (a server-side cursor, values encoded here) or ``copy``
    (``COPY … TO STDOUT`` writes the CSV lines): the same bytes. Every ``checkpoint_interval``
    seconds (at a range's end) the files are made durable and ``on_checkpoint`` told how
    far; ``resume`` continues from such a checkpoint (``CannotResume`` if its files are
    not there). On failure the partial files are removed, or kept with ``keep_partial``.
    """
    if request.neutralize_formulas:
        row_source = "cursor"  # COPY's lines would have to be parsed again to change them
    dialect = Dialect.of(request.delimiter, request.quote_char, request.neutralize_formulas)
    csv = CsvOutput(storage.sink(export_id), dialect)
    gz = GzipOutput(storage.sink(export_id, gzip=True)) if gzip else None
    conn = await trio.to_thread.run_sync(open_text_connection, conninfo, application_name)
    cancel_query = conn.cancel_safe
    source = RowSource(
        conn,
        request,
        row_source,
        batch_rows,
        conninfo=conninfo,
        application_name=application_name,
    )
    committed = False
    try:
        progress.total_rows = await run_cancellable(
            _estimate_rows, conn, export_select(request), cancel=cancel_query
        )
        # One snapshot for every range: the ranges read the table as it was at the start.
        last_id = await run_cancellable(_max_id, conn, cancel=cancel_query)
        header = await _open_outputs(csv, gz, request.columns, resume)
        if resume is None:
            progress.bytes_written = len(header)
        else:
            progress.processed_rows, progress.bytes_written = resume.rows, resume.csv_bytes
        progress.started_at = time.monotonic()

        first = 0 if resume is None else resume.last_id
        await _copy_rows(
            source,
            id_ranges(first, last_id, batch_rows * RANGE_BATCHES),
            csv,
            gz,
            header,
            channel_batches=channel_batches,
            checkpoints=Checkpoints(checkpoint_interval, on_checkpoint),
            progress=progress,
        )
        progress.total_rows = progress.processed_rows  # the estimate has served its purpose
        # The gzip copy is committed first: once the CSV is in place, everything is.
        if gz is not None:
            await trio.to_thread.run_sync(gz.commit)
        size = await trio.to_thread.run_sync(csv.sink.commit)
        committed = True
        return size
    finally:
        with trio.CancelScope(shield=True):
            try:
                if not committed:
                    for sink in (csv.sink, None if gz is None else gz.sink):
                        if sink is not None:
                            end = sink.close if keep_partial else sink.discard
                            # A full disk may fail the close's last flush: the next sink
                            # and the connection are closed all the same.
                            with contextlib.suppress(OSError):
                                await trio.to_thread.run_sync(end)
            finally:
                # Closing ends the transactions and the backends with them.
                await trio.to_thread.run_sync(source.close)
                await trio.to_thread.run_sync(conn.close)


async def _copy_rows(
    source: RowSource,
    ranges: list[IdRange],
    csv: CsvOutput,
    gz: GzipOutput | None,
    header: bytes,
    *,
    channel_batches: int,
    checkpoints: Checkpoints,
    progress: Progress,
) -> None:
    """The reader, the writer and (for a gzip copy) the compressor, joined by channels."""
    send_rows, receive_rows = trio.open_memory_channel[RowItem](channel_batches)
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


async def _open_outputs(
    csv: CsvOutput, gz: GzipOutput | None, columns: Sequence[str], resume: Checkpoint | None
) -> bytes:
    """Open the files, or continue them at the checkpoint; returns the header written."""
    if resume is None:
        if gz is not None:
            await trio.to_thread.run_sync(gz.open)
        return await trio.to_thread.run_sync(csv.open_with_header, columns)
    if gz is not None:
        if not resume.gzip_bytes:
            raise CannotResume("the checkpoint has no gzip copy to continue")
        await trio.to_thread.run_sync(gz.open, resume)
    await trio.to_thread.run_sync(csv.resume, resume.csv_bytes)
    return b""
