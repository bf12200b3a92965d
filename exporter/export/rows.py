"""Where an export's rows come from: a server-side cursor, or COPY in ranges of the key.

The rows are read in key order, so that a checkpoint can say "every row up to this key
is written" and a later attempt can continue after it (``WHERE key > <that key>``).

The cursor reads the whole export in one statement, planned as COPY's would be, and
knows the key of every batch's last row: the key's columns are read with the selected
ones (after them, and cut off before encoding, when they were not selected).

COPY's lines hold no key that can be read back, so COPY reads in ranges of
``range_rows`` rows, one statement per range in the export's one transaction (``WHERE
<filters> AND key > <the last range's last key> ORDER BY key LIMIT range_rows``); a
range's last key is asked of the database (``last_key_select``: for a table an index scan
of the key, far cheaper than the rows), and a range of fewer rows than asked for was the
last. A dataset whose key order needs a sort of everything (``Dataset.ranged`` false),
which every range would repeat, is read by COPY in one statement, without checkpoints.

``RowSource`` opens a statement and hands back the blocking call that reads its next
batch: a cursor's rows, to be encoded, or a ``CopyBlock`` that COPY wrote already.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.jobs.postgres_queue)
import psycopg
from psycopg import sql

from exporter.core.datasets import Dataset
from exporter.core.model import ExportRequest
from exporter.export.csvfmt import Row
from exporter.export.query import export_select, from_item, last_key_select
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
]

# Rows per range, in batches (at the default BATCH_ROWS, 500,000 rows: about two seconds
# of a full export), between checkpoints.
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


def estimate_rows(conn: psycopg.Connection[Any], select: sql.Composable) -> int:
    """The planner's row estimate for a statement: free, and exact enough for a progress
    bar (and for scaling a filtered export's ranges)."""
    statement = sql.SQL("EXPLAIN (FORMAT JSON) {}").format(select)
    row = conn.execute(statement).fetchone()
    assert row is not None
    raw = row[0]
    plan = json.loads(raw if isinstance(raw, (str, bytes)) else json.dumps(raw))
    return int(plan[0]["Plan"]["Plan Rows"])


class RowSource:
    """The export's rows, from a server-side cursor or (one range of the key at a time) COPY.

    The cursor reads on the export's connection. COPY is read by a ``CopyReader`` (asyncpg,
    on a connection of its own in the export's snapshot), started with the first range;
    ``close`` ends it.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        dataset: Dataset,
        request: ExportRequest,
        row_source: str,
        batch_rows: int,
        *,
        conninfo: str,
        application_name: str,
    ) -> None:
        self.conn, self.request, self.copy = conn, request, row_source == "copy"
        self.dataset, self.source = dataset, from_item(conn, dataset, request)
        self.batch_rows = batch_rows
        self.conninfo, self.application_name = conninfo, application_name
        self.cancel: Callable[[], None] = conn.cancel_safe
        # ``ranges``: reads in ranges of the key (COPY, of a ranged dataset); ``keyed``:
        # knows each batch's last key (the cursor). Neither: one COPY, no checkpoints.
        self.ranges = self.copy and dataset.ranged
        self.keyed = not self.copy
        # The key's columns the cursor reads after the selected ones, and where the key is.
        self.hidden = () if self.copy else tuple(k for k in dataset.key if k not in request.columns)
        read = (*request.columns, *self.hidden)
        self.key_at = [] if self.copy else [read.index(k) for k in dataset.key]
        self._last_key: tuple[str, ...] | None = None
        self._cursor: psycopg.ServerCursor[Any] | None = None
        self._reader: CopyReader | None = None

    async def open(self, after: tuple[str, ...] | None, rows: int | None) -> Callable[[], Batch]:
        """Start the statement that reads ``rows`` rows (None: all) after ``after``;
        returns the blocking call that reads its next batch."""
        select = export_select(
            self.dataset, self.request, self.source, after, rows, extra=self.hidden
        )
        if self.copy:
            reader = self._reader or await self._start_reader()
            reader.open(
                select.as_string(self.conn), self.request.delimiter, self.request.quote_char
            )

            def read_block() -> Batch:
                rows, data = reader.read()
                return CopyBlock(data, rows)

            return read_block
        if self._cursor is not None:
            await run_cancellable(self._cursor.close, cancel=self.cancel)
        self._cursor = cursor = self.conn.cursor(name="export")
        await run_cancellable(cursor.execute, select, cancel=self.cancel)
        fetch = functools.partial(cursor.fetchmany, self.batch_rows)
        width = len(self.request.columns)

        def read_rows() -> Batch:
            rows = fetch()
            if rows:
                self._last_key = tuple(_text(rows[-1][at]) for at in self.key_at)
                if self.hidden:
                    rows = [row[:width] for row in rows]
            return rows

        return read_rows

    @property
    def last_key(self) -> tuple[str, ...] | None:
        """The key of the last row the cursor read (None: none yet, or COPY)."""
        return self._last_key

    def find_last_key(self, after: tuple[str, ...] | None, rows: int) -> tuple[str, ...]:
        """The key of the ``rows``-th row after ``after``, asked of the database (blocking)."""
        statement = last_key_select(self.dataset, self.request, self.source, after, rows)
        row = self.conn.execute(statement).fetchone()
        assert row is not None, "the range's last row is gone from the export's snapshot"
        return tuple(_text(value) for value in row)

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


def _text(value: object) -> str:
    """A key's value as the text connection hands it back (bytes), as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
