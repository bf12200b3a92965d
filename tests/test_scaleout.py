"""Scale-out: several real processes (``exporter serve``, ``exporter worker``) sharing one
PostgreSQL queue and one export folder.

Each test runs the processes as in production: two APIs and a worker sharing the queue, a
DELETE sent to a process that does not run the job, a second ``serve`` started beside a
running export, ``serve --workers N``. "Mid-export" is made, not hoped for: the export waits
at a held row gate of the gated database (tests/support/). What happens to an export whose
process dies or stops (takeover, hand-back) is in test_takeover.py.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.core.model import ExportRequest
from exporter.core.request import parse_export_request
from tests.support import (
    GatedDatabase,
    Gates,
    UsersLock,
    copy_oracle,
    free_port,
    service,
    wait_until_blocked_sync,
    worker,
)
from tests.support.processes import (
    EARLY_GATE,
    ENV,
    GATE,
    ROWS_AT_GATE,
    assert_export_files,
    assert_gzip_downloads,
    children_of,
    export_pid,
    files_of,
    first_difference,
    gzip_members,
    held_before,
    job_row,
    log_text,
    logs_fixture,  # noqa: F401  (the ``logs`` fixture)
    owner_prefix,
    parent_pid,
    part_files,
    run_to_gate,
    submit,
    together,
    wait_for_backend_gone,
    wait_for_gate_locks,
    wait_row,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


# -- 1. three processes, one queue ---------------------------------------------------------------

# Small exports of the test database: filters, column lists and dialects.
REQUESTS: list[dict[str, str]] = [
    {"country_code": "US", "columns": "id,email"},
    {"country_code": "GB", "subscription_tier": "pro"},
    {"subscription_tier": "enterprise", "columns": "id,name,lifetime_value"},
    {"country_code": "JP", "columns": "email,id", "delimiter": ";"},
    {"country_code": "DE", "subscription_tier": "free", "columns": "id,signup_date"},
    {"country_code": "FR", "quoteChar": "'", "columns": "id,name"},
    {"country_code": "BR", "columns": "name,id"},
    {"country_code": "IN", "subscription_tier": "enterprise"},
    {"country_code": "CA", "columns": "country_code,subscription_tier,id"},
    {"country_code": "US", "subscription_tier": "pro", "columns": "id"},
    {"country_code": "GB", "delimiter": "\t", "columns": "id,name"},
    {"country_code": "DE", "columns": "id,email,lifetime_value"},
]
RUNNING = 6  # 3 processes, 2 exports each (MAX_CONCURRENT_EXPORTS' default)


def test_two_apis_and_a_worker_share_one_queue(
    database: str, users_lock: Callable[[], UsersLock], tmp_path: Path, logs: Any
) -> None:
    exports = tmp_path / "exports"
    env = {**ENV, "MAX_QUEUED_EXPORTS": str(len(REQUESTS) - RUNNING)}
    with together(
        service(database, exports, logs("serve-a"), **env),
        service(database, exports, logs("serve-b"), **env),
        worker(database, exports, logs("worker"), **env),
    ) as (a, b, w):
        apis = [a, b]
        lock = users_lock()  # every export waits before its first row until released
        ids = [submit(apis[i % 2].client, REQUESTS[i]) for i in range(RUNNING)]
        for export_id in ids:
            wait_until_blocked_sync(database, export_id)
        # Every slot of the three processes took one, whichever API it was submitted to.
        owners = collections.Counter(job_row(database, i)["owner"].rsplit(":", 1)[0] for i in ids)
        assert sorted(owners.values()) == [2, 2, 2], owners
        assert {o.split(":")[1] for o in owners} == {str(p.process.pid) for p in (a, b, w)}

        # The rest wait, in one queue: each API counts those submitted to the other.
        for i in range(RUNNING, len(REQUESTS)):
            ids.append(submit(apis[i % 2].client, REQUESTS[i]))
            for api in apis:
                doc = api.client.get(f"/exports/{ids[-1]}/status").json()
                assert doc["status"] == "pending" and doc["queuePosition"] == i - RUNNING + 1
        # The queue is full for both APIs together: either one refuses one more.
        for api in apis:
            refused = api.client.post("/exports/csv", params=REQUESTS[0])
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["retry-after"]) > 0
        for position, export_id in enumerate(ids[RUNNING:], start=1):
            for api in apis:
                assert api.client.get(f"/exports/{export_id}/status").json()["queuePosition"] == (
                    position
                )

        lock.release()
        for i, export_id in enumerate(ids):
            doc = apis[i % 2].wait_for(export_id, "completed", "failed", "cancelled", timeout=60)
            assert doc["status"] == "completed", doc
            assert doc["attempt"] == 1 and doc["resumedFromRows"] is None, doc
        for i, export_id in enumerate(ids):
            expected = copy_oracle(database, parse_export_request(REQUESTS[i]))
            assert_export_files(exports, export_id, expected)
            # The other API serves it too: the folder is shared.
            download = apis[(i + 1) % 2].client.get(
                f"/exports/{export_id}/download", headers={"Accept-Encoding": "identity"}
            )
            assert download.status_code == 200
            assert first_difference(download.content, expected) is None
        assert sorted(p.name for p in exports.iterdir()) == sorted(
            f"{i}.csv{gz}" for i in ids for gz in ("", ".gz")
        )
    # Each ran exactly once: one start and one end among all three processes' logs.
    text = "".join(log_text(tmp_path, name) for name in ("serve-a", "serve-b", "worker"))
    for export_id in ids:
        assert text.count(f"export {export_id} processing") == 1, export_id
        assert text.count(f"export {export_id} completed") == 1, export_id


# -- 2. DELETE sent to a process that does not run the export --------------------------------------


def test_delete_on_another_process_cancels_at_once(
    gated_database: GatedDatabase, gates: Gates, tmp_path: Path, logs: Any
) -> None:
    admin, exports = gated_database.admin_url, tmp_path / "exports"
    gates.hold(GATE)
    with together(
        service(gated_database.url, exports, logs("api-a"), MAX_CONCURRENT_EXPORTS="0", **ENV),
        service(gated_database.url, exports, logs("serve-b"), MAX_CONCURRENT_EXPORTS="1", **ENV),
    ) as (a, b):
        in_b = submit(a.client)  # A runs nothing: B runs it
        wait_for_gate_locks(admin, in_b, [(g, True) for g in held_before(GATE)] + [(GATE, False)])
        with worker(
            gated_database.url, exports, logs("worker"), MAX_CONCURRENT_EXPORTS="1", **ENV
        ) as w:
            in_w = submit(b.client)  # B is busy: the worker runs it
            wait_for_gate_locks(
                admin, in_w, [(g, True) for g in held_before(GATE)] + [(GATE, False)]
            )
            assert job_row(admin, in_b)["owner"].startswith(owner_prefix(b.process))
            assert job_row(admin, in_w)["owner"].startswith(owner_prefix(w.process))

            for export_id, api in ((in_b, a), (in_w, b)):  # the serve B, then the worker
                assert len(part_files(exports, export_id)) == 2
                pid = export_pid(admin, export_id)
                started = time.monotonic()
                response = api.client.delete(f"/exports/{export_id}")
                assert response.status_code == 204, response.text
                # Once answered: cancelled, its files gone; its backend gone within 1 s.
                assert files_of(exports, export_id) == []
                for other in (a, b):
                    doc = other.client.get(f"/exports/{export_id}/status").json()
                    assert doc["status"] == "cancelled", doc
                wait_for_backend_gone(admin, pid, started + 1.0)
                assert time.monotonic() - started < 1.0
                assert job_row(admin, export_id)["owner"] is None


# -- 3. the gzip copy of a checkpointed export -----------------------------------------------------


def test_gzip_download_of_a_checkpointed_export_is_the_whole_csv(
    gated_database: GatedDatabase, gates: Gates, tmp_path: Path, logs: Any
) -> None:
    """Checkpoints cut the gzip copy at points a takeover can continue from; served as
    ``Content-Encoding: gzip``, the copy must still decode to the whole CSV."""
    admin, exports = gated_database.admin_url, tmp_path / "exports"
    expected = gated_database.oracle(ExportRequest())
    gates.hold(EARLY_GATE)
    gates.hold(GATE)
    with service(gated_database.url, exports, logs("serve"), **ENV) as app:
        export_id = submit(app.client)
        run_to_gate(admin, gates, export_id)  # a checkpoint half-way, at least
        gates.release(GATE)
        assert app.wait_for(export_id, "completed", "failed", "cancelled")["status"] == "completed"
        assert_export_files(exports, export_id, expected)
        assert_gzip_downloads(f"{app.url}/exports/{export_id}/download", expected)
    assert gzip_members((exports / f"{export_id}.csv.gz").read_bytes()) == 1


# -- 4. a second serve process started beside a running export -------------------------------------


def test_second_serve_leaves_a_running_export_intact(
    gated_database: GatedDatabase, gates: Gates, tmp_path: Path, logs: Any
) -> None:
    admin, exports = gated_database.admin_url, tmp_path / "exports"
    expected = gated_database.oracle(ExportRequest())
    gates.hold(GATE)
    with service(gated_database.url, exports, logs("serve-a"), **ENV) as a:
        export_id = submit(a.client)
        wait_for_gate_locks(
            admin, export_id, [(g, True) for g in held_before(GATE)] + [(GATE, False)]
        )
        wait_row(admin, export_id, lambda r: r["processed_rows"] == ROWS_AT_GATE)
        # Old enough for any sweep of abandoned files: only the job's status protects them.
        an_hour_ago = time.time() - 3600
        for name in part_files(exports, export_id):
            os.utime(exports / name, (an_hour_ago, an_hour_ago))
        parts = part_files(exports, export_id)
        assert len(parts) == 2
        before = job_row(admin, export_id)

        # Ready means it has recovered: looked at the queue and swept the folder.
        with service(gated_database.url, exports, logs("serve-b"), **ENV) as b:
            assert part_files(exports, export_id) == parts
            row = job_row(admin, export_id)
            assert row["status"] == "processing" and row["owner"] == before["owner"]
            assert row["attempt"] == 1
            assert b.client.get(f"/exports/{export_id}/status").json()["status"] == "processing"
            gates.release(GATE)
            doc = b.wait_for(export_id, "completed", "failed", "cancelled")
            assert doc["status"] == "completed", doc
            assert doc["attempt"] == 1 and doc["resumedFromRows"] is None
            assert job_row(admin, export_id)["owner"] is None
    assert_export_files(exports, export_id, expected)
    assert "export " + export_id not in log_text(tmp_path, "serve-b")


# -- 5. exporter serve --workers N ------------------------------------------------------------


def test_a_worker_that_dies_is_started_again(tmp_path: Path, database: str, logs: Any) -> None:
    with service(database, tmp_path / "exports", logs("serve"), "--workers", "1", **ENV) as api:
        deadline = time.monotonic() + 30
        while not (first := children_of(api.process.pid)):
            assert time.monotonic() < deadline, "no worker started"
            time.sleep(0.05)
        (pid,) = first
        os.kill(pid, signal.SIGKILL)
        while not (again := children_of(api.process.pid) - {pid}):
            assert time.monotonic() < deadline, "the dead worker was not started again"
            time.sleep(0.05)
        # The new one works: an export submitted now completes.
        export_id = submit(api.client)
        doc = api.wait_for(export_id, "completed", "failed", timeout=30)
        assert doc["status"] == "completed" and again


def test_serve_with_workers_runs_exports_in_its_children_and_hands_them_back(
    gated_database: GatedDatabase, gates: Gates, tmp_path: Path, logs: Any
) -> None:
    """``serve --workers 2``: the API process runs no export, its two worker children do,
    each counting its own on a port of its own while the API's /metrics counts the queue;
    a worker that dies is started again; SIGTERM to the API stops the children, which hand
    their exports back to the queue."""
    admin, exports = gated_database.admin_url, tmp_path / "exports"
    expected = gated_database.oracle(ExportRequest())
    gates.hold(GATE)
    metrics_port = free_port()
    with service(
        gated_database.url,
        exports,
        logs("serve"),
        "--workers",
        "2",
        keep_queue=True,
        MAX_CONCURRENT_EXPORTS="1",  # in each worker: the two exports go one to each
        WORKER_METRICS_PORT=str(metrics_port),
        **ENV,
    ) as api:
        ids = [submit(api.client), submit(api.client)]
        held = [(g, True) for g in held_before(GATE)] + [(GATE, False)]
        for export_id in ids:
            wait_for_gate_locks(admin, export_id, held)
        children = set()
        for export_id in ids:
            owner = job_row(admin, export_id)["owner"]
            pid = int(owner.split(":")[1])
            assert pid != api.process.pid and parent_pid(pid) == api.process.pid, owner
            children.add(pid)
        assert len(children) == 2
        # Each worker's own counters on its port, the whole queue's on the API's /metrics.
        for index in range(2):
            scraped = httpx.get(f"http://127.0.0.1:{metrics_port + index}/metrics").text
            assert "exporter_exports_running 1.0" in scraped, scraped
        deadline = time.monotonic() + 5
        while 'exporter_queue_jobs{status="running"} 2.0' not in api.client.get("/metrics").text:
            assert time.monotonic() < deadline, "the API's /metrics never counted 2 running"
            time.sleep(0.1)
        api.client.close()  # no idle keep-alive connection for the server to wait out
        api.process.send_signal(signal.SIGTERM)
        assert api.process.wait(30) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the API process"
    for export_id in ids:
        row = job_row(admin, export_id)
        assert row["status"] == "pending" and row["owner"] is None and row["attempt"] == 1, row
        assert len(part_files(exports, export_id)) == 2

    gates.release(GATE)
    with worker(gated_database.url, exports, logs("worker"), **ENV):
        for export_id in ids:
            row = wait_row(
                admin,
                export_id,
                lambda r: r["status"] != "processing" and r["status"] != "pending",
                timeout=30,
                what="the end",
            )
            assert row["status"] == "completed" and row["attempt"] == 1, row
            assert_export_files(exports, export_id, expected)
