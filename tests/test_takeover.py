"""Takeover and hand-back: the process running an export is killed, stopped by SIGTERM, cut
from the database or unable to renew its lease, and the export goes on in another process
(or the same one started again) from its last checkpoint, into the same files.

Each test runs ``exporter serve`` and ``exporter worker`` as in production and makes its
fault for real. "Mid-export" is made, not hoped for: the export waits at a held row gate of
the gated database (tests/support/), with a checkpoint recorded there (``run_to_gate``).
Leases are short (``LEASE_SECONDS=2``), so takeovers happen within seconds.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter/jobs/postgres_queue.py)
import psycopg
import pytest

from exporter.core.model import ExportRequest
from tests.support import GatedDatabase, Gates, backends, service, worker
from tests.support.processes import (
    EARLY_GATE,
    ENV,
    GATE,
    LEASE_SECONDS,
    ROWS_AT_GATE,
    ThreadedProxy,
    assert_export_files,
    assert_gzip_downloads,
    export_pid,
    gate_locks,
    gzip_members,
    held_before,
    job_row,
    log_text,
    logs_fixture,  # noqa: F401  (the ``logs`` fixture)
    owner_prefix,
    part_files,
    run_to_gate,
    submit,
    wait_for_backend_gone,
    wait_for_gate_locks,
    wait_row,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def assert_only_export(folder: Path, export_id: str, expected: bytes) -> None:
    """``assert_export_files``, and nothing else in the folder, and the gzip copy one gzip
    member, checkpoints and a resume notwithstanding: clients that read only the first
    member (curl --compressed, httpx) get the whole CSV too."""
    assert_export_files(folder, export_id, expected)
    assert sorted(p.name for p in folder.iterdir()) == [f"{export_id}.csv", f"{export_id}.csv.gz"]
    assert gzip_members((folder / f"{export_id}.csv.gz").read_bytes()) == 1


# -- 1. the process running an export is killed -------------------------------------------------


def test_killed_process_export_is_taken_over_from_its_checkpoint(
    gated_database: GatedDatabase, gates: Gates, tmp_path: Path, logs: Any
) -> None:
    """SIGKILL to the process running an export, half-way: once its lease has run out,
    another process takes the job over as attempt 2 and continues the same files from the
    checkpoint, without writing again a byte before it."""
    admin, exports = gated_database.admin_url, tmp_path / "exports"
    expected = gated_database.oracle(ExportRequest())
    gates.hold(EARLY_GATE)
    gates.hold(GATE)
    with service(gated_database.url, exports, logs("serve-a"), **ENV) as a:
        export_id = submit(a.client)  # the only process: it runs it
        checkpoint = run_to_gate(admin, gates, export_id)
        assert checkpoint["owner"].startswith(owner_prefix(a.process))
        assert checkpoint["attempt"] == 1
        doc = a.client.get(f"/exports/{export_id}/status").json()
        assert doc["status"] == "processing" and doc["progress"]["processedRows"] == ROWS_AT_GATE
        with service(gated_database.url, exports, logs("serve-b"), **ENV) as b:
            old_backend = export_pid(admin, export_id)
            killed = time.monotonic()
            a.process.send_signal(signal.SIGKILL)
            a.process.wait(10)

            # What a killed process leaves: half-written files, a job still processing, and
            # how far the files are durable (what the checkpoint covers).
            row = job_row(admin, export_id)
            assert row["status"] == "processing" and row["error"] is None, row
            assert row["checkpoint_rows"] == ROWS_AT_GATE, row
            csv_part = exports / f"{export_id}.csv.part"
            gz_part = exports / f"{export_id}.csv.gz.part"
            csv_head = csv_part.read_bytes()[: row["checkpoint_csv_bytes"]]
            gz_head = gz_part.read_bytes()[: row["checkpoint_gzip_bytes"]]
            assert len(csv_head) == row["checkpoint_csv_bytes"] > 0
            assert len(gz_head) == row["checkpoint_gzip_bytes"] > 0
            inodes = (csv_part.stat().st_ino, gz_part.stat().st_ino)

            taken = wait_row(
                admin,
                export_id,
                lambda r: r["attempt"] == 2,
                timeout=LEASE_SECONDS + 5,
                what="a takeover",
            )
            assert time.monotonic() - killed < LEASE_SECONDS + 5
            assert taken["owner"].startswith(owner_prefix(b.process)), taken["owner"]
            assert taken["status"] == "processing"

            # Resumed from the checkpoint: the new backend waits at the gate and has passed
            # none of the gates before it (it read no row before the checkpoint).
            wait_for_gate_locks(admin, export_id, [(GATE, False)], not_pid=old_backend)
            doc = b.client.get(f"/exports/{export_id}/status").json()
            assert doc["status"] == "processing"
            assert doc["attempt"] == 2 and doc["resumedFromRows"] == ROWS_AT_GATE, doc
            assert job_row(admin, export_id)["resumed_from_rows"] == ROWS_AT_GATE

            gates.release(GATE)
            doc = b.wait_for(export_id, "completed", "failed", "cancelled")
            assert doc["status"] == "completed", doc
            # The lease, a claim, the rest of the rows.
            assert time.monotonic() - killed < LEASE_SECONDS + 5 + 5
            assert doc["attempt"] == 2 and doc["resumedFromRows"] == ROWS_AT_GATE
            assert doc["progress"]["processedRows"] == 30_000
            assert_gzip_downloads(f"{b.url}/exports/{export_id}/download", expected)
    assert_only_export(exports, export_id, expected)
    # The bytes before the checkpoint were not written again: the same files, continued.
    csv, packed = exports / f"{export_id}.csv", exports / f"{export_id}.csv.gz"
    assert (csv.stat().st_ino, packed.stat().st_ino) == inodes
    assert csv.read_bytes()[: len(csv_head)] == csv_head
    assert packed.read_bytes()[: len(gz_head)] == gz_head


def test_takeover_without_the_partial_files_starts_over(
    gated_database: GatedDatabase, gates: Gates, tmp_path: Path, logs: Any
) -> None:
    """The checkpoint's files are gone (a wiped or other folder): the process taking the
    job over cannot continue them, so it starts the export again from its first row."""
    admin, exports = gated_database.admin_url, tmp_path / "exports"
    expected = gated_database.oracle(ExportRequest())
    gates.hold(EARLY_GATE)
    gates.hold(GATE)
    with service(gated_database.url, exports, logs("serve-a"), keep_queue=True, **ENV) as a:
        export_id = submit(a.client)
        run_to_gate(admin, gates, export_id)
        old_backend = export_pid(admin, export_id)
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        for name in part_files(exports, export_id):
            (exports / name).unlink()
    with service(gated_database.url, exports, logs("serve-b"), **ENV) as b:
        wait_row(admin, export_id, lambda r: r["attempt"] == 2, what="a takeover")
        # From the first row again: it has passed every gate before the held one.
        held = [(g, True) for g in held_before(GATE)] + [(GATE, False)]
        deadline = time.monotonic() + 10
        while gate_locks(admin, export_id, not_pid=old_backend) != held:
            row = job_row(admin, export_id)
            assert row["status"] == "processing", f"{row['status']}: {row['error']}"
            assert time.monotonic() < deadline, gate_locks(admin, export_id, old_backend)
            time.sleep(0.02)
        gates.release(GATE)
        doc = b.wait_for(export_id, "completed", "failed", "cancelled")
        assert doc["status"] == "completed", doc
        assert doc["attempt"] == 2 and doc["resumedFromRows"] is None, doc
    assert_export_files(exports, export_id, expected)
    assert f"export {export_id} starts over" in log_text(tmp_path, "serve-b")


# -- 2. the process running an export is stopped by SIGTERM -------------------------------------


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_sigterm_hands_the_export_back_and_the_next_process_continues_it(
    command: str, gated_database: GatedDatabase, gates: Gates, tmp_path: Path, logs: Any
) -> None:
    """SIGTERM to the ``exporter serve`` or ``exporter worker`` running an export, its gate
    still held so that it cannot finish: within docker stop's 10 s it hands the export back
    (waiting again, nobody's, the same attempt, checkpoint and files); the next process of
    its kind continues it from the checkpoint, as the same attempt. An API that runs no
    export (``MAX_CONCURRENT_EXPORTS=0``) answers for the job throughout."""
    admin, exports = gated_database.admin_url, tmp_path / "exports"
    expected = gated_database.oracle(ExportRequest())
    start = service if command == "serve" else worker
    gates.hold(EARLY_GATE)
    gates.hold(GATE)
    api_only = {**ENV, "MAX_CONCURRENT_EXPORTS": "0"}
    with service(gated_database.url, exports, logs("api"), **api_only) as api:
        first_log = logs(f"{command}-1")
        with start(gated_database.url, exports, first_log, keep_queue=True, **ENV) as first:
            export_id = submit(api.client)
            checkpoint = run_to_gate(admin, gates, export_id)
            assert checkpoint["owner"].startswith(owner_prefix(first.process))
            parts = part_files(exports, export_id)
            assert set(parts) == {f"{export_id}.csv.part", f"{export_id}.csv.gz.part"}
            pid = export_pid(admin, export_id)
            started = time.monotonic()
            first.process.send_signal(signal.SIGTERM)  # the gate still held: it cannot finish
            assert first.process.wait(10) == 0
            # Within docker stop's 10 s before it kills: the export stops at once, but
            # Hypercorn waits up to its keep-alive timeout (5 s) for this test's idle
            # connection.
            assert time.monotonic() - started < 9.0

        # Handed back: waiting again, nobody's, nothing failed, the same attempt, checkpoint
        # and files.
        row = job_row(admin, export_id)
        assert row["status"] == "pending" and row["owner"] is None, row
        assert row["error"] is None, row
        assert row["lease_until"] is None and row["attempt"] == 1, row
        for column in ("checkpoint_rows", "checkpoint_last_id", "checkpoint_csv_bytes"):
            assert row[column] == checkpoint[column], column
        assert row["checkpoint_gzip_bytes"] == checkpoint["checkpoint_gzip_bytes"]
        assert {n: s[0] for n, s in part_files(exports, export_id).items()} == {
            n: s[0] for n, s in parts.items()
        }
        # Its query was cancelled, not left waiting at the gate: its session is gone.
        wait_for_backend_gone(admin, pid, time.monotonic() + 1)
        assert backends(admin, export_id) == []
        doc = api.client.get(f"/exports/{export_id}/status").json()
        assert doc["status"] == "pending" and doc["queuePosition"] == 1, doc
        assert doc["attempt"] == 1

        with start(gated_database.url, exports, logs(f"{command}-2"), **ENV) as second:
            row = wait_row(admin, export_id, lambda r: r["status"] == "processing")
            assert row["owner"].startswith(owner_prefix(second.process)) and row["attempt"] == 1
            wait_for_gate_locks(admin, export_id, [(GATE, False)])  # from the checkpoint on
            assert job_row(admin, export_id)["resumed_from_rows"] == ROWS_AT_GATE
            gates.release(GATE)
            doc = api.wait_for(export_id, "completed", "failed", "cancelled", timeout=15)
            assert doc["status"] == "completed", doc
            assert doc["attempt"] == 1 and doc["resumedFromRows"] == ROWS_AT_GATE, doc
    assert_only_export(exports, export_id, expected)
    assert (exports / f"{export_id}.csv").stat().st_ino == parts[f"{export_id}.csv.part"][0]


# -- 3. a worker whose database goes away -------------------------------------------------------


def test_worker_cut_from_the_database_stops_before_it_is_taken_over(
    gated_database: GatedDatabase, gates: Gates, tmp_path: Path, logs: Any
) -> None:
    admin, exports = gated_database.admin_url, tmp_path / "exports"
    expected = gated_database.oracle(ExportRequest())
    gates.hold(EARLY_GATE)
    gates.hold(GATE)
    api_only = {**ENV, "MAX_CONCURRENT_EXPORTS": "0"}
    with (
        ThreadedProxy(gated_database.url) as proxy,
        service(gated_database.url, exports, logs("api"), **api_only) as api,
        worker(proxy.conninfo, exports, logs("worker-cut"), keep_queue=True, **ENV) as cut,
    ):
        export_id = submit(api.client)
        checkpoint = run_to_gate(admin, gates, export_id)
        assert checkpoint["owner"].startswith(owner_prefix(cut.process))

        proxy.cut()  # every connection of the worker's, and no new one
        # No renewal reaches the database any more: the lease runs out at lease_until.
        expired = wait_row(
            admin,
            export_id,
            lambda r: r["db_now"] > r["lease_until"],
            timeout=LEASE_SECONDS + 2,
            what="the lease running out",
        )
        assert expired["owner"] == checkpoint["owner"] and expired["status"] == "processing"
        # By then the cut worker has stopped writing: its partial files stay as they are
        # (watched for a moment, before another process is there to take them over).
        at_expiry = part_files(exports, export_id)
        time.sleep(0.5)
        assert part_files(exports, export_id) == at_expiry
        assert cut.process.poll() is None  # alive, only cut off

        with worker(gated_database.url, exports, logs("worker-2"), **ENV) as w2:
            wait_row(admin, export_id, lambda r: r["attempt"] == 2, what="a takeover")
            gates.release(GATE)
            doc = api.wait_for(export_id, "completed", "failed", "cancelled")
            assert doc["status"] == "completed", doc
            assert doc["attempt"] == 2
            took_over = (
                f"export {export_id} processing: attempt 2, owner {owner_prefix(w2.process)}"
            )
        assert took_over in log_text(tmp_path, "worker-2")
        assert_export_files(exports, export_id, expected)
        # The cut worker left the job's files to whoever took it over, who continued them
        # from the checkpoint rather than starting again.
        assert at_expiry, "the cut worker removed the job's partial files"
        assert doc["resumedFromRows"] == ROWS_AT_GATE, doc


# -- 4. a worker whose lease renewal cannot get through ------------------------------------------


def test_worker_whose_lease_renewal_hangs_stops_before_the_lease_runs_out(
    gated_database: GatedDatabase, gates: Gates, tmp_path: Path, logs: Any
) -> None:
    """The renewal's UPDATE cannot get through (the test locks the job's row): the worker
    must have stopped the export by the time the lease it could not renew runs out, and
    left its files for the takeover."""
    admin, exports = gated_database.admin_url, tmp_path / "exports"
    expected = gated_database.oracle(ExportRequest())
    gates.hold(EARLY_GATE)
    gates.hold(GATE)
    api_only = {**ENV, "MAX_CONCURRENT_EXPORTS": "0"}
    with (
        service(gated_database.url, exports, logs("api"), **api_only) as api,
        worker(gated_database.url, exports, logs("worker-1"), keep_queue=True, **ENV) as w1,
    ):
        export_id = submit(api.client)
        checkpoint = run_to_gate(admin, gates, export_id)
        assert checkpoint["owner"].startswith(owner_prefix(w1.process))
        wait_row(  # a renewal went through since (the worker renews every LEASE_SECONDS / 3)
            admin, export_id, lambda r: r["lease_until"] > checkpoint["lease_until"]
        )
        parts = part_files(exports, export_id)

        with psycopg.connect(admin) as locker:
            locked = locker.execute(
                "SELECT lease_until FROM export_jobs WHERE id = %s FOR UPDATE", (export_id,)
            ).fetchone()
            assert locked is not None
            lease_until = locked[0]  # renewals wait behind the lock from now on
            with psycopg.connect(admin, autocommit=True) as clock:
                deadline = time.monotonic() + LEASE_SECONDS + 2
                while clock.execute("SELECT now() < %s", (lease_until,)).fetchone() == (True,):
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            # The lease has run out (by the database's clock, the one claims go by): the
            # worker's export has stopped, its query and connection gone, its files kept.
            assert backends(admin, export_id) == [], (
                "the worker still runs the export after its lease ran out"
            )
            assert {n: s[:2] for n, s in part_files(exports, export_id).items()} == {
                n: s[:2] for n, s in parts.items()
            }
            # It says it leaves the job (to whoever takes it over), and is stopped: having
            # no export any more, it has nothing to hand back.
            left = f"export {export_id} left to the process that takes it over"
            deadline = time.monotonic() + 10
            while left not in log_text(tmp_path, "worker-1"):
                assert time.monotonic() < deadline, "the worker never left the job (see its log)"
                time.sleep(0.05)
            w1.process.send_signal(signal.SIGTERM)
            assert w1.process.wait(15) == 0
            locker.rollback()
        row = job_row(admin, export_id)
        assert row["status"] == "processing" and row["owner"] == checkpoint["owner"], row

        # Taken over from the checkpoint, as a new attempt.
        with worker(gated_database.url, exports, logs("worker-2"), **ENV) as w2:
            taken = wait_row(admin, export_id, lambda r: r["attempt"] == 2, what="a takeover")
            assert taken["owner"].startswith(owner_prefix(w2.process))
            wait_for_gate_locks(admin, export_id, [(GATE, False)])
            gates.release(GATE)
            doc = api.wait_for(export_id, "completed", "failed", "cancelled")
            assert doc["status"] == "completed", doc
            assert doc["attempt"] == 2 and doc["resumedFromRows"] == ROWS_AT_GATE, doc
    assert_export_files(exports, export_id, expected)
