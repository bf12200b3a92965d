"""``LISTEN exporter_jobs``: what the processes sharing the queue tell each other.

Payloads are ``"<what>:<export id>"`` (see ``exporter.jobs.queue.Notice``), sent by the
queue's own statements (``pg_notify``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.jobs.postgres_queue)
import psycopg
import trio

from exporter.jobs.queue import Notice

__all__ = ["CHANNEL", "Notifications"]

# The one NOTIFY channel.
CHANNEL = "exporter_jobs"


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
