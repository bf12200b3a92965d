"""Shared fixtures: a real PostgreSQL, a real Hypercorn on a loopback port.

The database is the embedded one (started once per session in a temporary folder and
deleted afterwards) unless ``TEST_DATABASE_URL`` names another. Its users table is seeded
with ``TEST_SEED_ROWS`` rows (default 150,000: a full export is tens of MB) by the same
code ``exporter serve`` uses. Beside it, the gated database (tests/support/) lets a test
stop exports half-way through for as long as it needs.

Helpers that are not fixtures are in tests/support/.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter/jobs/postgres_queue.py)
import httpx
import psycopg
import pytest
import trio
from psycopg import sql

from exporter.core.config import Settings
from exporter.core.datasets import Datasets, load_datasets_file
from exporter.core.model import ExportRequest
from exporter.export.catalog import resolve_datasets
from exporter.process.embedded import embedded_database
from exporter.process.schema import apply_schema, seed_users
from exporter.process.server import run_server
from tests.support import (
    BIG_GATED_DB,
    BIG_GATED_ROWS,
    GATED_DB,
    GATED_ROWS,
    GATED_SETUP,
    SEED_ROWS,
    GatedDatabase,
    Gates,
    S3Bucket,
    S3Server,
    Server,
    StartServer,
    UsersLock,
    abandon_queue,
    copy_oracle,
    gated_admin_conninfo,
    gated_conninfo,
)
from tests.support.datasets import create_schema, write_datasets_file

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


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


@pytest.fixture(scope="module")
def shop(
    database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Datasets]]:
    """The shop schema (tests/support/datasets.py, a schema that is not users) and its
    datasets file, resolved."""
    create_schema(database)
    path = write_datasets_file(tmp_path_factory.mktemp("datasets"))
    yield path, resolve_datasets(database, load_datasets_file(path))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[WebDriver, Path]]:
    """A headless chromium, and the directory its downloads land in."""
    from tests.support.browser import open_browser  # selenium: only for the browser tests

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with open_browser(downloads) as driver:
        yield driver, downloads


@pytest.fixture
def oracle(database: str) -> Callable[[ExportRequest], bytes]:
    return functools.partial(copy_oracle, database)


def _drop_gated(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def _gated(database: str, name: str, rows: int) -> Iterator[GatedDatabase]:
    """A database ``name`` of ``rows`` users (and a role of that name owning it) whose
    exports a test can stop at a row (``Gates``)."""
    password = secrets.token_hex(12)
    with psycopg.connect(database, autocommit=True) as conn:
        _drop_gated(conn, name)
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, ident))
        # Exports then read in id order through the primary key, never a sort that would
        # read every row (and meet every gate) before the first one comes out.
        conn.execute(sql.SQL("ALTER DATABASE {} SET enable_sort = off").format(ident))
    url = gated_conninfo(database, password, name)
    apply_schema(url, "schema")  # as the role: it owns the tables
    seed_users(url, rows)
    apply_schema(url, "indexes")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(GATED_SETUP.encode())
    yield GatedDatabase(url, gated_admin_conninfo(database, name), rows)
    with psycopg.connect(database, autocommit=True) as conn:
        _drop_gated(conn, name)


@pytest.fixture(scope="session")
def gated_database(database: str) -> Iterator[GatedDatabase]:
    """A database of its own whose exports a test can stop at a row (``gates``)."""
    with _gated(database, GATED_DB, GATED_ROWS) as gated:
        yield gated


@pytest.fixture(scope="session")
def big_gated_database(database: str) -> Iterator[GatedDatabase]:
    """The same, with enough rows to fill several parts of an object store's upload."""
    with _gated(database, BIG_GATED_DB, BIG_GATED_ROWS) as gated:
        yield gated


@pytest.fixture
def gates(gated_database: GatedDatabase) -> Iterator[Gates]:
    held = Gates(gated_database.admin_url)
    yield held
    held.close()


@pytest.fixture
def big_gates(big_gated_database: GatedDatabase) -> Iterator[Gates]:
    held = Gates(big_gated_database.admin_url, big_gated_database.rows)
    yield held
    held.close()


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
    # The servers are stopped: no job they left waiting may be claimed by the next test's.
    await trio.to_thread.run_sync(abandon_queue, database)


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


@pytest.fixture
def users_lock(database: str) -> Iterator[Callable[[], UsersLock]]:
    locks: list[UsersLock] = []

    def take() -> UsersLock:
        locks.append(UsersLock(database))
        return locks[-1]

    yield take
    for lock in locks:
        lock.release()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server for the session (tests that stop their store start their own)."""
    store = S3Server()
    store.start()
    yield store
    store.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A new bucket, and this process's AWS_* settings pointing at it (for servers started
    in this process; a service process is given ``s3.env``)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return S3Bucket(s3_server, s3_server.new_bucket())
