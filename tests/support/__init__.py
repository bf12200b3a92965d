"""Helpers that several test modules share (fixtures are in conftest.py, which uses these;
the one of ``processes`` is imported by the tests that use it).

- the test database: its size, PostgreSQL's own COPY of an export (the oracle), the
  export's sessions in ``pg_stat_activity``;
- holding an export inside PostgreSQL for as long as a test needs: a lock on the whole
  ``users`` table (the export waits before its first row), or a gate at one row of the
  gated database (the export waits half-way, with rows written);
- a server in this process (``Server``) or ``exporter serve`` as its own process
  (``service``);
- curl, and counts of this process's open files and trio tasks (and what they rest at).

Beside it: ``processes`` (what the tests of several real processes share), ``load`` (the
load that test_load and bench/load.py run), ``dbproxy``, ``fake_queue``, ``fake_export``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter/jobs/postgres_queue.py)
import httpx
import psycopg
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import make_conninfo

from exporter.core.config import ROW_SOURCES, Settings
from exporter.core.datasets import USERS, Datasets
from exporter.core.model import ExportRequest
from exporter.export.catalog import resolve_datasets
from exporter.export.connection import libpq_options
from exporter.export.query import copy_statement

ROOT = Path(__file__).resolve().parents[2]
SEED_ROWS = int(os.environ.get("TEST_SEED_ROWS", "150000"))

Oracle = Callable[[ExportRequest], bytes]

# The row sources as a test parameter: the default one (``cursor``) in the fast suite, every
# other one in the full suite only (marked slow).
ROW_SOURCE_PARAMS = [
    ROW_SOURCES[0],
    *(pytest.param(source, marks=pytest.mark.slow) for source in ROW_SOURCES[1:]),
]


def copy_oracle(conninfo: str, request: ExportRequest, datasets: Datasets | None = None) -> bytes:
    """What PostgreSQL's own COPY writes for the export's SELECT: the bytes every export
    file must equal. ``datasets``: where the request's dataset is (default: the built-in)."""
    if datasets is None:
        datasets = resolve_datasets(conninfo, [USERS])
    out = bytearray()
    with psycopg.connect(conninfo, options=libpq_options()) as conn:
        statement = copy_statement(conn, datasets[request.dataset], request)
        with conn.cursor().copy(statement) as copy:
            for chunk in copy:
                out += chunk
    return bytes(out)


# -- the export's database sessions ----------------------------------------------------------


def abandon_queue(conninfo: str) -> None:
    """Cancel every job still waiting or running in ``conninfo``'s queue: the database is
    shared by the tests one after another, and a job one left behind would be claimed and
    run by the next one's server."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "UPDATE export_jobs SET status = 'cancelled', owner = NULL, lease_until = NULL"
            " WHERE status IN ('pending', 'processing')"
        )


def backends(conninfo: str, export_id: str) -> list[tuple[Any, ...]]:
    """The export's database sessions still alive (pg_stat_activity)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, state, query FROM pg_stat_activity WHERE application_name = %s",
            (f"exporter {export_id}",),
        ).fetchall()


def is_blocked(conninfo: str, export_id: str) -> bool:
    """Whether the export's backend is waiting for a lock (a table lock or a row gate)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_stat_activity"
            " WHERE application_name = %s AND wait_event_type = 'Lock'",
            (f"exporter {export_id}",),
        ).fetchone()
    return row is not None


async def wait_until_blocked(conninfo: str, export_id: str, timeout: float = 10.0) -> None:
    """Wait until the export's backend is waiting for a lock."""
    with trio.fail_after(timeout):
        while not is_blocked(conninfo, export_id):
            await trio.sleep(0.02)


def wait_until_blocked_sync(conninfo: str, export_id: str, timeout: float = 10.0) -> None:
    """``wait_until_blocked`` for tests that drive a separate process synchronously."""
    deadline = time.monotonic() + timeout
    while not is_blocked(conninfo, export_id):
        assert time.monotonic() < deadline, f"export {export_id} never waited for a lock"
        time.sleep(0.02)


async def wait_for_no_backend(conninfo: str, export_id: str, timeout: float = 1.0) -> None:
    """The export's session must be gone from pg_stat_activity within ``timeout``."""
    with trio.fail_after(timeout):
        while backends(conninfo, export_id):
            await trio.sleep(0.02)


# -- holding an export inside PostgreSQL ------------------------------------------------------


