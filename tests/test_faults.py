"""Faults, each made for real against the real server and database: the export's
database session killed, the database unreachable or lost, the disk full, clients that
stall or send nothing. (The service killed or stopped mid-export, and the export taken
over or handed back: test_takeover.py.)

Every test checks what a user would: the job's final status and error, the files on disk,
the service still answering, and other work unaffected. "Mid-export" is made, not hoped
for: the export is stopped at a row of the gated database (tests/support/), with rows
already written, until the fault has happened.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import trio

from exporter.core.model import ExportRequest
from exporter.core.request import parse_export_request
from tests.support import (
    GatedDatabase,
    Gates,
    Server,
    StartServer,
    UsersLock,
    at_rest,
    copy_oracle,
    count_tasks,
    open_fds,
    wait_until_blocked,
)
from tests.support.dbproxy import DatabaseProxy
from tests.support.processes import BATCH_ROWS, GATE, ROWS_AT_GATE


def export_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- 1. the export's backend is killed --------------------------------------------------


@pytest.mark.slow  # the gated database: a second to set up
async def test_backend_terminated_mid_export(
    start_server: StartServer, database: str, gated_database: GatedDatabase, gates: Gates
) -> None:
    server = await start_server(conninfo=gated_database.url, batch_rows=BATCH_ROWS)
    gates.hold(GATE)
    victim = await server.create()
    other_params = {"country_code": "US", "columns": "id,email"}
    other = await server.create(**other_params)
    await wait_until_blocked(database, victim)
    # Half-way: the batches before the gate written to the victim's partial file (the
    # writer may still be at the last of them), the rest still to come.
    with trio.fail_after(10):
        while (doc := await server.status(victim))["progress"]["processedRows"] < ROWS_AT_GATE:
            await trio.sleep(0.02)
    assert doc["status"] == "processing" and doc["progress"]["processedRows"] == ROWS_AT_GATE
    assert f"{victim}.csv.part" in export_files(server.settings.export_dir)

    with psycopg.connect(database, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"exporter {victim}",),
        ).fetchall()
    assert killed == [(True,)]

    doc = await server.wait_for(victim, "failed", "completed")
    assert doc["status"] == "failed"
    assert doc["error"] == (
        "the database ended the export's connection (terminated by an administrator)"
    )
    assert "downloadUrl" not in doc
    gates.release(GATE)  # the other export may be waiting at the same row
    done = await server.wait_for(other, "completed", "failed", timeout=60)
    assert done["status"] == "completed", done["error"]
    response = await server.client.get(f"/exports/{other}/download")
    assert response.content == gated_database.oracle(parse_export_request(other_params))
    assert export_files(server.settings.export_dir) == [f"{other}.csv", f"{other}.csv.gz"]
    assert (await server.client.get("/health")).status_code == 200


# -- 2. the database unreachable at start, lost, and back --------------------------------


async def test_database_down_at_start_then_back_then_lost(
    start_server: StartServer,
    nursery: trio.Nursery,
    database: str,
    oracle: Callable[[ExportRequest], bytes],
) -> None:
    proxy = DatabaseProxy(database, nursery)
    server = await start_server(conninfo=proxy.conninfo)  # nothing listens yet

    health = await server.client.get("/health")
    assert health.status_code == 200
    ready = await server.client.get("/ready")
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    assert ready.json()["database"] == "down"
    refused = await server.client.post("/exports/csv")
    assert refused.status_code == 503
    assert refused.headers["retry-after"]
    assert "database" in refused.json()["detail"]

    await proxy.start()  # the database comes back: no restart needed
    await wait_ready(server)
    export_id = await server.create(country_code="NZ")
    assert (await server.wait_for(export_id, "completed"))["status"] == "completed"
    response = await server.client.get(f"/exports/{export_id}/download")
    assert response.content == oracle(ExportRequest(country_code="NZ"))

    proxy.cut()  # gone again
    with trio.fail_after(10):
        while (await server.client.get("/ready")).status_code != 503:
            await trio.sleep(0.05)
    assert (await server.client.post("/exports/csv")).status_code == 503
    for method, path in [
        ("GET", f"/exports/{export_id}/status"),
        ("GET", f"/exports/{export_id}/download"),
        ("DELETE", f"/exports/{export_id}"),
    ]:
        response = await server.client.request(method, path)
        assert response.status_code == 503, (method, path)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"]
    assert (await server.client.get("/health")).status_code == 200

    await proxy.start()
    await wait_ready(server)
    again = await server.create(country_code="NZ")
    assert (await server.wait_for(again, "completed"))["status"] == "completed"


@pytest.mark.slow
async def test_database_lost_mid_export_is_recorded_once_back(
    start_server: StartServer,
    nursery: trio.Nursery,
    database: str,
    users_lock: Callable[[], UsersLock],
) -> None:
    proxy = DatabaseProxy(database, nursery)
    await proxy.start()
    server = await start_server(conninfo=proxy.conninfo)
    lock = users_lock()
    export_id = await server.create()
    await wait_until_blocked(database, export_id)

    proxy.cut()
    lock.release()
    # The job ended while its end could not be recorded: the service still knows it.
    doc = await server.wait_for(export_id, "failed")
    assert doc["error"] == "the connection to the database failed or was lost during the export"
    assert export_files(server.settings.export_dir) == []

    await proxy.start()
    await wait_ready(server)
    with trio.fail_after(10):  # ... and records it once the database is back
        while True:
            with psycopg.connect(database) as conn:
                row = conn.execute(
                    "SELECT status, error FROM export_jobs WHERE id = %s", (export_id,)
                ).fetchone()
            if row is not None and row[0] == "failed":
                break
            await trio.sleep(0.1)
    assert row[1] == doc["error"]


async def wait_ready(server: Server, timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while (response := await server.client.get("/ready")).status_code != 200:
            await trio.sleep(0.1)
    assert response.json() == {"status": "ready", "database": "up", "exportStore": "up"}


# -- 3. the disk fills up -----------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs: a full export (~14 MB) cannot fit, a small one can."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")  # CI runs as root: there it runs
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


async def test_disk_full_fails_the_job_and_leaves_no_file(
    start_server: StartServer, small_disk: Path, oracle: Callable[[ExportRequest], bytes]
) -> None:
    server = await start_server(export_dir=small_disk)
    big = await server.create()
    doc = await server.wait_for(big, "failed", "completed", timeout=60)
    assert doc["status"] == "failed"
    assert "no space left" in doc["error"]
    assert export_files(small_disk) == []
    assert (await server.client.get("/health")).status_code == 200
    assert (await server.client.get(f"/exports/{big}/download")).status_code == 410

    small = await server.create(country_code="NZ", columns="id,email")
    assert (await server.wait_for(small, "completed", "failed"))["status"] == "completed"
    response = await server.client.get(f"/exports/{small}/download")
    assert response.content == oracle(ExportRequest(country_code="NZ", columns=("id", "email")))


# -- 4. clients that vanish or stall ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("zero_copy", [True, False])
async def test_stalled_download_is_dropped_and_others_are_served(
    start_server: StartServer, database: str, zero_copy: bool
) -> None:
    server = await start_server(send_timeout=1.0, zero_copy=zero_copy)
    export_id = await server.create()
    await server.wait_for(export_id, "completed")
    path = f"/exports/{export_id}/download"
    whole = copy_oracle(database, ExportRequest())
    await server.client.get("/health")  # the client's pool connection, opened up front
    fds, tasks = await at_rest(open_fds, count_tasks)  # ... and idle, the request done

    # Asks for the file, then reads nothing: the server's writes soon block.
    staller = trio.socket.socket()
    staller.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = server.url.removeprefix("http://").split(":")
    await staller.connect((host, int(port)))
    await staller.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    with trio.fail_after(5):  # the server takes the connection and holds it ...
        while open_fds() <= fds + 1:
            await trio.sleep(0.01)

    response = await server.client.get(path)  # ... while another client is served whole
    assert response.status_code == 200 and response.content == whole

    with trio.fail_after(10):  # ... and drops the stalled one after SEND_TIMEOUT
        # (+1: the staller's own socket, in this process too, stays open till the end)
        while open_fds() > fds + 1 or count_tasks() > tasks:
            await trio.sleep(0.05)
    staller.close()
    assert (await server.client.get("/health")).status_code == 200


@pytest.mark.slow
async def test_connection_that_sends_nothing_is_closed(server: Server) -> None:
    silent = trio.socket.socket()
    host, port = server.url.removeprefix("http://").split(":")
    await silent.connect((host, int(port)))
    with trio.fail_after(15):  # Hypercorn's keep-alive timeout (5 s) applies
        assert await silent.recv(1) == b""
    silent.close()
