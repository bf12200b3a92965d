"""The ``export_jobs`` table: job state, and the queue every process shares.

Each transition of a job is one SQL statement with a name (``insert``, ``claim``,
``renew``, ``release``, ``checkpoint``, ``finish``, ``request_cancel`` …), and every one
that a running job's owner makes names the owner in its ``WHERE``: a process that lost its
lease can change nothing of the job any more. A ``NOTIFY`` on the ``exporter_jobs`` channel
tells the other processes of new work, of a cancel request and of a job's end
(``Notifications`` listens). docs/ARCHITECTURE.md tells the protocol and its failure cases.

Queries go through psycopg's ``AsyncConnection`` on an asyncio loop that trio-asyncio runs
inside trio (``server.run_server`` opens it around the whole server), so a slow or absent
database delays only the request that waits on it, never ``/health`` or a running export.
The store keeps one connection, opened on first use and opened again after it broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import trio_asyncio
import psycopg
import psycopg.waiting
import trio
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from exporter.request import ExportRequest
from exporter.states import Checkpoint, ExportStatus

# psycopg binds asyncio.get_running_loop when first imported, and trio-asyncio replaces that
# function: imported the other way round, every query here fails with "no running event
# loop". A clear message at import beats that mystery at the first request.
if psycopg.waiting.get_running_loop is not asyncio.get_running_loop:  # type: ignore[attr-defined]
    raise ImportError("exporter.store: trio_asyncio must be imported before psycopg")

P = ParamSpec("P")
R = TypeVar("R")


class StoreUnavailable(Exception):
    """The job database cannot be reached (down, unreachable, or the connection broke)."""


# The one NOTIFY channel; payloads are "<what>:<export id>" (see Notice).
CHANNEL = "exporter_jobs"


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
    # The queue's columns: who runs it, which attempt this is, how far it got durably.
    owner: str | None = None
    attempt: int = 0
    cancel_requested: bool = False
    checkpoint: Checkpoint | None = None
    resumed_from_rows: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """A job a process has just claimed, and whether it took it over from a dead owner."""

    record: JobRecord
    taken_over: bool


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aio(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Make an asyncio coroutine function awaitable from trio."""
    return trio_asyncio.aio_as_trio(fn)  # type: ignore[no-any-return]


_COLUMNS = (
    "id, status, request, error, processed_rows, total_rows, bytes_written, file_size,"
    " created_at, started_at, completed_at, expires_at, owner, attempt, cancel_requested,"
    " checkpoint_rows, checkpoint_last_id, checkpoint_csv_bytes, checkpoint_gzip_bytes,"
    " checkpoint_gzip_crc,"
    " resumed_from_rows"
)
# The same, qualified, for statements that join the table to itself.
_J_COLUMNS = ", ".join(f"j.{c.strip()}" for c in _COLUMNS.split(","))


def _record(row: dict[str, Any]) -> JobRecord:
    checkpoint = None
    if row["checkpoint_last_id"] is not None:
        checkpoint = Checkpoint(
            rows=row["checkpoint_rows"],
            last_id=row["checkpoint_last_id"],
            csv_bytes=row["checkpoint_csv_bytes"],
            gzip_bytes=row["checkpoint_gzip_bytes"],
            gzip_crc=row["checkpoint_gzip_crc"],
        )
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
        owner=row["owner"],
        attempt=row["attempt"],
        cancel_requested=row["cancel_requested"],
        checkpoint=checkpoint,
        resumed_from_rows=row["resumed_from_rows"],
    )


