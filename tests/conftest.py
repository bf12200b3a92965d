"""Shared fixtures: a real PostgreSQL, a real Hypercorn on a loopback port.

The database is the embedded one (started once per session in a temporary folder and
deleted afterwards) unless ``TEST_DATABASE_URL`` names another. Its users table is seeded
with ``TEST_SEED_ROWS`` rows (default 150,000: a full export is tens of MB) by the same
code ``exporter serve`` uses.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter/__init__.py)
import httpx
import psycopg
import pytest
import trio

from exporter.config import Settings
from exporter.embedded import embedded_database
from exporter.query import copy_statement
from exporter.request import ExportRequest
from exporter.schema import apply_schema, seed_users
from exporter.server import run_server

SEED_ROWS = int(os.environ.get("TEST_SEED_ROWS", "150000"))


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        apply_schema(url, "schema")
        seed_users(url, SEED_ROWS)
        apply_schema(url, "indexes")
        yield url
        return
    with (
        tempfile.TemporaryDirectory(prefix="exporter-test-pg-") as folder,
        embedded_database(Path(folder) / "pgdata") as conninfo,
    ):
        apply_schema(conninfo, "schema")
        seed_users(conninfo, SEED_ROWS)
        apply_schema(conninfo, "indexes")
        yield conninfo


def copy_oracle(conninfo: str, request: ExportRequest) -> bytes:
    """What PostgreSQL's own COPY writes for the export's SELECT (SPEC §4)."""
    statement, params = copy_statement(request)
    out = bytearray()
    with (
        psycopg.connect(conninfo, options="-c TimeZone=UTC -c DateStyle=ISO,MDY") as conn,
        conn.cursor().copy(statement, params) as copy,
    ):
        for chunk in copy:
            out += chunk
    return bytes(out)


@pytest.fixture
def oracle(database: str) -> Callable[[ExportRequest], bytes]:
    return functools.partial(copy_oracle, database)


@dataclasses.dataclass
class Server:
    url: str
    settings: Settings
    client: httpx.AsyncClient

    async def create(self, **params: str) -> str:
        """POST an export; returns its id."""
        response = await self.client.post("/exports/csv", params=params)
        assert response.status_code == 202, response.text
        return str(response.json()["exportId"])

    async def status(self, export_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/exports/{export_id}/status")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait_for(
        self, export_id: str, *statuses: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                doc = await self.status(export_id)
                if doc["status"] in statuses:
                    return doc
                await trio.sleep(0.02)


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(
    nursery: trio.Nursery, database: str, tmp_path: Path
) -> AsyncIterator[StartServer]:
    clients: list[httpx.AsyncClient] = []

    async def start(conninfo: str | None = None, **overrides: Any) -> Server:
        """A server on the test database (or ``conninfo``), with settings ``overrides``."""
        conninfo = conninfo or database
        settings = Settings(
            database_url=database,
            export_dir=tmp_path / "exports",
            bind="127.0.0.1:0",
            progress_interval=0.1,
        ).replace(**overrides)
        binds = await nursery.start(
            functools.partial(run_server, settings, conninfo, handle_signals=False)
        )
        headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
        client = httpx.AsyncClient(base_url=binds[0], timeout=30, headers=headers)
        clients.append(client)
        return Server(binds[0], settings, client)

    yield start
    for client in clients:
        await client.aclose()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


def backends(conninfo: str, export_id: str) -> list[tuple[Any, ...]]:
    """The export's database sessions still alive (pg_stat_activity)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, state, query FROM pg_stat_activity WHERE application_name = %s",
            (f"exporter {export_id}",),
        ).fetchall()


class UsersLock:
    """Holds ACCESS EXCLUSIVE on users from another session: a real way to make an
    export's query block inside PostgreSQL for as long as a test needs."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo)
        self.conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


@pytest.fixture
def users_lock(database: str) -> Iterator[Callable[[], UsersLock]]:
    locks: list[UsersLock] = []

    def take() -> UsersLock:
        locks.append(UsersLock(database))
        return locks[-1]

    yield take
    for lock in locks:
        lock.release()


async def wait_until_blocked(conninfo: str, export_id: str, timeout: float = 10.0) -> None:
    """Wait until the export's backend is waiting for a lock."""
    with trio.fail_after(timeout):
        while True:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT 1 FROM pg_stat_activity"
                    " WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (f"exporter {export_id}",),
                ).fetchone()
            if row:
                return
            await trio.sleep(0.02)


async def wait_for_no_backend(conninfo: str, export_id: str, timeout: float = 1.0) -> None:
    """The export's session must be gone from pg_stat_activity within ``timeout``."""
    with trio.fail_after(timeout):
        while backends(conninfo, export_id):
            await trio.sleep(0.02)
