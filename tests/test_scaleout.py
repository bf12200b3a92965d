"""Scale-out: several real processes (``exporter serve``, ``exporter worker``) sharing one
PostgreSQL queue and one export folder.

Each test runs the processes as in production and makes its fault for real: SIGKILL,
SIGTERM, a DELETE sent to a process that does not run the job, a database connection cut
by a proxy, a lease renewal that cannot get through. "Mid-export" is made, not hoped for:
the export waits at a held row gate of the gated database (tests/support/). Leases are
short (``LEASE_SECONDS=2``) and checkpoints frequent, so takeovers happen within seconds.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import os
import signal
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter/jobs/postgres_queue.py)
import httpx
import psycopg
import pytest
import trio
from psycopg.rows import dict_row

from exporter.core.model import ExportRequest
from exporter.core.request import parse_export_request
from exporter.export.rows import RANGE_BATCHES
from tests.support import (
    GATE_CLASS,
    GATE_EVERY,
    GatedDatabase,
    Gates,
    UsersLock,
    backends,
    copy_oracle,
    free_port,
    rows_before_gate,
    service,
    wait_until_blocked_sync,
    worker,
)
from tests.support.dbproxy import DatabaseProxy

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LEASE_SECONDS = 2.0
BATCH_ROWS = 100
CHECKPOINT_INTERVAL = 0.05
ENV = {
    "LEASE_SECONDS": str(LEASE_SECONDS),
    "BATCH_ROWS": str(BATCH_ROWS),
    "CHECKPOINT_INTERVAL": str(CHECKPOINT_INTERVAL),
    "PROGRESS_INTERVAL": "0.05",
}
RANGE_IDS = BATCH_ROWS * RANGE_BATCHES  # ids per range: 5,000

# Where a full export of the gated database (30,000 rows) is held: past half-way, at the
# first row of a range, so the range before it ends with a checkpoint at the gate.
GATE = 20_001
ROWS_AT_GATE = rows_before_gate(GATE, BATCH_ROWS)  # 20,000
# One range earlier: held first, to let the checkpoint interval pass (see run_to_gate).
EARLY_GATE = GATE - RANGE_IDS
assert (GATE - 1) % RANGE_IDS == 0 and ROWS_AT_GATE == GATE - 1


# -- processes -----------------------------------------------------------------------------


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Callable[[str], IO[bytes]]]:
    """A log file per process (its stderr); their ends are printed at teardown, which
    pytest shows when the test failed."""
    opened: dict[str, IO[bytes]] = {}

    def open_log(name: str) -> IO[bytes]:
        opened[name] = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        return opened[name]

    yield open_log
    for name, file in opened.items():
        file.close()
        print(f"----- {name} -----\n{log_text(tmp_path, name)[-8000:]}")


def log_text(folder: Path, name: str) -> str:
    return (folder / f"{name}.log").read_text(errors="replace")


@contextlib.contextmanager
def together(*managers: contextlib.AbstractContextManager[Any]) -> Iterator[list[Any]]:
    """Enter several process context managers at once, so their start-ups overlap; leave
    them in reverse order."""
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(len(managers)) as pool:
            futures = [pool.submit(manager.__enter__) for manager in managers]
        entered, error = [], None
        for manager, future in zip(managers, futures, strict=True):
            try:
                entered.append(future.result())
            except BaseException as exc:
                error = error or exc
                continue
            stack.push(manager)
        if error is not None:
            raise error
        yield entered


def owner_prefix(process: subprocess.Popen[bytes]) -> str:
    """How ``export_jobs.owner`` names the process (hostname:pid:random)."""
    return f"{socket.gethostname()}:{process.pid}:"


class ThreadedProxy:
    """tests.support.dbproxy.DatabaseProxy, run by a trio loop in a thread of its own, for these
    synchronous tests (whose waits would otherwise stop the proxy's loop)."""

    def __init__(self, conninfo: str) -> None:
        self._upstream = conninfo
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._proxy: DatabaseProxy | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._proxy = DatabaseProxy(self._upstream, nursery)
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            await self._proxy.start()
            self._ready.set()
            await self._stop.wait()
            self._proxy.cut()
            nursery.cancel_scope.cancel()

    @property
    def conninfo(self) -> str:
        assert self._proxy is not None
        return self._proxy.conninfo

    def cut(self) -> None:
        assert self._proxy is not None
        trio.from_thread.run_sync(self._proxy.cut, trio_token=self._token)

    def __enter__(self) -> ThreadedProxy:
        self._thread.start()
        assert self._ready.wait(10), "the database proxy never started"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)