def _lease(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)


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

    # -- the queue's statements -------------------------------------------------------

    async def insert(self, record: JobRecord, *, max_queued: int) -> bool:
        """Queue a new job, unless ``max_queued`` jobs wait already (then False).

        The limit counts every process's waiting jobs: the queue is this table.
        """
        rows = await self.query(
            "WITH queued AS ("
            # The database's clock orders the queue, whichever process's clock is off.
            "  INSERT INTO export_jobs (id, status, request, created_at)"
            "  SELECT %(id)s, 'pending', %(request)s, now()"
            # Every job waits a moment to be claimed: one may always wait.
            "  WHERE (SELECT count(*) FROM export_jobs WHERE status = 'pending')"
            "   < greatest(%(max)s, 1)"
            "  RETURNING id, created_at)"
            f" SELECT created_at, pg_notify('{CHANNEL}', 'new:' || id) FROM queued",
            {
                "id": record.id,
                "request": Jsonb(record.request.to_json()),
                "max": max_queued,
            },
        )
        if rows:
            record.created_at = rows[0]["created_at"]
        return bool(rows)

    async def claim(
        self, owner: str, lease_seconds: float, skip: list[uuid.UUID] | None = None
    ) -> Claim | None:
        """Take the oldest job that waits, or whose owner's lease has run out.

        ``FOR UPDATE SKIP LOCKED``: processes claiming at once each get another job, and
        none waits for another's claim. A job handed back keeps its attempt; a first start
        or a takeover counts one more. ``skip``: jobs the caller ended but could not record
        yet (it must not take them over from itself).
        """
        rows = await self.query(
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
            f" FROM next WHERE j.id = next.id RETURNING {_J_COLUMNS}, next.was",
            {"owner": owner, "lease": _lease(lease_seconds), "skip": skip or []},
        )
        if not rows:
            return None
        return Claim(_record(rows[0]), taken_over=rows[0]["was"] == "processing")

    async def renew(
        self, owner: str, job_ids: list[uuid.UUID], lease_seconds: float
    ) -> dict[uuid.UUID, bool]:
        """Extend the leases of the owner's jobs; which are still its own, and whether a
        cancel has been asked for each. A job missing from the answer is lost."""
        rows = await self.query(
            "UPDATE export_jobs SET lease_until = now() + %s"
            " WHERE id = ANY(%s) AND owner = %s AND status = 'processing'"
            " RETURNING id, cancel_requested",
            (_lease(lease_seconds), job_ids, owner),
        )
        return {row["id"]: row["cancel_requested"] for row in rows}

    async def release(self, owner: str, job_id: uuid.UUID) -> bool:
        """Hand a running job back to the queue (the owner stops): it keeps its attempt
        and its checkpoint, and the next claim continues it."""
        rows = await self.query(
            "UPDATE export_jobs SET status = 'pending', owner = NULL, lease_until = NULL,"
            " updated_at = now() WHERE id = %s AND owner = %s AND status = 'processing'"
            f" RETURNING id, pg_notify('{CHANNEL}', 'new:' || id)",
            (job_id, owner),
        )
        return bool(rows)

    async def start(self, owner: str, record: JobRecord) -> bool:
        """Record what the owner starts from: the rows resumed from and the estimate."""
        rows = await self.query(
            "UPDATE export_jobs SET resumed_from_rows = %s, processed_rows = %s,"
            " bytes_written = %s, total_rows = %s, updated_at = now()"
            " WHERE id = %s AND owner = %s AND status = 'processing' RETURNING id",
            (
                record.resumed_from_rows,
                record.processed_rows,
                record.bytes_written,
                record.total_rows,
                record.id,
                owner,
            ),
        )
        return bool(rows)

    async def save_progress(self, owner: str, record: JobRecord) -> bool:
        """The running figures; False if the job is no longer the owner's."""
        rows = await self.query(
            "UPDATE export_jobs SET processed_rows = %s, bytes_written = %s, total_rows = %s,"
            " updated_at = now() WHERE id = %s AND owner = %s AND status = 'processing'"
            " RETURNING id",
            (record.processed_rows, record.bytes_written, record.total_rows, record.id, owner),
        )
        return bool(rows)

    async def checkpoint(self, owner: str, job_id: uuid.UUID, checkpoint: Checkpoint) -> bool:
        """Record how far the job's files are durable; False if it is no longer ours."""
        rows = await self.query(
            "UPDATE export_jobs SET checkpoint_rows = %s, checkpoint_last_id = %s,"
            " checkpoint_csv_bytes = %s, checkpoint_gzip_bytes = %s, checkpoint_gzip_crc = %s,"
            " updated_at = now()"
            " WHERE id = %s AND owner = %s AND status = 'processing' RETURNING id",
            (
                checkpoint.rows,
                checkpoint.last_id,
                checkpoint.csv_bytes,
                checkpoint.gzip_bytes,
                checkpoint.gzip_crc,
                job_id,
                owner,
            ),
        )
        return bool(rows)

    async def forget_checkpoint(self, owner: str, job_id: uuid.UUID) -> None:
        """The files are not there to resume from: the job starts over from its first row."""
        await self.query(
            "UPDATE export_jobs SET checkpoint_rows = 0, checkpoint_last_id = NULL,"
            " checkpoint_csv_bytes = 0, checkpoint_gzip_bytes = 0, checkpoint_gzip_crc = 0"
            " WHERE id = %s AND owner = %s",
            (job_id, owner),
        )

    async def finish(self, owner: str, record: JobRecord) -> bool:
        """The job's end (completed, failed or cancelled), by its owner; tells every
        process it ended."""
        rows = await self.query(
            "UPDATE export_jobs SET status = %(status)s, error = %(error)s,"
            " processed_rows = %(processed_rows)s, total_rows = %(total_rows)s,"
            " bytes_written = %(bytes_written)s, file_size = %(file_size)s,"
            " completed_at = %(completed_at)s, expires_at = %(expires_at)s,"
            " owner = NULL, lease_until = NULL, updated_at = now()"
            " WHERE id = %(id)s AND owner = %(owner)s AND status = 'processing'"
            f" RETURNING id, pg_notify('{CHANNEL}', 'ended:' || id)",
            {
                "status": record.status,
                "error": record.error,
                "processed_rows": record.processed_rows,
                "total_rows": record.total_rows,
                "bytes_written": record.bytes_written,
                "file_size": record.file_size,
                "completed_at": record.completed_at,
                "expires_at": record.expires_at,
                "id": record.id,
                "owner": owner,
            },
        )
        return bool(rows)

    async def request_cancel(self, job_id: uuid.UUID) -> tuple[JobRecord, ExportStatus] | None:
        """Ask for a job to stop: one that waits is cancelled at once; for a running one
        the request is recorded and its owner told (``NOTIFY``). Returns the job and the
        status it had before; None: no such job."""
        rows = await self.query(
            "WITH old AS (SELECT id, status FROM export_jobs WHERE id = %s FOR UPDATE)"
            " UPDATE export_jobs j SET"
            "  cancel_requested = (old.status = 'processing'),"
            "  status = CASE WHEN old.status = 'pending' THEN 'cancelled' ELSE old.status END,"
            "  completed_at = CASE WHEN old.status = 'pending' THEN now() ELSE j.completed_at END,"
            "  updated_at = now()"
            f" FROM old WHERE j.id = old.id RETURNING {_J_COLUMNS}, old.status AS was,"
            f" pg_notify('{CHANNEL}', CASE WHEN old.status = 'pending' THEN 'ended:'"
            "   ELSE 'cancel:' END || j.id)",
            (job_id,),
        )
        if not rows:
            return None
        return _record(rows[0]), ExportStatus(rows[0]["was"])

    async def withdraw(self, job_id: uuid.UUID) -> bool:
        """A completed export's files were removed on request: it is cancelled now."""
        rows = await self.query(
            "UPDATE export_jobs SET status = 'cancelled', updated_at = now()"
            " WHERE id = %s AND status = 'completed' RETURNING id",
            (job_id,),
        )
        return bool(rows)

    # -- questions --------------------------------------------------------------------

    async def get(self, job_id: uuid.UUID) -> JobRecord | None:
        rows = await self.query(f"SELECT {_COLUMNS} FROM export_jobs WHERE id = %s", (job_id,))
        return _record(rows[0]) if rows else None

    async def queue_position(self, record: JobRecord) -> int:
        """1 for the next job to be claimed, among the waiting jobs of every process."""
        rows = await self.query(
            "SELECT count(*) AS ahead FROM export_jobs WHERE status = 'pending'"
            " AND (created_at, id) < (%s, %s)",
            (record.created_at, record.id),
        )
        return int(rows[0]["ahead"]) + 1

    async def counts(self) -> dict[str, int]:
        """Jobs running and waiting in every process sharing the database."""
        rows = await self.query(
            "SELECT count(*) FILTER (WHERE status = 'processing') AS running,"
            " count(*) FILTER (WHERE status = 'pending') AS queued"
            " FROM export_jobs WHERE status IN ('pending', 'processing')"
        )
        return {"running": int(rows[0]["running"]), "queued": int(rows[0]["queued"])}

    async def statuses(self, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, ExportStatus]:
        rows = await self.query("SELECT id, status FROM export_jobs WHERE id = ANY(%s)", (job_ids,))
        return {row["id"]: ExportStatus(row["status"]) for row in rows}

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


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """What another process said on the channel: ``new`` work, a ``cancel`` request for a
    running job, or a job that ``ended``."""

    what: str
    job_id: uuid.UUID


