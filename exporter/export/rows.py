"""Where an export's rows come from: ranges of ids, read by a server-side cursor or COPY.

The rows are read in ranges of ids, in order (``id_ranges``), one query per range in the
export's one transaction, so that a checkpoint can say "every row up to this id is
written" and a later attempt can continue after it. ``RowSource`` opens each range's
query and hands back the blocking call that reads its next batch: a cursor's rows, to be
encoded, or a ``CopyBlock`` that PostgreSQL's COPY wrote already.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.jobs.postgres_queue)
import psycopg

from exporter.core.model import ExportRequest
from exporter.export.csvfmt import Row
from exporter.export.query import IdRange, Select, export_select
from exporter.export.threads import run_cancellable

if TYPE_CHECKING:
    from exporter.export.copy_reader import CopyReader

__all__ = [
    "RANGE_BATCHES",
    "Batch",
    "CopyBlock",
    "RowSource",
    "batch_size",
    "estimate_rows",
    "id_ranges",
    "max_id",
]

# Ids per query, in batches: the rows are read in ranges of ids, in order, so that a
# checkpoint can say "every row up to this id is written" (at the default BATCH_ROWS, 500,000
# ids: about two seconds of a full export).
RANGE_BATCHES = 50


@dataclasses.dataclass(frozen=True, slots=True)
class CopyBlock:
    """CSV lines as COPY wrote them, and how many rows they are (a quoted value may hold a
    newline, so lines cannot be counted afterwards)."""

    data: bytes
    rows: int


# A cursor's rows, to be encoded, or a block COPY wrote.
Batch = Sequence[Row] | CopyBlock


def batch_size(batch: Batch) -> int:
    """How many rows ``batch`` holds."""
    return batch.rows if isinstance(batch, CopyBlock) else len(batch)


def estimate_rows(conn: psycopg.Connection[Any], select: Select) -> int:
    """The planner's row estimate for the export: free, and exact enough for a progress bar."""
    query, params = select
    row = conn.execute(psycopg.sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query), params).fetchone()
    assert row is not None
    plan = json.loads(row[0])
    return int(plan[0]["Plan"]["Plan Rows"])


def max_id(conn: psycopg.Connection[Any]) -> int:
    """The highest id of ``users`` in the connection's snapshot (0 for none): where the
    ranges end."""
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
        from exporter.export.copy_reader import CopyReader, connect_arguments

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
