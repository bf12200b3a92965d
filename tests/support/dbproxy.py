"""A TCP proxy in front of the test database that a test can cut and restore.

The faults it makes are real ones: while cut, connections to it are refused (nothing
listens on its port) and every connection it carried is closed, exactly what a client
sees when its database server goes away; restored, it listens on the same port again.
"""

from __future__ import annotations

import contextlib
import socket

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DatabaseProxy:
    def __init__(self, conninfo: str, nursery: trio.Nursery) -> None:
        params = conninfo_to_dict(conninfo)
        self._host = str(params.get("host") or "localhost")
        self._port = int(params.get("port") or 5432)
        self._nursery = nursery
        self.port = _free_port()
        # The same database, through the proxy's port on loopback.
        self.conninfo = make_conninfo(conninfo, host="127.0.0.1", port=str(self.port))
        self._scope: trio.CancelScope | None = None

    async def _connect_upstream(self) -> trio.abc.Stream:
        if self._host.startswith("/"):  # a Unix socket folder, as libpq names it
            return await trio.open_unix_socket(f"{self._host}/.s.PGSQL.{self._port}")
        return await trio.open_tcp_stream(self._host, self._port)

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as self._scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            async with trio.open_nursery() as nursery:
                task_status.started()
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client, await self._connect_upstream() as upstream:

            async def pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    async for data in source:
                        await sink.send_all(data)
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, upstream)
                nursery.start_soon(pump, upstream, client)

    async def start(self) -> None:
        """Listen (again): the database is reachable."""
        await self._nursery.start(self._serve)

    def cut(self) -> None:
        """Stop listening and close every connection: the database is gone."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    def reachable(self) -> bool:
        try:
            psycopg.connect(self.conninfo, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True
