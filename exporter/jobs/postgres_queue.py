"""The job queue in PostgreSQL: the ``export_jobs`` table that every process shares.

Each transition is one SQL statement with a name, kept together below, and every one that
a running job's owner makes names the owner in its ``WHERE`` (``exporter.jobs.queue`` has
the rules). A ``NOTIFY`` on the ``exporter_jobs`` channel tells the other processes of new
work, of a cancel request and of a job's end (``exporter.jobs.notifications`` listens).
docs/ARCHITECTURE.md tells the protocol and its failure cases.

Queries go through psycopg's ``AsyncConnection`` on an asyncio loop that trio-asyncio runs
inside trio (``exporter.process`` opens it around the whole process), so a slow or absent
database delays only the request that waits on it, never ``/health`` or a running export.
The queue keeps one connection, opened on first use and opened again after it broke.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import trio_asyncio
import psycopg
import psycopg.waiting
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from exporter.core.errors import QueueError, QueueUnavailable
from exporter.core.model import Checkpoint, ExportRequest, ExportStatus, JobRecord
from exporter.export.connection import libpq_options
from exporter.jobs.notifications import CHANNEL, Notifications
from exporter.jobs.queue import Claim, Notice

# psycopg binds asyncio.get_running_loop when first imported, and trio-asyncio replaces that
# function: imported the other way round, every query here fails with "no running event
# loop". A clear message at import beats that mystery at the first request.
if psycopg.waiting.get_running_loop is not asyncio.get_running_loop:  # type: ignore[attr-defined]
    raise ImportError("exporter.jobs.postgres_queue: trio_asyncio must be imported before psycopg")

__all__ = ["PostgresQueue"]

P = ParamSpec("P")
R = TypeVar("R")

COLUMNS = (
    "id, status, request, error, processed_rows, total_rows, bytes_written, file_size,"
    " created_at, started_at, completed_at, expires_at, owner, attempt, cancel_requested,"
    " checkpoint_rows, checkpoint_last_id, checkpoint_csv_bytes, checkpoint_gzip_bytes,"
    " checkpoint_gzip_crc, resumed_from_rows, checkpoint_last_key"
)
# The same, qualified, for statements that join the table to itself.
J_COLUMNS = ", ".join(f"j.{c.strip()}" for c in COLUMNS.split(","))

# -- the statements ----------------------------------------------------------------------

INSERT = (
    "WITH queued AS ("
    # The database's clock orders the queue, whichever process's clock is off.
    "  INSERT INTO export_jobs (id, status, request, created_at)"
    "  SELECT %(id)s, 'pending', %(request)s, now()"
    # Every job waits a moment to be claimed: one may always wait.
    "  WHERE (SELECT count(*) FROM export_jobs WHERE status = 'pending')"
    "   < greatest(%(max)s, 1)"
    "  RETURNING id, created_at)"
    f" SELECT created_at, pg_notify('{CHANNEL}', 'new:' || id) FROM queued"
)
# FOR UPDATE SKIP LOCKED: processes claiming at once each get another job, and none waits
# for another's claim.
CLAIM = (
    "WITH next AS ("
    "  SELECT id, status AS was FROM export_jobs"
    "  WHERE status = 'pending'"
    "     OR (status = 'processing' AND (lease_until IS NULL OR lease_until < now())"
    "         AND NOT id = ANY(%(skip)s))"
    "  ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
    " UPDATE export_jobs j SET status = 'processing', owner = %(owner)s,"
    "  lease_until = now() + %(lease)s,"
    "  attempt = CASE WHEN next.was = 'pending' THEN greatest(j.attempt, 1)"
    "                 ELSE j.attempt + 1 END,"
    "  started_at = coalesce(j.started_at, now()), updated_at = now()"
    f" FROM next WHERE j.id = next.id RETURNING {J_COLUMNS}, next.was"
)
RENEW = (
    "UPDATE export_jobs SET lease_until = now() + %s"
    " WHERE id = ANY(%s) AND owner = %s AND status = 'processing'"
    " RETURNING id, cancel_requested"
)
RELEASE = (
    "UPDATE export_jobs SET status = 'pending', owner = NULL, lease_until = NULL,"
    " updated_at = now() WHERE id = %s AND owner = %s AND status = 'processing'"
    f" RETURNING id, pg_notify('{CHANNEL}', 'new:' || id)"
)
START = (
    "UPDATE export_jobs SET resumed_from_rows = %s, processed_rows = %s,"
    " bytes_written = %s, total_rows = %s, updated_at = now()"
    " WHERE id = %s AND owner = %s AND status = 'processing' RETURNING id"
)
SAVE_PROGRESS = (
    "UPDATE export_jobs SET processed_rows = %s, bytes_written = %s, total_rows = %s,"
    " updated_at = now() WHERE id = %s AND owner = %s AND status = 'processing'"
    " RETURNING id"
)
CHECKPOINT = (
    "UPDATE export_jobs SET checkpoint_rows = %s, checkpoint_last_id = %s,"
    " checkpoint_csv_bytes = %s, checkpoint_gzip_bytes = %s, checkpoint_gzip_crc = %s,"
    " checkpoint_last_key = %s, updated_at = now()"
    " WHERE id = %s AND owner = %s AND status = 'processing' RETURNING id"
)
FORGET_CHECKPOINT = (
    "UPDATE export_jobs SET checkpoint_rows = 0, checkpoint_last_id = NULL,"
    " checkpoint_last_key = NULL,"
    " checkpoint_csv_bytes = 0, checkpoint_gzip_bytes = 0, checkpoint_gzip_crc = 0"
    " WHERE id = %s AND owner = %s"
)
FINISH = (
    "UPDATE export_jobs SET status = %(status)s, error = %(error)s,"
    " processed_rows = %(processed_rows)s, total_rows = %(total_rows)s,"
    " bytes_written = %(bytes_written)s, file_size = %(file_size)s,"
    " completed_at = %(completed_at)s, expires_at = %(expires_at)s,"
    " owner = NULL, lease_until = NULL, updated_at = now()"
    " WHERE id = %(id)s AND owner = %(owner)s AND status = 'processing'"
    f" RETURNING id, pg_notify('{CHANNEL}', 'ended:' || id)"
)
REQUEST_CANCEL = (
    "WITH old AS (SELECT id, status FROM export_jobs WHERE id = %s FOR UPDATE)"
    " UPDATE export_jobs j SET"
    "  cancel_requested = (old.status = 'processing'),"
    "  status = CASE WHEN old.status = 'pending' THEN 'cancelled' ELSE old.status END,"
    "  completed_at = CASE WHEN old.status = 'pending' THEN now() ELSE j.completed_at END,"
    "  updated_at = now()"
    f" FROM old WHERE j.id = old.id RETURNING {J_COLUMNS}, old.status AS was,"
    f" pg_notify('{CHANNEL}', CASE WHEN old.status = 'pending' THEN 'ended:'"
    "   ELSE 'cancel:' END || j.id)"
)
WITHDRAW = (
    "UPDATE export_jobs SET status = 'cancelled', updated_at = now()"
    " WHERE id = %s AND status = 'completed' RETURNING id"
)
MARK_EXPIRED = (
    "UPDATE export_jobs SET status = 'expired', updated_at = now()"
    " WHERE id = ANY(%s) AND status = 'completed'"
)
GET = f"SELECT {COLUMNS} FROM export_jobs WHERE id = %s"
QUEUE_POSITION = (
    "SELECT count(*) AS ahead FROM export_jobs WHERE status = 'pending'"
    " AND (created_at, id) < (%s, %s)"
)
COUNTS = (
    "SELECT count(*) FILTER (WHERE status = 'processing') AS running,"
    " count(*) FILTER (WHERE status = 'pending') AS queued"
    " FROM export_jobs WHERE status IN ('pending', 'processing')"
)
STATUSES = "SELECT id, status FROM export_jobs WHERE id = ANY(%s)"
RECENT = f"SELECT {COLUMNS} FROM export_jobs ORDER BY created_at DESC LIMIT %s"
DUE_TO_EXPIRE = "SELECT id FROM export_jobs WHERE status = 'completed' AND expires_at <= now()"


def _aio(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Make an asyncio coroutine function awaitable from trio."""
    return trio_asyncio.aio_as_trio(fn)  # type: ignore[no-any-return]


