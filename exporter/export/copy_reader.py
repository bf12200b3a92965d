"""The ``copy`` row source: the export's rows as PostgreSQL's own ``COPY … TO STDOUT`` CSV.

An option (``ROW_SOURCE=copy``) beside the default server-side cursor: PostgreSQL
formats the CSV itself, so the service neither builds a Python object per value nor
encodes anything. The blocks go through the same bounded channel to the same writer as
the cursor's batches.

libpq hands COPY's data over one row per call (``PQgetCopyData``), which from Python
means a call, a bytes object and the GIL per row: 10 million of them for a big export,
slower than the cursor and hard on the event loop. asyncpg reads the socket in large
buffers and cuts the CopyData messages out of them in C, handing over everything that
arrived at once: a Python call per buffer, not per row (bench/README.md has the
figures). So this source reads through asyncpg, on an asyncio event loop of its own in a
thread of its own, while psycopg keeps everything else (the job store, the cursor, the
export's other statements):

- **One snapshot.** The asyncpg connection imports the snapshot of the export's psycopg
  transaction (``pg_export_snapshot``, ``SET TRANSACTION SNAPSHOT``): every range reads
  the table as the estimate and ``max(id)`` saw it, as with the cursor.
- **Blocks.** Buffers are gathered into blocks of at least ``block_rows`` lines and
  handed over through a queue of two: when the writer falls behind, the queue fills,
  asyncpg stops reading the socket and PostgreSQL waits. Rows are counted from the
  blocks (their line ends), and made exact at each range's end from COPY's own count
  (a value with a line break in it would otherwise count twice).
- **Cancel.** ``cancel`` cancels the running COPY (asyncpg asks the server to cancel the
  query) from any thread; ``close`` ends the connection and the thread.
- **Errors** become the psycopg exception of their SQLSTATE (QueryCanceled,
  AdminShutdown, ...), or ``OperationalError`` for a lost connection, so they are
  described as a cursor's are.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import re
import threading
from typing import Any

import asyncpg
import psycopg
from psycopg.conninfo import conninfo_to_dict

from exporter.export.connection import SESSION_SETTINGS
from exporter.export.threads import lower_thread_priority

__all__ = ["CopyReader", "connect_arguments"]

# Blocks waiting between the COPY and the reader: the rest waits in PostgreSQL.
QUEUE_BLOCKS = 2
# Seconds a closing connection may take to say goodbye before it is cut.
CLOSE_TIMEOUT = 2.0
# How often (ms) the backend of a running COPY checks that its client is still there.
CHECK_CLIENT_MS = 200
# What pg_export_snapshot() returns, e.g. 00000003-0000001B-1.
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+(-[0-9A-F]+)+")


@dataclasses.dataclass(frozen=True, slots=True)
class _End:
    """A COPY's end: how many rows it sent."""

    rows: int


def connect_arguments(conninfo: str, application_name: str) -> dict[str, Any]:
    """asyncpg's ``connect`` arguments for a libpq connection string (key=value or URI)."""
    params = conninfo_to_dict(conninfo)
    arguments: dict[str, Any] = {
        "host": params.get("host") or params.get("hostaddr"),
        "port": int(str(params["port"])) if params.get("port") else None,
        "user": params.get("user"),
        "password": params.get("password"),
        "database": params.get("dbname"),
        # The cursor's settings: the text of timestamps must not depend on the server's.
        "server_settings": {"application_name": application_name, **SESSION_SETTINGS},
        "timeout": float(params.get("connect_timeout") or 10),
    }
    if params.get("sslmode"):
        arguments["ssl"] = params["sslmode"]
    return {name: value for name, value in arguments.items() if value is not None}