# -- the job as export_jobs, pg_stat_activity and pg_locks show it -----------------------------


def job_row(conninfo: str, export_id: str) -> dict[str, Any]:
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT *, now() AS db_now FROM export_jobs WHERE id = %s", (export_id,)
        ).fetchone()
    assert row is not None, export_id
    return row


def wait_row(
    conninfo: str,
    export_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 10.0,
    what: str = "",
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = job_row(conninfo, export_id)
        if predicate(row):
            return row
        assert time.monotonic() < deadline, f"{what or 'condition'} not met: {row}"
        time.sleep(0.02)


def gate_locks(conninfo: str, export_id: str, not_pid: int | None = None) -> list[tuple[int, bool]]:
    """The row gates the export's backend holds (granted) or waits for, as (row, granted):
    a backend that read the rows before a gate holds that gate's lock till its end."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT l.objid::int, l.granted FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE a.application_name = %s AND l.locktype = 'advisory' AND l.classid = %s"
            " AND a.pid IS DISTINCT FROM %s ORDER BY 1",
            (f"exporter {export_id}", GATE_CLASS, not_pid),
        ).fetchall()
    return [(int(row[0]), bool(row[1])) for row in rows]


def wait_for_gate_locks(
    conninfo: str, export_id: str, expected: list[tuple[int, bool]], not_pid: int | None = None
) -> None:
    deadline = time.monotonic() + 10
    while (locks := gate_locks(conninfo, export_id, not_pid)) != expected:
        assert time.monotonic() < deadline, locks
        time.sleep(0.02)


def export_pid(conninfo: str, export_id: str) -> int:
    found = backends(conninfo, export_id)
    assert len(found) == 1, found
    return int(found[0][0])


def wait_for_backend_gone(conninfo: str, pid: int, deadline: float) -> None:
    """Backend ``pid`` must have ended by ``deadline`` (time.monotonic)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, f"backend {pid} still there"
            time.sleep(0.02)


# -- files ------------------------------------------------------------------------------------


def files_of(folder: Path, export_id: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(export_id))


def part_files(folder: Path, export_id: str) -> dict[str, tuple[int, int, int]]:
    """The export's partial files: name → (inode, size, mtime_ns)."""
    found = {}
    for name in files_of(folder, export_id):
        if name.endswith(".part"):
            with contextlib.suppress(FileNotFoundError):
                stat = (folder / name).stat()
                found[name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return found


def first_difference(got: bytes, expected: bytes) -> str | None:
    """None if equal; else where they differ (a short message, not a diff of megabytes)."""
    if got == expected:
        return None
    at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
    at = min(len(got), len(expected)) if at is None else at
    return (
        f"{len(got)} bytes instead of {len(expected)}, first difference at byte {at}:"
        f" {got[at : at + 60]!r} vs {expected[at : at + 60]!r}"
    )


def assert_export_files(folder: Path, export_id: str, expected: bytes) -> None:
    """The finished CSV and its gzip copy, nothing partial left, both COPY's bytes (the
    gzip copy decompressed by Python's gzip module and by gzip(1))."""
    assert files_of(folder, export_id) == [f"{export_id}.csv", f"{export_id}.csv.gz"]
    assert first_difference((folder / f"{export_id}.csv").read_bytes(), expected) is None
    packed = folder / f"{export_id}.csv.gz"
    assert first_difference(gzip.decompress(packed.read_bytes()), expected) is None
    unpacked = subprocess.run(["gzip", "-d", "-c", str(packed)], capture_output=True, check=True)
    assert first_difference(unpacked.stdout, expected) is None


# -- holding an export of the gated database ---------------------------------------------------


def submit(client: httpx.Client, params: dict[str, str] | None = None) -> str:
    response = client.post("/exports/csv", params=params or {})
    assert response.status_code == 202, response.text
    return str(response.json()["exportId"])


def run_to_gate(admin_url: str, gates: Gates, export_id: str) -> dict[str, Any]:
    """With EARLY_GATE and GATE held before the export started: returns its row once it
    waits at GATE with a checkpoint recorded there (ROWS_AT_GATE rows, the CSV and its
    gzip copy durable up to them).

    A checkpoint is taken at a range's end only once CHECKPOINT_INTERVAL has passed since
    the last: the export is let through EARLY_GATE (one range before GATE) only after the
    interval has passed with it held there, so the range ending at GATE ends with one."""
    wait_until_blocked_sync(admin_url, export_id)
    wait_row(admin_url, export_id, lambda r: r["processed_rows"] == EARLY_GATE - 1)
    time.sleep(CHECKPOINT_INTERVAL * 2)  # the checkpoint timer runs out while it is held
    gates.release(EARLY_GATE)
    row = wait_row(
        admin_url,
        export_id,
        lambda r: r["checkpoint_rows"] == ROWS_AT_GATE and r["processed_rows"] == ROWS_AT_GATE,
        what="a checkpoint at the gate",
    )
    wait_for_gate_locks(
        admin_url, export_id, [(g, True) for g in held_before(GATE)] + [(GATE, False)]
    )
    assert row["status"] == "processing"
    assert row["checkpoint_last_id"] == ROWS_AT_GATE
    return row


def held_before(gate: int) -> list[int]:
    """The gates an export that read every row before ``gate`` has passed (and still
    holds, its transaction open)."""
    return list(range(GATE_EVERY + 1, gate, GATE_EVERY))


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


# -- 2. the process running an export is killed --------------------------------------------------


def test_killed_process_export_is_taken_over_from_its_checkpoint(
    gated_database: GatedDatabase, gates: Gates, tmp_path: Path, logs: Any
) -> None:
    admin, exports = gated_database.admin_url, tmp_path / "exports"
    expected = gated_database.oracle(ExportRequest())
    gates.hold(EARLY_GATE)
    gates.hold(GATE)
    with service(gated_database.url, exports, logs("serve-a"), **ENV) as a:
        export_id = submit(a.client)  # the only process: it runs it
        checkpoint = run_to_gate(admin, gates, export_id)
        assert checkpoint["owner"].startswith(owner_prefix(a.process))
        assert checkpoint["attempt"] == 1
        with service(gated_database.url, exports, logs("serve-b"), **ENV) as b:
            # What the checkpoint covers, as the killed process leaves it.
            csv_part = exports / f"{export_id}.csv.part"
            gz_part = exports / f"{export_id}.csv.gz.part"
            csv_head = csv_part.read_bytes()[: checkpoint["checkpoint_csv_bytes"]]
            gz_head = gz_part.read_bytes()[: checkpoint["checkpoint_gzip_bytes"]]
            assert len(csv_head) == checkpoint["checkpoint_csv_bytes"] > 0
            assert len(gz_head) == checkpoint["checkpoint_gzip_bytes"] > 0
            inodes = (csv_part.stat().st_ino, gz_part.stat().st_ino)
            old_backend = export_pid(admin, export_id)

            killed = time.monotonic()
            a.process.send_signal(signal.SIGKILL)
            a.process.wait(10)
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
            assert doc["attempt"] == 2 and doc["resumedFromRows"] == ROWS_AT_GATE
            assert doc["progress"]["processedRows"] == 30_000
            assert_gzip_downloads(f"{b.url}/exports/{export_id}/download", expected)
    assert_export_files(exports, export_id, expected)
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


# -- 3. a worker stopped by SIGTERM ----------------------------------------------------------------


def test_sigterm_worker_hands_its_export_back(
    gated_database: GatedDatabase, gates: Gates, tmp_path: Path, logs: Any
) -> None:
    admin, exports = gated_database.admin_url, tmp_path / "exports"
    expected = gated_database.oracle(ExportRequest())
    gates.hold(EARLY_GATE)
    gates.hold(GATE)
    api_only = {**ENV, "MAX_CONCURRENT_EXPORTS": "0"}
    with service(gated_database.url, exports, logs("api"), **api_only) as api:
        with worker(gated_database.url, exports, logs("worker-1"), keep_queue=True, **ENV) as w1:
            export_id = submit(api.client)
            checkpoint = run_to_gate(admin, gates, export_id)
            assert checkpoint["owner"].startswith(owner_prefix(w1.process))
            parts = part_files(exports, export_id)
            assert set(parts) == {f"{export_id}.csv.part", f"{export_id}.csv.gz.part"}
            pid = export_pid(admin, export_id)
            w1.process.send_signal(signal.SIGTERM)  # the gate still held: it cannot finish
            assert w1.process.wait(15) == 0

        # Handed back: waiting again, nobody's, the same attempt, checkpoint and files.
        row = job_row(admin, export_id)
        assert row["status"] == "pending" and row["owner"] is None, row
        assert row["lease_until"] is None and row["attempt"] == 1, row
        for column in ("checkpoint_rows", "checkpoint_last_id", "checkpoint_csv_bytes"):
            assert row[column] == checkpoint[column], column
        assert row["checkpoint_gzip_bytes"] == checkpoint["checkpoint_gzip_bytes"]
        assert {n: s[0] for n, s in part_files(exports, export_id).items()} == {
            n: s[0] for n, s in parts.items()
        }
        wait_for_backend_gone(admin, pid, time.monotonic() + 1)  # its query was cancelled
        doc = api.client.get(f"/exports/{export_id}/status").json()
        assert doc["status"] == "pending" and doc["queuePosition"] == 1, doc
        assert doc["attempt"] == 1

        with worker(gated_database.url, exports, logs("worker-2"), **ENV) as w2:
            row = wait_row(admin, export_id, lambda r: r["status"] == "processing")
            assert row["owner"].startswith(owner_prefix(w2.process)) and row["attempt"] == 1
            wait_for_gate_locks(admin, export_id, [(GATE, False)])  # from the checkpoint on
            assert job_row(admin, export_id)["resumed_from_rows"] == ROWS_AT_GATE
            gates.release(GATE)
            doc = api.wait_for(export_id, "completed", "failed", "cancelled")
            assert doc["status"] == "completed", doc
            assert doc["attempt"] == 1 and doc["resumedFromRows"] == ROWS_AT_GATE, doc
    assert_export_files(exports, export_id, expected)
    assert (exports / f"{export_id}.csv").stat().st_ino == parts[f"{export_id}.csv.part"][0]


# -- 4. DELETE sent to a process that does not run the export --------------------------------------


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


# -- 5. a worker whose database goes away ----------------------------------------------------------


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


def gzip_members(data: bytes) -> int:
    count = 0
    while data:
        unpacker = zlib.decompressobj(zlib.MAX_WBITS | 16)
        unpacker.decompress(data)
        assert unpacker.eof
        data, count = unpacker.unused_data, count + 1
    return count


def assert_gzip_downloads(url: str, expected: bytes) -> None:
    """The download with ``Content-Encoding: gzip`` decodes to the whole CSV in ordinary
    HTTP clients: httpx and curl --compressed (which, like browsers, read only the first
    member of a multi-member gzip stream)."""
    with httpx.Client(timeout=60) as client:
        response = client.get(url, headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
    assert first_difference(response.content, expected) is None, "httpx"
    curl = subprocess.run(["curl", "-s", "-S", "--compressed", url], capture_output=True)
    assert curl.returncode == 0, curl.stderr
    assert first_difference(curl.stdout, expected) is None, "curl --compressed"


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


# -- 6. a second serve process started beside a running export -------------------------------------


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


# -- 7. exporter serve --workers N ------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                if parent_pid(int(entry.name)) == pid:
                    found.add(int(entry.name))
    return found


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


def parent_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


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