def _lease(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)


def _record(row: dict[str, Any]) -> JobRecord:
    checkpoint = None
    if row["checkpoint_last_key"] is not None or row["checkpoint_last_id"] is not None:
        checkpoint = Checkpoint(
            rows=row["checkpoint_rows"],
            last_id=row["checkpoint_last_id"],
            last_key=tuple(row["checkpoint_last_key"] or ()),
            csv_bytes=row["checkpoint_csv_bytes"],
            gzip_bytes=row["checkpoint_gzip_bytes"],
            gzip_crc=row["checkpoint_gzip_crc"],
        )
    names: tuple[str, ...] = ("id", "error", "processed_rows", "total_rows", "bytes_written")
    names += ("file_size",)
    names += ("created_at", "started_at", "completed_at", "expires_at", "owner", "attempt")
    names += ("cancel_requested", "resumed_from_rows")
    return JobRecord(
        request=ExportRequest.from_json(row["request"]),
        status=ExportStatus(row["status"]),
        checkpoint=checkpoint,
        **{name: row[name] for name in names},
    )


class PostgresQueue:
    """``JobQueue`` on the ``export_jobs`` table of the database ``conninfo`` names."""

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
                options=libpq_options(),
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
        """Run one statement; ``QueueUnavailable`` when the database cannot answer,
        ``QueueError`` when the statement fails."""
        try:
            return await _aio(self._query)(query, params)
        except psycopg.OperationalError as exc:
            raise QueueUnavailable(str(exc).strip() or type(exc).__name__) from exc
        except psycopg.Error as exc:
            raise QueueError(str(exc).strip() or type(exc).__name__) from exc

    async def _changed(self, query: str, params: Any) -> bool:
        return bool(await self.query(query, params))

    async def ping(self) -> None:
        await self.query("SELECT 1")

    async def close(self) -> None:
        await _aio(self._close)()

    async def listen(
        self, on_notice: Callable[[Notice], None], on_reconnect: Callable[[], None]
    ) -> None:
        await Notifications(self._conninfo).run(on_notice, on_reconnect)

    # -- transitions ---------------------------------------------------------------------

    async def insert(self, record: JobRecord, *, max_queued: int) -> bool:
        params = {"id": record.id, "request": Jsonb(record.request.to_json()), "max": max_queued}
        rows = await self.query(INSERT, params)
        if rows:
            record.created_at = rows[0]["created_at"]
        return bool(rows)

    async def claim(
        self, owner: str, lease_seconds: float, skip: list[uuid.UUID] | None = None
    ) -> Claim | None:
        params = {"owner": owner, "lease": _lease(lease_seconds), "skip": skip or []}
        rows = await self.query(CLAIM, params)
        if not rows:
            return None
        return Claim(_record(rows[0]), taken_over=rows[0]["was"] == "processing")

    async def renew(
        self, owner: str, job_ids: list[uuid.UUID], lease_seconds: float
    ) -> dict[uuid.UUID, bool]:
        rows = await self.query(RENEW, (_lease(lease_seconds), job_ids, owner))
        return {row["id"]: row["cancel_requested"] for row in rows}

    async def release(self, owner: str, job_id: uuid.UUID) -> bool:
        return await self._changed(RELEASE, (job_id, owner))

    async def start(self, owner: str, record: JobRecord) -> bool:
        figures = (record.resumed_from_rows, record.processed_rows, record.bytes_written)
        return await self._changed(START, (*figures, record.total_rows, record.id, owner))

    async def save_progress(self, owner: str, record: JobRecord) -> bool:
        figures = (record.processed_rows, record.bytes_written, record.total_rows)
        return await self._changed(SAVE_PROGRESS, (*figures, record.id, owner))

    async def checkpoint(self, owner: str, job_id: uuid.UUID, checkpoint: Checkpoint) -> bool:
        at = (checkpoint.rows, checkpoint.last_id, checkpoint.csv_bytes, checkpoint.gzip_bytes)
        key = Jsonb(list(checkpoint.last_key))
        return await self._changed(CHECKPOINT, (*at, checkpoint.gzip_crc, key, job_id, owner))

    async def forget_checkpoint(self, owner: str, job_id: uuid.UUID) -> None:
        await self.query(FORGET_CHECKPOINT, (job_id, owner))

    async def finish(self, owner: str, record: JobRecord) -> bool:
        names = (
            *("status", "error", "processed_rows", "total_rows", "bytes_written"),
            *("file_size", "completed_at", "expires_at", "id"),
        )
        params = {name: getattr(record, name) for name in names}
        return await self._changed(FINISH, {**params, "owner": owner})

    async def request_cancel(self, job_id: uuid.UUID) -> tuple[JobRecord, ExportStatus] | None:
        rows = await self.query(REQUEST_CANCEL, (job_id,))
        if not rows:
            return None
        return _record(rows[0]), ExportStatus(rows[0]["was"])

    async def withdraw(self, job_id: uuid.UUID) -> bool:
        return await self._changed(WITHDRAW, (job_id,))

    async def mark_expired(self, job_ids: list[uuid.UUID]) -> None:
        await self.query(MARK_EXPIRED, (job_ids,))

    # -- questions -----------------------------------------------------------------------

    async def get(self, job_id: uuid.UUID) -> JobRecord | None:
        rows = await self.query(GET, (job_id,))
        return _record(rows[0]) if rows else None

    async def queue_position(self, record: JobRecord) -> int:
        rows = await self.query(QUEUE_POSITION, (record.created_at, record.id))
        return int(rows[0]["ahead"]) + 1

    async def counts(self) -> dict[str, int]:
        rows = await self.query(COUNTS)
        return {"running": int(rows[0]["running"]), "queued": int(rows[0]["queued"])}

    async def statuses(self, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, ExportStatus]:
        rows = await self.query(STATUSES, (job_ids,))
        return {row["id"]: ExportStatus(row["status"]) for row in rows}

    async def recent(self, limit: int) -> list[JobRecord]:
        return [_record(row) for row in await self.query(RECENT, (limit,))]

    async def due_to_expire(self) -> list[uuid.UUID]:
        return [row["id"] for row in await self.query(DUE_TO_EXPIRE)]