def _as_psycopg(exc: BaseException) -> BaseException:
    """asyncpg's error as psycopg's for the same SQLSTATE (what describe_error knows)."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None)
        try:
            cls = psycopg.errors.lookup(sqlstate) if sqlstate else psycopg.DatabaseError
        except KeyError:
            cls = psycopg.DatabaseError
        return cls(str(exc))
    if isinstance(exc, asyncpg.InterfaceError | OSError | asyncio.TimeoutError):
        return psycopg.OperationalError(f"the COPY connection failed: {exc}")
    return exc


class CopyReader:
    """``COPY … TO STDOUT`` of one range at a time, read by asyncpg on its own loop."""

    def __init__(self, connect: dict[str, Any], snapshot: str, block_rows: int) -> None:
        self._connect_arguments = connect
        self._snapshot = snapshot
        self._block_rows = block_rows
        # Made directly, not by the asyncio policy: trio-asyncio's refuses to make a loop
        # from inside trio (where this is constructed); it runs in a thread of its own.
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self._run_loop, name="copy reader")
        self._conn: asyncpg.Connection | None = None
        self._queue: asyncio.Queue[tuple[int, bytes] | _End | BaseException] | None = None
        self._copy: concurrent.futures.Future[None] | None = None
        self._pending: list[bytes] = []
        self._pending_rows = 0
        self._counted = 0  # rows handed over in this range's blocks so far
        self._ended = False
        self._cut = False  # a COPY was cancelled or failed: the connection is not reusable

    # -- the loop's thread ---------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coroutine: Any, timeout: float | None = None) -> Any:
        """Run ``coroutine`` on the reader's loop and wait for it (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # -- the reader's side (blocking; run in trio's worker threads) ----------------------

    def start(self) -> None:
        """Connect, and begin a transaction in the export's snapshot."""
        self._thread.start()
        try:
            self._call(self._open())
        except BaseException as exc:
            raise _as_psycopg(exc) from exc

    def open(self, select: str, delimiter: str, quote: str) -> None:
        """Start the COPY of one range (``select``: its SELECT, values inline)."""
        self._counted, self._ended = 0, False
        self._copy = asyncio.run_coroutine_threadsafe(
            self._run_copy(select, delimiter, quote), self._loop
        )

    def read(self) -> tuple[int, bytes]:
        """The next block and its rows; ``(0, b"")`` once the range's COPY has ended.

        The rows of a block are its line ends; at the end, a last empty block brings the
        count to COPY's own if they differ (values with line breaks in them).
        """
        assert self._queue is not None, "read before start"
        if self._ended:
            return 0, b""
        item: tuple[int, bytes] | _End | BaseException = self._call(self._queue.get())
        if isinstance(item, BaseException):
            raise _as_psycopg(item) from item
        if isinstance(item, _End):
            self._ended = True
            return item.rows - self._counted, b""
        self._counted += item[0]
        return item

    def cancel(self) -> None:
        """Stop the running COPY (any thread); its ``read`` then raises."""
        copy = self._copy
        if copy is not None and not copy.done():
            self._cut = True
            self._loop.call_soon_threadsafe(copy.cancel)

    def close(self) -> None:
        """End the connection (and with it the backend) and the thread."""
        if self._thread.is_alive():
            self.cancel()  # a COPY still running (the export failed or was cancelled)
            with contextlib.suppress(Exception):
                self._call(self._close(), timeout=CLOSE_TIMEOUT * 2)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    # -- on the loop ---------------------------------------------------------------------

    async def _open(self) -> None:
        lower_thread_priority()  # like the export's other threads
        self._queue = asyncio.Queue(QUEUE_BLOCKS)
        self._conn = conn = await asyncpg.connect(**self._connect_arguments)
        if conn.get_server_version() >= (14,):
            # The backend looks for its client while a query runs (a COPY waiting for a
            # lock, say), and ends once the connection is cut, not when the query would.
            await conn.execute(f"SET client_connection_check_interval = {CHECK_CLIENT_MS}")
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # A literal (SET takes no parameters): the server's own id, checked to be one.
        if not _SNAPSHOT_ID.fullmatch(self._snapshot):
            raise ValueError(f"not a snapshot id: {self._snapshot!r}")
        await conn.execute(f"SET TRANSACTION SNAPSHOT '{self._snapshot}'")

    async def _run_copy(self, select: str, delimiter: str, quote: str) -> None:
        assert self._conn is not None and self._queue is not None
        self._pending, self._pending_rows = [], 0
        try:
            status = await self._conn.copy_from_query(
                select, output=self._take, format="csv", delimiter=delimiter, quote=quote
            )
            if self._pending:
                await self._queue.put((self._pending_rows, b"".join(self._pending)))
            await self._queue.put(_End(int(status.split()[-1])))
        except BaseException as exc:  # handed to the reader, which raises it
            self._cut = True
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(exc)
            if not isinstance(exc, Exception):
                raise

    async def _take(self, data: bytes) -> None:
        """asyncpg's output: what arrived, gathered into blocks of ``block_rows`` lines."""
        assert self._queue is not None
        self._pending.append(data)
        self._pending_rows += data.count(b"\n")
        if self._pending_rows >= self._block_rows:
            block = (self._pending_rows, b"".join(self._pending))
            self._pending, self._pending_rows = [], 0
            await self._queue.put(block)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._cut:
            # Mid-COPY: asyncpg would wait for the server to finish it. Cut: the backend
            # ends at once if it is sending, or within CHECK_CLIENT_MS if it is waiting.
            conn.terminate()
            return
        try:
            await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT)
        except BaseException:
            conn.terminate()