class Notifications:
    """``LISTEN exporter_jobs`` on a connection of its own, read on the event loop.

    The connection is a plain (blocking) psycopg one, used only through libpq's
    non-blocking calls: wait for its socket with trio, ``consume_input``, take the
    notifications. Nothing blocks, no thread is held. When the connection is lost it is
    made again, and ``on_reconnect`` runs (a notice may have been missed meanwhile: the
    caller looks at the table instead).
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=5, application_name="exporter-listen"
        )
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    async def run(
        self,
        on_notice: Callable[[Notice], None],
        on_reconnect: Callable[[], None],
        retry_delay: float = 1.0,
    ) -> None:

        while True:
            try:
                conn = await trio.to_thread.run_sync(self._connect)
            except psycopg.OperationalError:
                await trio.sleep(retry_delay)
                continue
            try:
                on_reconnect()
                pgconn = conn.pgconn
                while True:
                    await trio.lowlevel.wait_readable(pgconn.socket)
                    pgconn.consume_input()
                    while (notify := pgconn.notifies()) is not None:
                        what, _, raw_id = notify.extra.decode().partition(":")
                        with contextlib.suppress(ValueError):
                            on_notice(Notice(what, uuid.UUID(raw_id)))
            except psycopg.OperationalError:
                pass  # lost: connect again
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(conn.close)
            await trio.sleep(retry_delay)
