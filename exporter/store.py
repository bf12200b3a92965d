"""Job state in the ``export_jobs`` table, without ever blocking the event loop.

Queries go through psycopg's ``AsyncConnection`` on an asyncio loop that trio-asyncio runs
inside trio (``server.run_server`` opens it around the whole server), so a slow or absent
database delays only the request that waits on it, never ``/health`` or a running export.
The store keeps one connection, opened on first use and opened again after it broke.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import trio_asyncio
import psycopg
import psycopg.waiting
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from exporter.request import ExportRequest
from exporter.states import LIVE_STATUSES, ExportStatus

# psycopg binds asyncio.get_running_loop when first imported, and trio-asyncio replaces that
# function: imported the other way round, every query here fails with "no running event
# loop". A clear message at import beats that mystery at the first request.
if psycopg.waiting.get_running_loop is not asyncio.get_running_loop:  # type: ignore[attr-defined]
    raise ImportError("exporter.store: trio_asyncio must be imported before psycopg")

P = ParamSpec("P")
R = TypeVar("R")


class StoreUnavailable(Exception):
    """The job database cannot be reached (down, unreachable, or the connection broke)."""


@dataclasses.dataclass(slots=True)
class JobRecord:
    """One export as ``export_jobs`` holds it (and as the status endpoint shows it)."""

    id: uuid.UUID
    request: ExportRequest
    status: ExportStatus = ExportStatus.PENDING
    error: str | None = None
    processed_rows: int = 0
    total_rows: int | None = None
    bytes_written: int = 0
    file_size: int | None = None
    created_at: dt.datetime = dataclasses.field(default_factory=lambda: utcnow())
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aio(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Make an asyncio coroutine function awaitable from trio."""
    return trio_asyncio.aio_as_trio(fn)  # type: ignore[no-any-return]


_COLUMNS = (
    "id, status, request, error, processed_rows, total_rows, bytes_written, file_size, "
    "created_at, started_at, completed_at, expires_at"
)


def _record(row: dict[str, Any]) -> JobRecord:
    return JobRecord(
        id=row["id"],
        request=ExportRequest.from_json(row["request"]),
        status=ExportStatus(row["status"]),
        error=row["error"],
        processed_rows=row["processed_rows"],
        total_rows=row["total_rows"],
        bytes_written=row["bytes_written"],
        file_size=row["file_size"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        expires_at=row["expires_at"],
    )


class JobStore:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=5,
                application_name="exporter-store",
                options="-c TimeZone=UTC",
            )
        return self._conn

    async def _query(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        conn = await self._connection()
        async with conn.cursor() as cursor:
            await cursor.execute(query.encode(), params)
            return await cursor.fetchall() if cursor.description else []

    async def _close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def query(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        """Run one statement; raises ``StoreUnavailable`` when the database cannot answer."""
        try:
            return await _aio(self._query)(query, params)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(str(exc).strip() or type(exc).__name__) from exc

    async def ping(self) -> None:
        """Return once the database answers; ``StoreUnavailable`` if it does not."""
        await self.query("SELECT 1")

    async def close(self) -> None:
        await _aio(self._close)()

    async def save(self, job: JobRecord) -> None:
        """Insert or update the whole row: one statement for every transition."""
        await self.query(
            f"INSERT INTO export_jobs ({_COLUMNS}, updated_at)"
            " VALUES (%(id)s, %(status)s, %(request)s, %(error)s, %(processed_rows)s,"
            " %(total_rows)s, %(bytes_written)s, %(file_size)s, %(created_at)s,"
            " %(started_at)s, %(completed_at)s, %(expires_at)s, now())"
            " ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status,"
            " error = EXCLUDED.error, processed_rows = EXCLUDED.processed_rows,"
            " total_rows = EXCLUDED.total_rows, bytes_written = EXCLUDED.bytes_written,"
            " file_size = EXCLUDED.file_size, started_at = EXCLUDED.started_at,"
            " completed_at = EXCLUDED.completed_at, expires_at = EXCLUDED.expires_at,"
            " updated_at = now()",
            {
                **{f.name: getattr(job, f.name) for f in dataclasses.fields(job)},
                "request": Jsonb(job.request.to_json()),
            },
        )

    async def get(self, job_id: uuid.UUID) -> JobRecord | None:
        rows = await self.query(f"SELECT {_COLUMNS} FROM export_jobs WHERE id = %s", (job_id,))
        return _record(rows[0]) if rows else None

    async def fail_interrupted(self, error: str) -> list[uuid.UUID]:
        """Mark jobs a previous process left pending or processing as failed."""
        rows = await self.query(
            "UPDATE export_jobs SET status = %s, error = %s, completed_at = now(),"
            " updated_at = now() WHERE status = ANY(%s) RETURNING id",
            (ExportStatus.FAILED, error, list(LIVE_STATUSES)),
        )
        return [row["id"] for row in rows]

    async def completed_ids(self) -> set[uuid.UUID]:
        rows = await self.query(
            "SELECT id FROM export_jobs WHERE status = %s", (ExportStatus.COMPLETED,)
        )
        return {row["id"] for row in rows}

    async def recent(self, limit: int) -> list[JobRecord]:
        """The ``limit`` most recently created jobs, newest first."""
        rows = await self.query(
            f"SELECT {_COLUMNS} FROM export_jobs ORDER BY created_at DESC LIMIT %s", (limit,)
        )
        return [_record(row) for row in rows]

    async def due_to_expire(self) -> list[uuid.UUID]:
        """Completed jobs whose ``expires_at`` has passed."""
        rows = await self.query(
            "SELECT id FROM export_jobs WHERE status = %s AND expires_at <= now()",
            (ExportStatus.COMPLETED,),
        )
        return [row["id"] for row in rows]

    async def mark_expired(self, job_ids: list[uuid.UUID]) -> None:
        await self.query(
            "UPDATE export_jobs SET status = %s, updated_at = now()"
            " WHERE id = ANY(%s) AND status = %s",
            (ExportStatus.EXPIRED, job_ids, ExportStatus.COMPLETED),
        )