class UsersLock:
    """Holds ACCESS EXCLUSIVE on users from another session: a real way to make an
    export's query block inside PostgreSQL, before its first row, for as long as a test
    needs."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo)
        self.conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


# The gated database: a database of its own, with GATED_ROWS users, that the service reaches
# as the role owning its tables. A row-level security policy, forced on that owner, passes
# every row the export reads through gate(id); at every GATE_EVERY-th id (1001, 2001, ...)
# the gate takes a shared advisory lock keyed by the id. A test holding that key exclusively
# (Gates.hold) stops every export of the gated database at that row: the rows before it have
# been fetched and written, the next FETCH waits inside PostgreSQL (wait_event_type 'Lock')
# until the test lets go. Exports read in id order through the primary key (the database
# has enable_sort off), so "before" means lower ids. The test's own sessions are superuser
# ones, which row-level security does not apply to: its COPY oracle is never held.
GATED_DB = "exporter_gated"
GATED_ROWS = 30_000
GATE_EVERY = 1000
GATE_CLASS = 7357  # the first half of the advisory lock key; the row id is the second

GATED_SETUP = f"""
CREATE FUNCTION exporter_test_gate(row_id integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF row_id % {GATE_EVERY} = 1 AND row_id > 1 THEN
        PERFORM pg_advisory_xact_lock_shared({GATE_CLASS}, row_id);
    END IF;
    RETURN true;
END
$$;
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
-- IS NOT NULL: the planner then counts on nearly every row passing (a bare boolean
-- function would make it guess a third), so totalRows stays a fair estimate.
CREATE POLICY gate ON users USING (exporter_test_gate(id) IS NOT NULL);
"""


# A second gated database, big enough (about 23 MB of CSV) that an export held at a gate has
# already sent an object store several parts of the minimum size (5 MiB).
BIG_GATED_DB = "exporter_gated_big"
BIG_GATED_ROWS = 250_000


def gated_conninfo(conninfo: str, password: str, name: str = GATED_DB) -> str:
    """The gated database as the service reaches it: as the role its policy applies to."""
    return make_conninfo(conninfo, dbname=name, user=name, password=password)


def gated_admin_conninfo(conninfo: str, name: str = GATED_DB) -> str:
    """The gated database as the test's superuser: every row, no gate."""
    return make_conninfo(conninfo, dbname=name)


@dataclasses.dataclass
class GatedDatabase:
    url: str  # the service's conninfo (through the gates)
    admin_url: str  # the test's conninfo (around them): oracle, pg_stat_activity
    rows: int = GATED_ROWS

    def oracle(self, request: ExportRequest) -> bytes:
        return copy_oracle(self.admin_url, request)


class Gates:
    """Holds row gates of the gated database (see GATED_SETUP): ``hold(n)`` makes every
    export of it wait when it reaches row ``n`` (an id ≡ 1 modulo GATE_EVERY), having
    written every batch before it; ``release(n)`` lets them go on."""

    def __init__(self, admin_url: str, rows: int = GATED_ROWS) -> None:
        self.rows = rows
        self.conn = psycopg.connect(admin_url, autocommit=True)
        # An export of an earlier test may still hold the gate shared, for a moment.
        self.conn.execute("SET lock_timeout = '10s'")
        self.held: set[int] = set()

    def hold(self, row_id: int) -> None:
        assert row_id % GATE_EVERY == 1 and 1 < row_id <= self.rows, row_id
        self.conn.execute("SELECT pg_advisory_lock(%s, %s)", (GATE_CLASS, row_id))
        self.held.add(row_id)

    def release(self, row_id: int) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", (GATE_CLASS, row_id))
        self.held.discard(row_id)

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()  # ends the session: every gate still held opens


def rows_before_gate(row_id: int, batch_rows: int) -> int:
    """The rows an export reading ``batch_rows`` at a time has written when it waits at the
    gate of ``row_id``: every whole batch before the one holding that row."""
    return (row_id - 1) // batch_rows * batch_rows


# -- the service --------------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    """A server started in this test's process (the ``start_server`` fixture)."""

    url: str
    settings: Settings
    client: httpx.AsyncClient
    # The bucket its export store is in, when that is an object store.
    bucket: S3Bucket | None = None

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

    async def download_bytes(self, method: str) -> float:
        """Bytes of export files sent to clients ``method`` (``sendfile`` or ``fallback``),
        as the operator sees them: ``exporter_download_bytes`` of GET /metrics."""
        response = await self.client.get("/metrics")
        assert response.status_code == 200, response.text
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == "exporter_download_bytes_total" and sample.labels == {
                    "method": method
                }:
                    return float(sample.value)
        return 0.0  # nothing sent that way yet: the counter has no sample for it


StartServer = Callable[..., Awaitable[Server]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class Service:
    """``exporter serve`` running as its own process (``service``)."""

    url: str
    process: subprocess.Popen[bytes]
    client: httpx.Client

    def wait_for(self, export_id: str, *statuses: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            doc = dict(self.client.get(f"/exports/{export_id}/status").json())
            if doc["status"] in statuses:
                return doc
            assert time.monotonic() < deadline, doc
            time.sleep(0.05)

    def export(self, params: dict[str, str]) -> str:
        """POST an export and wait for it to complete; returns its id."""
        response = self.client.post("/exports/csv", params=params)
        assert response.status_code == 202, response.text
        export_id = str(response.json()["exportId"])
        doc = self.wait_for(export_id, "completed", "failed", "cancelled")
        assert doc["status"] == "completed", doc
        return export_id


@contextlib.contextmanager
def service(
    conninfo: str,
    export_dir: Path,
    stderr: Any = subprocess.DEVNULL,
    *args: str,
    keep_queue: bool = False,
    **env: str,
) -> Iterator[Service]:
    """``exporter serve [args]`` as its own process, as in production, on a free port of
    loopback, ready (its database up) when the block starts; stopped by SIGTERM at the
    end unless the test stopped it already. Then the jobs it left in the queue are
    cancelled (``abandon_queue``), unless ``keep_queue`` (another process takes them on)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"BIND": f"127.0.0.1:{port}", **env}
    command = ["serve", *args]
    with _process(command, url, "/ready", conninfo, export_dir, stderr, keep_queue, env) as (
        process,
        client,
    ):
        yield Service(url, process, client)


@contextlib.contextmanager
def _process(
    command: list[str],
    url: str,
    ready: str,
    conninfo: str,
    export_dir: Path,
    stderr: Any,
    keep_queue: bool,
    env: dict[str, str],
) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client]]:
    """``exporter <command>`` as its own process, until the block ends; ready once ``ready``
    answers 200 (``/ready``: recovered, database up). Stopped by SIGTERM at the end unless
    the test stopped it already; then the jobs left in the queue are cancelled
    (``abandon_queue``), unless ``keep_queue`` (another process takes them on)."""
    environment = {**os.environ, "DATABASE_URL": conninfo, "EXPORT_DIR": str(export_dir), **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", *command], env=environment, stderr=stderr
    )
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            deadline = time.monotonic() + 30
            while True:
                name = f"exporter {command[0]}"
                assert process.poll() is None, f"{name} exited ({process.returncode})"
                with contextlib.suppress(httpx.TransportError):
                    if client.get(ready).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"{name} never answered {ready}"
                time.sleep(0.1)
            yield process, client
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(60)
        if not keep_queue:
            abandon_queue(conninfo)


# -- clients and this process's resources ---------------------------------------------------


async def curl(*args: str) -> tuple[int, dict[str, str], bytes, str]:
    """Run curl; returns (status, headers, body, status line). ``-I`` for HEAD."""
    result = await trio.run_process(
        ["curl", "-s", "-S", "-D", "/dev/stderr", "-o", "-", *args],
        capture_stdout=True,
        capture_stderr=True,
    )
    body = b"" if "-I" in args else result.stdout
    head = result.stderr.split(b"\r\n\r\n")[-2]  # the last response's header block
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body, lines[0]


def open_fds() -> int:
    """File descriptors open in this process (the in-process server's sockets and files)."""
    return len(os.listdir("/proc/self/fd"))


def count_tasks() -> int:
    """trio tasks alive in this process (the in-process server's included)."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


async def at_rest(
    *measures: Callable[[], int], window: float = 0.2, timeout: float = 10.0
) -> tuple[int, ...]:
    """What ``measures`` (``open_fds``, ``count_tasks``) have come to rest at, once the work
    just done has wound down (or started up): a baseline for a later "back to where it was".

    Read every 10 ms, in windows of ``window`` seconds: the values read most often in a
    window, once two windows in a row agree. The server's own short periodic tasks (its
    database I/O, a few times a second, for a few ms) change a count only for a moment, and
    do not move that. An ``AssertionError`` if they never agree within ``timeout``."""
    deadline = time.monotonic() + timeout
    previous: tuple[int, ...] | None = None
    while True:
        readings: collections.Counter[tuple[int, ...]] = collections.Counter()
        window_ends = time.monotonic() + window
        while time.monotonic() < window_ends:
            readings[tuple(measure() for measure in measures)] += 1
            await trio.sleep(0.01)
        usual = readings.most_common(1)[0][0]
        if usual == previous:
            return usual
        assert time.monotonic() < deadline, f"never at rest: {readings}"
        previous = usual


# -- exporter worker as its own process -------------------------------------------------------


@dataclasses.dataclass
class Worker:
    """``exporter worker`` running as its own process (``worker``), answering ``/health`` and
    ``/metrics`` on ``url``."""

    url: str
    process: subprocess.Popen[bytes]
    client: httpx.Client


@contextlib.contextmanager
def worker(
    conninfo: str,
    export_dir: Path,
    stderr: Any = subprocess.DEVNULL,
    *args: str,
    keep_queue: bool = False,
    **env: str,
) -> Iterator[Worker]:
    """``exporter worker --bind <free port> [args]`` as its own process, like ``service``:
    started when the block starts (its ``/health`` answers, so its job manager runs),
    stopped by SIGTERM at the end unless the test stopped it already; then the jobs left
    in the queue are cancelled, unless ``keep_queue``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = ["worker", "--bind", f"127.0.0.1:{port}", *args]
    with _process(command, url, "/health", conninfo, export_dir, stderr, keep_queue, env) as (
        process,
        client,
    ):
        yield Worker(url, process, client)


# -- an S3-compatible object store ------------------------------------------------------------

# Any key will do: moto's server checks signatures' form, not who signed.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "exporter-tests",
    "AWS_SECRET_ACCESS_KEY": "exporter-tests-secret",
    "AWS_REGION": "us-east-1",
}


class S3Server:
    """moto's S3 server (a real S3 API over HTTP, kept in memory) as its own process on a
    loopback port; it can be stopped and started again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ENDPOINT_URL": self.url, **S3_CREDENTIALS}
        self.process: subprocess.Popen[bytes] | None = None
        self.client = _s3_client(self.env)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, "moto's server exited"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/moto-api/").status_code < 500:
                    return
            assert time.monotonic() < deadline, "moto's server never answered"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def new_bucket(self) -> str:
        name = f"exports-{secrets.token_hex(6)}"
        self.client.create_bucket(Bucket=name)
        return name


def _s3_client(env: dict[str, str]) -> Any:
    import boto3  # the tests' own client, to look into the store
    import botocore.config

    return boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    ).client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )


@dataclasses.dataclass
class S3Bucket:
    """A bucket of its own for one test, and what a service needs to use it."""

    server: S3Server
    name: str
    prefix: str = "exports"

    @property
    def storage(self) -> str:
        return f"s3://{self.name}/{self.prefix}"

    @property
    def env(self) -> dict[str, str]:
        return {**self.server.env, "EXPORT_STORAGE": self.storage}

    def key(self, export_id: str, encoding: str = "identity") -> str:
        return f"{self.prefix}/{export_id}.csv{'.gz' if encoding == 'gzip' else ''}"

    def read(self, export_id: str, encoding: str = "identity") -> bytes:
        answer = self.server.client.get_object(Bucket=self.name, Key=self.key(export_id, encoding))
        return bytes(answer["Body"].read())

    def keys(self) -> list[str]:
        """Every object in the bucket."""
        answer = self.server.client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in answer.get("Contents", []))

    def uploads(self) -> list[str]:
        """The keys of the multipart uploads open in the bucket."""
        answer = self.server.client.list_multipart_uploads(Bucket=self.name)
        return sorted(upload["Key"] for upload in answer.get("Uploads", []))

    def parts(self, key: str) -> list[int]:
        """The sizes of the parts of ``key``'s one open upload."""
        (upload,) = [
            u
            for u in self.server.client.list_multipart_uploads(Bucket=self.name)["Uploads"]
            if u["Key"] == key
        ]
        answer = self.server.client.list_parts(
            Bucket=self.name, Key=key, UploadId=upload["UploadId"]
        )
        return [part["Size"] for part in answer.get("Parts", [])]
