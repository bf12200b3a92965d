"""Queueing, the queue limit, and recovery after a restart."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg

from exporter.core.model import ExportRequest
from exporter.jobs.files import ORPHAN_GRACE_SECONDS
from tests.support import Oracle, StartServer, UsersLock, wait_until_blocked


async def test_second_export_waits_pending_then_runs(
    start_server: StartServer, database: str, users_lock: Callable[[], UsersLock]
) -> None:
    server = await start_server(max_concurrent_exports=1, max_queued_exports=2)
    lock = users_lock()
    first = await server.create(columns="id")
    await wait_until_blocked(database, first)
    second = await server.create(columns="id,email")
    third = await server.create(columns="email")

    doc = await server.status(second)
    assert doc["status"] == "pending"
    assert doc["queuePosition"] == 1
    assert doc["startedAt"] is None
    assert doc["progress"]["percentage"] == 0
    assert (await server.status(third))["queuePosition"] == 2
    download = await server.client.get(f"/exports/{second}/download")
    assert download.status_code == 409
    assert download.json()["exportStatus"] == "pending"

    # The queue is full: a fourth is refused with a hint of when to retry.
    refused = await server.client.post("/exports/csv")
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["content-type"] == "application/problem+json"

    # Withdrawing a queued export moves the next one up.
    assert (await server.client.delete(f"/exports/{second}")).status_code == 204
    assert (await server.status(second))["status"] == "cancelled"
    assert (await server.status(third))["queuePosition"] == 1
    health = (await server.client.get("/health")).json()
    assert health["exports"] == {"running": 1, "queued": 1}

    lock.release()
    assert (await server.wait_for(first, "completed", "failed"))["status"] == "completed"
    assert (await server.wait_for(third, "completed", "failed"))["status"] == "completed"


async def test_restart_continues_unfinished_jobs_and_removes_old_orphan_files(
    start_server: StartServer, database: str, tmp_path: Path, oracle: Oracle
) -> None:
    # What a process that died long ago leaves: a job it ran, with no lease any more (made
    # before leases existed), its partial file, and the file of an export nobody knows.
    interrupted = uuid.uuid4()
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO export_jobs (id, status, request, started_at)"
            " VALUES (%s, 'processing', %s, now())",
            (interrupted, json.dumps({"columns": ["id"], "country_code": "CA"})),
        )
    export_dir = tmp_path / "exports"
    export_dir.mkdir()
    part = export_dir / f"{interrupted}.csv.part"
    part.write_bytes(b"id\n1\n")
    long_ago = time.time() - ORPHAN_GRACE_SECONDS - 60
    orphan = export_dir / f"{uuid.uuid4()}.csv"
    orphan.write_bytes(b"id\n")
    os.utime(orphan, (long_ago, long_ago))
    recent = export_dir / f"{uuid.uuid4()}.csv.part"  # perhaps another process's, just made
    recent.write_bytes(b"id\n")
    not_ours = export_dir / "README.txt"
    not_ours.write_text("left alone")
    os.utime(not_ours, (long_ago, long_ago))

    server = await start_server()
    doc = await server.wait_for(str(interrupted), "completed", "failed")
    assert doc["status"] == "completed" and doc["attempt"] == 1 and doc["error"] is None
    download = await server.client.get(f"/exports/{interrupted}/download")
    assert download.content == oracle(ExportRequest(columns=("id",), country_code="CA"))
    assert not part.exists() and not orphan.exists()
    assert recent.exists()  # too young to be called an orphan
    assert not_ours.read_text() == "left alone"
