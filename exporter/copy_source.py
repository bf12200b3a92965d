"""The ``copy`` row source: the export's rows as PostgreSQL's own ``COPY … TO STDOUT`` CSV.

An option (``ROW_SOURCE=copy``) beside the default server-side cursor: PostgreSQL
formats the CSV itself, so the service neither builds a Python object per value nor
encodes anything; about half the export's CPU time (bench/README.md). The blocks it yields
go through the same bounded channel to the same writer as the cursor's batches.

psycopg's ``Copy`` iterator hands over one row per generator step, which costs more than
it saves, and libpq's blocking ``PQgetCopyData`` holds the GIL while it waits (psycopg's C
build does not release it there), freezing the event loop. So this reads with libpq's
non-blocking calls in a tight loop and waits for the socket with ``poll``, which releases
the GIL. Runs in a worker thread, one call at a time, like a cursor's ``fetchmany``.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg import pq


def _result_error(result: pq.abc.PGresult | None, pgconn: pq.abc.PGconn) -> psycopg.Error:
    """The error a failed COPY ended with, as the psycopg exception class of its SQLSTATE
    (QueryCanceled, AdminShutdown, ...), so it is described like a cursor's."""
    if result is not None and result.error_message:
        return psycopg.errors.error_from_result(result)
    return psycopg.OperationalError(pgconn.error_message.decode("utf-8", "replace").strip())


class CopyRows:
    """Reads the CSV lines of one ``COPY … TO STDOUT`` statement, in blocks of whole rows."""

    def __init__(self, conn: psycopg.Connection[Any], statement: bytes) -> None:
        self._pgconn = conn.pgconn
        self._statement = statement
        self._poll = select.poll()
        self._poll.register(self._pgconn.socket, select.POLLIN)
        self.done = False

    def _wait_readable(self) -> None:
        self._poll.poll()  # releases the GIL while it waits
        self._pgconn.consume_input()

    def _next_result(self) -> pq.abc.PGresult | None:
        pgconn = self._pgconn
        while pgconn.is_busy():
            self._wait_readable()
        return pgconn.get_result()

    def start(self) -> None:
        """Send the statement and wait until the server begins to send rows."""
        self._pgconn.send_query(self._statement)
        result = self._next_result()
        if result is None or result.status != pq.ExecStatus.COPY_OUT:
            raise _result_error(result, self._pgconn)

    def read(self, max_rows: int) -> tuple[int, bytes]:
        """Up to ``max_rows`` CSV lines as one block, and how many; ``(0, b"")`` at the end."""
        if self.done:
            return 0, b""
        get = self._pgconn.get_copy_data
        lines: list[memoryview] = []
        while len(lines) < max_rows:
            size, line = get(1)
            if size > 0:
                lines.append(line)
            elif size == 0:  # no whole row buffered yet
                self._wait_readable()
            elif size == -1:  # end of the COPY: its result says whether it succeeded
                self._finish()
                break
            else:
                raise _result_error(None, self._pgconn)
        return len(lines), b"".join(lines)

    def _finish(self) -> None:
        result = self._next_result()
        if result is None or result.status != pq.ExecStatus.COMMAND_OK:
            raise _result_error(result, self._pgconn)
        while self._next_result() is not None:  # libpq's closing None
            pass
        self.done = True
